"""Round trips through transformers: an export loaded with trust_remote_code, trained a step and saved by
transformers (its keys prefixed ``timm_model.``, its head's labels at the config's root) comes back into validate.py,
``modeling.load_model``, ``label_info``, timm's ``local-dir:`` and every backbone route with its weights and its
labels, for each registered family and for the template family of modeling/__init__.py's docstring."""
import contextlib
import importlib
import json
import re
import sys

import datasets
import pytest
import timm
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_modeling import DOC_FAMILY, docstring_family_source, restored_registry
from transformers.dynamic_module_utils import get_class_from_dynamic_module

import modeling
import validate


@pytest.fixture(autouse=True)
def registry_of_its_own():
    """A trust_remote_code load registers the export's copy of the family with timm for the rest of the process: a
    test's loads stay its own, and a later test's timm.create_model builds what ``import modeling`` registered."""
    with restored_registry():
        yield


def dataset_labels(dataset) -> tuple[list[str], list[str]]:
    """(wnids in class-index order, their human names) of a preprocess.py output."""
    names = datasets.load_from_disk(str(dataset))["train"].features["label"].names
    return names, json.loads((dataset / "class_descriptions.json").read_text())  # a list in the same order


def fine_tune_and_save(folder, out, **labels) -> torch.nn.Module:
    """What run_image_classification_no_trainer.py does with an export: load it (remote code), one optimizer step,
    ``save_pretrained``."""
    model = transformers.AutoModelForImageClassification.from_pretrained(
        folder, trust_remote_code=True, ignore_mismatched_sizes=True, **labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = model(pixel_values=x, labels=torch.arange(4) % model.config.num_labels).loss
    loss.backward()
    optimizer.step()
    model.save_pretrained(out)
    return model.eval()


@pytest.fixture(scope="module")
def export(preprocessed, tmp_path_factory):
    ids, names = dataset_labels(preprocessed)
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=len(ids)).eval()
    return modeling.save_pretrained(model, tmp_path_factory.mktemp("export") / "final", label_names=ids,
                                    label_descriptions=names, pretrained_cfg={"input_size": (3, 32, 32)})


def test_transformers_saved_fine_tune_is_scored_by_validate_with_its_labels(export, preprocessed, tmp_path,
                                                                             capsys):
    ids, names = dataset_labels(preprocessed)
    # the no_trainer example labels the head by the dataset's ClassLabel names: the wnids
    tuned = fine_tune_and_save(export, tmp_path / "tuned", id2label=dict(enumerate(ids)),
                               label2id={n: i for i, n in enumerate(ids)})
    weights = tmp_path / "tuned" / "model.safetensors"
    assert all(k.startswith("timm_model.") for k in load_file(weights))
    assert modeling.label_info(tmp_path / "tuned") == (ids, names)  # human names kept
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tuned(pixel_values=x).logits
        assert torch.allclose(modeling.load_model(tmp_path / "tuned")(x), expected, atol=1e-5)
        timm_model = timm.create_model(f"local-dir:{tmp_path / 'tuned'}", pretrained=True).eval()
        assert torch.allclose(timm_model(x), expected, atol=1e-5)  # the family strips the prefix for timm too
    scored = validate.main(["--model", str(tmp_path / "tuned"), "--dataset", str(preprocessed), "--batch_size", "4",
                            "--num_workers", "0", "--output", str(tmp_path / "val.json")])
    assert scored["n"] > 0 and 0 <= scored["top1"] <= 100
    # validate.py matched the model's classes to the dataset's by name (else: "warning: --model's class names ...")
    assert "class names" not in capsys.readouterr().err


def test_fine_tune_with_new_classes_keeps_the_new_labels(export, tmp_path):
    fine_tune_and_save(export, tmp_path / "pets", num_labels=2, id2label={0: "cat", 1: "dog"},
                       label2id={"cat": 0, "dog": 1})
    assert modeling.label_info(tmp_path / "pets") == (["cat", "dog"], None)
    model = modeling.load_model(tmp_path / "pets")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_imagenet_1k_export_resaved_by_transformers_keeps_its_wnids(tmp_path):
    """1000 classes in ILSVRC-2012's sorted-wnid order: the export writes no root label_names, so transformers labels
    the head with timm's ImageNet names (two plain "crane"), and its save_pretrained writes those at the root. They
    are the export's classes: label_info gives the wnids, validate.py matches them and still refuses another order."""
    info = timm.data.ImageNetInfo("imagenet-1k")
    ids, names = info.label_names(), info.label_descriptions()
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=1000).eval()
    folder = modeling.save_pretrained(model, tmp_path / "in1k", label_names=ids, label_descriptions=names,
                                      pretrained_cfg={"input_size": (3, 32, 32)})
    tuned = fine_tune_and_save(folder, tmp_path / "tuned")
    assert list(tuned.config.id2label.values()) == names and names.count("crane") == 2  # human, as printed
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["label_names"] == names
    assert modeling.label_info(tmp_path / "tuned") == (ids, names)
    assert validate.check_model_classes(str(tmp_path / "tuned"), ids) is None
    with pytest.raises(ValueError, match="another index order"):
        validate.check_model_classes(str(tmp_path / "tuned"), ids[1:] + ids[:1])


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics far from the 0/1 of a fresh network, so a route that loads none of them fails."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


TEMPLATE, UNFILTERED = "template", "template without its filter"  # the second: a family that leaves the prefix on
# transformers' classes whose save_pretrained the backbone routes take: a fine-tune's, and AutoModel's (the network
# built for 0 classes: no classifier weights saved, while config.json keeps the class count)
SAVERS = {"classifier": transformers.AutoModelForImageClassification, "headless": transformers.AutoModel}


@pytest.fixture(params=[(name, saver) for saver in SAVERS for name in modeling.list_models() + [TEMPLATE, UNFILTERED]],
                ids=lambda param: "-".join(param))
def resaved(request, tmp_path, monkeypatch):
    """(folder, model, name, saver): ``model`` exported, loaded with trust_remote_code and saved by transformers.
    Each registered family, and the docstring's template registered as a user's family file outside the package (it
    has none of our families' code: what it needs, the template must say), as written and without its checkpoint
    filter (what the routes that do not run the family's loader must not need)."""
    with restored_registry():
        name, saver = request.param
        if name in (TEMPLATE, UNFILTERED):
            source = docstring_family_source()
            if name == UNFILTERED:
                source = source.replace("pretrained_filter_fn=checkpoint_filter_fn, ", "")
                assert "pretrained_filter_fn" not in source
            (tmp_path / "mynet_template.py").write_text(source)
            monkeypatch.syspath_prepend(str(tmp_path))
            monkeypatch.delitem(sys.modules, "mynet_template", raising=False)
            importlib.import_module("mynet_template")
        torch.manual_seed(0)
        model = trained_looking(modeling.create_model(DOC_FAMILY if name in (TEMPLATE, UNFILTERED) else name,
                                                      num_classes=4))
        folder = modeling.save_pretrained(model, tmp_path / "export", label_names=["a", "b", "c", "d"],
                                          pretrained_cfg={"input_size": (3, 64, 64)})
        SAVERS[saver].from_pretrained(folder, trust_remote_code=True).save_pretrained(tmp_path / "resaved")
        yield tmp_path / "resaved", model, name, saver


def test_every_backbone_route_of_a_transformers_saved_family_has_its_weights(resaved):
    """timm's features_only load of such a folder is not strict (0 classes asked: the head dropped, every key that
    does not fit ignored), so a family that leaves the prefix on gives a random backbone without a word there; the
    project's routes and the export's own AutoBackbone class load model.safetensors themselves, for any family, with
    or without the classifier saved. modeling.load_model builds what the weights hold: the classifier, or without
    one (AutoModel's save, whose config.json keeps the class count) the headless network."""
    folder, model, name, saver = resaved
    saved = load_file(folder / "model.safetensors")
    assert all(k.startswith("timm_model.") for k in saved)
    assert (f"timm_model.{model.pretrained_cfg['classifier']}.weight" in saved) == (saver == "classifier")
    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == 4
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    timm_name = modeling.timm_name(folder)
    indices = modeling.backbone.default_taps(timm_name)
    into = transformers.TimmBackbone(transformers.TimmBackboneConfig(backbone=timm_name, out_indices=indices))
    modeling.load_backbone_weights(into, folder)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        taps = [maps[i] for i in indices]
        routes = {
            "modeling.timm_backbone": (modeling.timm_backbone(folder)(x).feature_maps, taps),
            "modeling.load_backbone_weights": (into.eval()(x).feature_maps, taps),
            "TimmFPN": (modeling.backbone.TimmFPN(folder).body.eval()(x), taps),
            "auto_map AutoBackbone": (get_class_from_dynamic_module(
                config["auto_map"]["AutoBackbone"], folder).from_pretrained(folder)(x).feature_maps, taps),
        }
        routes["modeling.create_model features_only"] = (modeling.create_model(
            f"local-dir:{folder}", pretrained=True, features_only=True).eval()(x), maps)
        if name != UNFILTERED:  # timm's own load runs the family's code, and only that
            routes["timm local-dir: features_only"] = (timm.create_model(
                f"local-dir:{folder}", pretrained=True, features_only=True).eval()(x), maps)
    for route, (got, expected) in routes.items():
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected)), route
    # train.py --pretrained (modeling.create_model): every saved tensor, and a fresh head for another class count (7)
    # or where none was saved (AutoModel's, at config.json's count, 4)
    head = f"{model.pretrained_cfg['classifier']}."
    for classes in (7, 4):
        fresh = saver == "headless" or classes != 4
        warns = pytest.warns(UserWarning, match="holds no classifier") if saver == "headless" and classes == 4 \
            else contextlib.nullcontext()
        with warns:
            state = modeling.create_model(f"local-dir:{folder}", pretrained=True, num_classes=classes).state_dict()
        saved = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items() if not (fresh and k.startswith(head))), classes
        assert torch.equal(state[f"{head}weight"], saved[f"{head}weight"]) != fresh, classes
    # modeling.load_model with no num_classes: the network the weights hold, the headless one for AutoModel's save
    loaded = modeling.load_model(folder)
    assert loaded.num_classes == (4 if saver == "classifier" else 0)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x) if saver == "classifier" else model.forward_head(
            model.forward_features(x), pre_logits=True))


def test_one_channel_timm_architecture_resaved_by_transformers_keeps_timms_key_names(tmp_path):
    """A one-channel export of a timm architecture loads with trust_remote_code (as its card says) as the classes of
    its modeling_one_channel.py, remote code, which transformers' timm_wrapper key conversion skips: their
    save_pretrained still writes timm's key names, as transformers' own class does, also from a re-save loaded the
    same way (the file travels with it). timm's local-dir: (not strict for features_only) and train.py --pretrained
    with another class count (modeling.create_model) then start from every saved tensor."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("resnet18", num_classes=4, in_chans=1))
    source = modeling.save_pretrained(model, tmp_path / "gray", label_names=["a", "b", "c", "d"],
                                      pretrained_cfg={"input_size": (1, 64, 64)})
    folders = []
    for step in ("resaved", "resaved_again"):
        for saver, auto in SAVERS.items():
            loaded = auto.from_pretrained(source, trust_remote_code=True)
            assert type(loaded).__module__.endswith(".modeling_one_channel"), (step, saver)
            loaded.save_pretrained(tmp_path / step / saver)
            folders.append(tmp_path / step / saver)
        source = tmp_path / step / "classifier"
    expected, head = model.state_dict(), ("fc.weight", "fc.bias")
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        for folder in folders:
            saved = load_file(folder / "model.safetensors")
            assert set(saved) == set(expected) - (set() if folder.name == "classifier" else set(head)), folder
            assert all(torch.equal(saved[k], expected[k]) for k in saved), folder
            features = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
            assert all(torch.equal(a, b) for a, b in zip(features(x), maps)), folder
            state = modeling.create_model(f"local-dir:{folder}", pretrained=True, num_classes=10).state_dict()
            assert all(torch.equal(state[k], v) for k, v in expected.items() if k not in head), folder
            assert state["fc.weight"].shape[0] == 10
        assert torch.equal(timm.create_model(f"local-dir:{source}", pretrained=True).eval()(x), model(x))


def test_create_model_takes_an_automodel_save_at_its_saved_class_count(tmp_path):
    """transformers' AutoModel (its own TimmWrapperModel for a timm architecture: timm's key names) saves no
    classifier while config.json keeps the class count: train.py --pretrained at that count (timm's loader, strict
    then, would refuse the missing head in a bare traceback) gets every saved tensor and a fresh head, and says so."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("resnet18", num_classes=4))
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=["a", "b", "c", "d"],
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    transformers.AutoModel.from_pretrained(folder).save_pretrained(tmp_path / "headless")
    assert "fc.weight" not in load_file(tmp_path / "headless" / "model.safetensors")
    with pytest.warns(UserWarning, match=r"holds no classifier .*: new 4-class head \(random init\)"):
        built = modeling.create_model(f"local-dir:{tmp_path / 'headless'}", pretrained=True, num_classes=4)
    state = built.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert built.num_classes == 4 and not torch.equal(state["fc.weight"], model.state_dict()["fc.weight"])


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # timm's word on the copy's registration
def test_create_model_refuses_transformers_saved_weights_that_lack_a_tensor(tmp_path):
    """train.py --pretrained with another class count: timm's loader is not strict then, so weights saved under
    "timm_model." (by a family's remote-code wrapper) that lack a tensor would leave it random without a word;
    modeling.create_model names it in one line."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=["a", "b", "c", "d"],
                                      pretrained_cfg={"input_size": (3, 32, 32)})
    transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).save_pretrained(
        tmp_path / "resaved")
    weights = tmp_path / "resaved" / "model.safetensors"
    state = load_file(weights)
    assert all(k.startswith("timm_model.") for k in state)
    lost = next(k for k, v in state.items() if v.ndim == 4)  # a convolution's: the backbone's, not the head's
    del state[lost]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(lost.removeprefix("timm_model."))) as e:
        modeling.create_model(f"local-dir:{tmp_path / 'resaved'}", pretrained=True, num_classes=10)
    assert "\n" not in str(e.value) and "missing" in str(e.value)


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # timm's word on the copy's registration
def test_a_trust_remote_code_load_changes_neither_what_modeling_builds_nor_what_it_exports(tmp_path):
    """The export's copy of blocknet.py registers its variants with timm on import, over ours: modeling still builds
    and exports the installed code, and names it on the card."""
    copy = modeling.save_pretrained(modeling.create_model("blocknet_tiny", num_classes=2), tmp_path / "copy",
                                    label_names=["a", "b"])  # a folder transformers has not imported yet
    installed = (copy / "blocknet.py").read_text()
    transformers.AutoModelForImageClassification.from_pretrained(copy, trust_remote_code=True)
    assert timm.models.model_entrypoint("blocknet_tiny").__module__.startswith("transformers_modules.")
    model = modeling.create_model("blocknet_tiny", num_classes=2)
    assert type(model) is modeling.blocknet.BlockNet
    folder = modeling.save_pretrained(model, tmp_path / "again", label_names=["a", "b"])
    assert (folder / "blocknet.py").read_text() == installed
    card = (folder / "README.md").read_text()
    assert "defined in imagenet-trainer's `modeling/blocknet.py`" in card and "transformers_modules" not in card
    assert type(modeling.load_model(folder)) is modeling.blocknet.BlockNet


SILU = ("self.act = nn.ReLU(inplace=True)", "self.act = nn.SiLU(inplace=True)")  # BasicBlock's activation


def other_code_export(folder, tag: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(installed, copy): an export of blocknet_tiny at ``folder`` whose blocknet.py computes otherwise than the
    installed one (BasicBlock with SiLU, installed: ReLU; the same keys), the network the installed code builds from
    its weights and the one its own copy builds. ``tag`` makes the file's text, and so transformers' module of it,
    new in this process."""
    torch.manual_seed(0)
    installed = trained_looking(modeling.create_model("blocknet_tiny", num_classes=2))
    modeling.save_pretrained(installed, folder, label_names=["a", "b"], pretrained_cfg={"input_size": (3, 32, 32)})
    text = (folder / "blocknet.py").read_text()
    assert SILU[0] in text
    (folder / "blocknet.py").write_text(text.replace(*SILU) + f"# {tag}\n")
    copy = trained_looking(modeling.create_model("blocknet_tiny", num_classes=2))
    copy.load_state_dict(installed.state_dict())
    for block in copy.modules():
        if isinstance(block, modeling.blocknet.BasicBlock):
            block.act = torch.nn.SiLU()
    return installed, copy


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the copies' registration on import
@pytest.mark.filterwarnings("ignore:.*may not be the architecture of these weights:UserWarning")  # load_model's
@pytest.mark.parametrize("first", ["transformers", "modeling"])
def test_each_caller_builds_its_own_code_whatever_ran_before(first, tmp_path):
    """transformers imports an export's code once per process (its variants register with timm then, not at later
    loads) and modeling builds the installed code: in one process, in either order, again, and after transformers
    loaded another export of the family, the export's classes (image classifier, AutoModel, AutoBackbone) run its
    blocknet.py and modeling's routes the installed one."""
    folder = tmp_path / f"silu_{first}"
    installed, copy = other_code_export(folder, first)
    other_model = modeling.create_model("blocknet_tiny", num_classes=2).eval()
    other = modeling.save_pretrained(other_model, tmp_path / "relu", label_names=["a", "b"])  # installed code
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def outputs(model):
        maps = model.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        return model(x), model.forward_features(x), *maps

    def transformers_routes(export):
        auto_map = json.loads((export / "config.json").read_text())["auto_map"]
        classifier = transformers.AutoModelForImageClassification.from_pretrained(export, trust_remote_code=True)
        headless = transformers.AutoModel.from_pretrained(export, trust_remote_code=True)
        backbone = get_class_from_dynamic_module(auto_map["AutoBackbone"], export).from_pretrained(export)
        return (classifier.eval()(pixel_values=x).logits, headless.eval()(pixel_values=x).last_hidden_state,
                *backbone(x).feature_maps)

    def modeling_routes(export):
        built = modeling.create_model(f"local-dir:{export}", pretrained=True).eval()
        return (modeling.load_model(export)(x), built.forward_features(x),
                *modeling.timm_backbone(export)(x).feature_maps,
                *modeling.backbone.TimmFPN(export).body.eval()(x))

    with torch.no_grad():
        mine, theirs = outputs(installed), outputs(copy)
        assert not torch.allclose(mine[0], theirs[0], atol=1e-3)  # the two codes tell apart
        expected = {("transformers", folder): theirs, ("transformers", other): outputs(other_model),
                    ("modeling", folder): (*mine, *mine[2:])}
        a, m, b = ("transformers", folder), ("modeling", folder), ("transformers", other)
        for step, (caller, export) in enumerate(([a, m] if first == "transformers" else [m, a]) * 2 + [b, a, m]):
            got = (transformers_routes if caller == "transformers" else modeling_routes)(export)
            want = expected[caller, export]
            assert len(got) == len(want), (step, caller, export.name)
            assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want)), (step, caller, export.name)


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the copy's registration on import
@pytest.mark.filterwarnings("ignore:.*may not be the architecture of these weights:UserWarning")  # load_model's
def test_the_cards_import_of_an_exports_copy_changes_nothing_modeling_builds(tmp_path, monkeypatch):
    """The card's route without the package (the export's folder on sys.path, ``import blocknet``, then timm) builds
    the copy; in the same process modeling builds and loads the installed code, and leaves timm the copy."""
    folder = tmp_path / "export"
    installed, copy = other_code_export(folder, "imported")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "blocknet", raising=False)
    try:
        importlib.import_module("blocknet")
        with torch.no_grad():
            assert type(modeling.create_model("blocknet_tiny", num_classes=2)) is modeling.blocknet.BlockNet
            built = modeling.create_model(f"local-dir:{folder}", pretrained=True).eval()
            assert torch.allclose(built(x), installed(x), atol=1e-5)
            assert torch.allclose(modeling.load_model(folder)(x), installed(x), atol=1e-5)
            theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            assert torch.allclose(theirs(x), copy(x), atol=1e-5)
    finally:
        sys.modules.pop("blocknet", None)


def test_a_family_known_only_from_an_exports_copy_is_refused_for_export(tmp_path, monkeypatch):
    """A network of a family this process has only from transformers' copy of an export's file (a Hub model loaded
    with trust_remote_code) is not exported with that cached copy: one line says what to do."""
    with restored_registry():
        (tmp_path / "mynet_elsewhere.py").write_text(docstring_family_source())
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "mynet_elsewhere", raising=False)
        importlib.import_module("mynet_elsewhere")
        folder = modeling.save_pretrained(modeling.create_model(DOC_FAMILY, num_classes=2), tmp_path / "export",
                                          label_names=["a", "b"], pretrained_cfg={"input_size": (3, 32, 32)})
    with restored_registry():
        loaded = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
        with pytest.raises(ValueError, match=r"registered from transformers_modules\..*trust_remote_code") as e:
            modeling.save_pretrained(loaded.timm_model, tmp_path / "again", label_names=["a", "b"])
    assert "\n" not in str(e.value) and not (tmp_path / "again").exists()
