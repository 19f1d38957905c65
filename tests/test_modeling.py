"""modeling/: the registry, our backbones, and the Hub folder format (timm + transformers, offline)."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import matplotlib
import pytest
import safetensors.torch
import timm
import torch
import torchvision
import yaml
from hub_server import LocalHub, point_this_process_at
from safetensors.torch import save_file

import modeling
from modeling.blocknet import BlockNet, BlockNetCfg
from modeling.hub import hub_config

OURS = modeling.list_models()
# the families this package ships (a user's modeling/mynet.py registers into OURS too, and is held to less)
SHIPPED = [n for n in OURS if timm.models.model_entrypoint(n).__module__ in ("modeling.alexnet", "modeling.blocknet")]
ZOO_SMALL = ["resnet18"]  # zoo names cheap enough for every per-model test
# ImageNet has two classes named "crane": the labels must survive that (label2id, pipeline output)
WNIDS = ["n02012849", "n03126707", "n01440764", "n02085620"]
NAMES = ["crane", "crane", "tench, Tinca tinca", "Chihuahua"]
SHOWN = ["crane (n02012849)", "crane (n03126707)", "tench, Tinca tinca", "Chihuahua"]  # what pipelines print
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real JPEG shipped offline
CARD = {"dataset": "ImageNet-1k (ILSVRC-2012)", "dataset_id": "ILSVRC/imagenet-1k", "epochs": 16,
        "hardware": "1x H100 80GB, 16 CPU cores",
        "recipe": {"optimizer": "sgd", "lr": 0.8, "batch_size": 1024, "label_smoothing": 0.1},
        "results": {"top1": 67.12, "top5": 87.45, "split": "validation"}, "repo_id": "me/tiny"}


def small_input(batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, 3, 64, 64)


def folder_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """blocknet_tiny with 4 classes, saved once; tests read it, never write it."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4).eval()
    folder = tmp_path_factory.mktemp("hub") / "tiny"
    modeling.save_pretrained(model, folder, label_names=WNIDS, label_descriptions=NAMES,
                             pretrained_cfg={"input_size": (3, 64, 64), "crop_pct": 1.0}, model_card=CARD)
    return model, folder


# ---------------------------------------------------------------- registry and backbones

def test_registry_lists_ours_and_timm_takes_the_names():
    assert {"alexnet", "blocknet_tiny", "blocknet_r18", "blocknet_mobile"} <= set(OURS)
    for name in OURS:
        assert timm.is_model(name)
        assert timm.models.get_pretrained_cfg(name).mean == timm.data.IMAGENET_DEFAULT_MEAN
    assert isinstance(timm.create_model("blocknet_tiny", num_classes=3), BlockNet)
    assert type(modeling.create_model("resnet18", num_classes=3)).__name__ == "ResNet"  # falls through to the zoo


def test_create_model_errors_are_one_line():
    with pytest.raises(ValueError, match="did you mean.*blocknet_tiny") as e:
        modeling.create_model("blocknet_tiyn")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no published weights"):
        modeling.create_model("blocknet_tiny", pretrained=True)
    with pytest.raises(ValueError, match="block 'dense'"):
        BlockNetCfg(block="dense")


@pytest.mark.parametrize("name", OURS + ZOO_SMALL + ["convnext_tiny"])
def test_forward_backward_head_api(name):
    model = modeling.create_model(name, num_classes=5)
    x = small_input()
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, getattr(model, "head_hidden_size", model.num_features))
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
        assert model.get_classifier().out_features == 5
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        model.reset_classifier(0)
        assert torch.allclose(model(x), pre, atol=1e-5)  # no classifier: the pre-logits vector
    cfg = model.pretrained_cfg
    assert {"mean", "std", "input_size", "crop_pct", "interpolation", "classifier"} <= set(cfg)


def test_blocknet_grad_checkpointing_and_drop_path():
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_mobile", num_classes=3, drop_path_rate=0.2)
    with torch.no_grad():  # undo the zero-init of each block's last BN, or dropping a block would change nothing
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    x = small_input()
    model.eval()  # no dropped paths, frozen BatchNorm: both passes compute the same function
    plain = model(x)
    plain.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    checkpointed.sum().backward()
    assert torch.allclose(plain, checkpointed, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))
    model.train()
    assert not torch.allclose(model(x), model(x))  # stochastic depth drops different blocks per call


@pytest.mark.parametrize("name", ["blocknet_tiny", "blocknet_mobile"])
def test_blocknet_head_hidden_size_under_a_concatenating_pool(name):
    """catavgmax concatenates the avg and max pools: head_hidden_size is the pre-logits width, twice num_features, as
    in timm's ResNet, and follows the pool reset_classifier sets."""
    model = modeling.create_model(name, num_classes=5, global_pool="catavgmax").eval()
    x = small_input()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        assert model.head_hidden_size == 2 * model.num_features
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(3, "avg")
        assert model.head_hidden_size == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, "catavgmax")
        assert model(x).shape == (2, model.head_hidden_size) == (2, 2 * model.num_features)


def test_blocknet_refused_reset_classifier_changes_nothing():
    """A classifier on an unpooled map is refused before anything is assigned, as AlexNet's: the model predicts
    as before."""
    model = modeling.create_model("blocknet_tiny", num_classes=5).eval()
    x = small_input()
    with torch.no_grad():
        before = model(x)
        with pytest.raises(ValueError, match="needs num_classes=0"):
            model.reset_classifier(3, "")
        assert model.num_classes == 5 and model.get_classifier().out_features == 5
        assert model.global_pool.pool_type == "avg" and torch.equal(model(x), before)


@pytest.mark.parametrize("make, expected", [
    (lambda: modeling.create_model("alexnet"), 61_100_840),
    (lambda: torchvision.models.alexnet(), 61_100_840),
    (lambda: modeling.create_model("blocknet_r18"), 11_689_512),  # torchvision resnet18
    (lambda: BlockNet(BlockNetCfg(depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), block="bottleneck")),
     25_557_032),  # the bottleneck block is ResNet-50's
    (lambda: modeling.create_model("resnet50"), 25_557_032),
    (lambda: modeling.create_model("convnext_tiny"), 28_589_128),
    (lambda: modeling.create_model("vgg16"), 138_357_544),
], ids=["alexnet", "tv-alexnet", "blocknet_r18", "blocknet-bottleneck", "resnet50", "convnext_tiny", "vgg16"])
def test_parameter_counts_match_references(make, expected):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = make()
    assert sum(p.numel() for p in model.parameters()) == expected


def test_alexnet_loads_torchvision_state_dict_unchanged():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(num_classes=7).eval()
    ours = modeling.create_model("alexnet", num_classes=7).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def check_advertised_maps(backbone) -> list[int]:
    """The maps of a features_only backbone are what its feature_info says (channels, stride from the input), in
    non-decreasing stride; returns the strides. All any registered design must do, ImageNet-sized or not."""
    with torch.no_grad():
        maps = backbone.eval()(small_input(batch=1))  # 64x64 px
    info = backbone.feature_info
    assert len(maps) == len(info.channels()) >= 1
    assert [m.shape[1] for m in maps] == info.channels()
    assert info.reduction() == sorted(info.reduction())  # equal neighbours allowed: ViT-like designs stay at 16
    for m, reduction in zip(maps, info.reduction()):
        # AlexNet's unpadded 11x11/4 conv gives 15 px from 64, not 16: allow the off-by-one
        assert abs(m.shape[-1] - 64 / reduction) <= 1, (m.shape, reduction)
    return info.reduction()


@pytest.mark.parametrize("name", OURS + ZOO_SMALL)
def test_features_only_gives_advertised_maps(name):
    for create in (modeling.create_model, timm.create_model):
        reductions = check_advertised_maps(create(name, features_only=True))
        if name in SHIPPED + ZOO_SMALL:  # what detection/segmentation necks (FPN) expect of an ImageNet backbone
            assert len(reductions) >= 4 and reductions[-1] == 32, reductions


@pytest.fixture
def scratch_registry():
    """Names registered inside a test are gone after it: timm's registry and list_models() are restored, so a
    later test of a user's family of the same name tests that family, not a toy."""
    with restored_registry():
        yield


@contextlib.contextmanager
def restored_registry():
    """timm's registry and modeling's list of our names as they were on entry, again on exit."""
    reg = timm.models._registry
    saved = {name: copy.deepcopy(value) if name != "_model_entrypoints" else dict(value)
             for name, value in vars(reg).items() if name.startswith(("_model", "_module")) and
             isinstance(value, (dict, set))}
    ours = modeling._registry._OURS
    modeling._registry._OURS = copy.copy(ours)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(reg, name, value)
        modeling._registry._OURS = ours


DOC_FAMILY = "mynet_doc_example"  # not the README's mynet_small: that name is the user's


def docstring_family_source(name: str = DOC_FAMILY) -> str:
    """The one-file backbone of modeling/__init__.py's docstring (copied into the README), as a module outside
    the package, its variant renamed."""
    code = modeling.__doc__.split("one import line at the bottom of this file:")[1].split("then ``from . import")[0]
    return textwrap.dedent(code).replace("from ._registry import", "from modeling._registry import").replace(
        "mynet_small", name)


def test_readme_example_backbone_works(tmp_path, monkeypatch, scratch_registry):
    """The docstring of modeling/__init__.py (copied into the README) is a working one-file backbone."""
    (tmp_path / "mynet_example.py").write_text(docstring_family_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mynet_example", raising=False)
    import mynet_example  # noqa: F401

    assert DOC_FAMILY in modeling.list_models()
    model = modeling.create_model(DOC_FAMILY, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    maps = timm.create_model(DOC_FAMILY, features_only=True)(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 16, 16), (64, 8, 8)]
    # what test_features_only_gives_advertised_maps asks of a registered design that is not one of ours
    assert check_advertised_maps(modeling.create_model(DOC_FAMILY, features_only=True)) == [2, 4]


def test_readme_example_backbone_honours_global_pool(scratch_registry, tmp_path, monkeypatch):
    """The docstring's backbone pools as global_pool asks (timm's pools), refuses a Linear classifier on an unpooled
    map in one line, as BlockNet does, and keeps head_hidden_size the width of what its head gets after pruning."""
    (tmp_path / "mynet_example.py").write_text(docstring_family_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mynet_example", raising=False)
    import mynet_example  # noqa: F401

    x = torch.randn(2, 3, 32, 32)
    maxed = timm.create_model(DOC_FAMILY, num_classes=0, global_pool="max").eval()
    with torch.no_grad():
        assert torch.equal(maxed(x), maxed.forward_features(x).amax((2, 3)))
    for refused in (lambda: maxed.reset_classifier(10, ""),
                    lambda: timm.create_model(DOC_FAMILY, num_classes=10, global_pool="")):
        with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) needs num_classes=0") as e:
            refused()
        assert "\n" not in str(e.value)
    maxed.prune_intermediate_layers(indices=[0])  # the stem's map only: the 64-channel stage goes
    assert maxed.head_hidden_size == maxed.num_features == 32
    maxed.reset_classifier(0, "avg")
    with torch.no_grad():
        assert maxed(x).shape == (2, maxed.head_hidden_size) == (2, 32)


def test_a_family_that_does_not_keep_in_chans_is_not_exported_as_three_channel(tmp_path, monkeypatch,
                                                                                scratch_registry):
    """timm reads the channel count from in_chans, else the cfg's 3: a one-channel network of a family without it
    would export a three-channel input_size and mean/std, and transformers' pipeline would feed it RGB. The export
    says which line is missing; the docstring's family keeps it and exports one channel."""
    source = docstring_family_source()
    (tmp_path / "mynet_example.py").write_text(source)
    (tmp_path / "mynet_forgot.py").write_text(source.replace("self.in_chans = in_chans", "pass").replace(
        DOC_FAMILY, "mynet_forgot"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("mynet_example", "mynet_forgot"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    import mynet_example  # noqa: F401
    import mynet_forgot  # noqa: F401

    gray = modeling.create_model(DOC_FAMILY, num_classes=2, in_chans=1)
    modeling.save_pretrained(gray, tmp_path / "gray", label_names=["a", "b"])
    cfg = json.loads((tmp_path / "gray" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"][0] == len(cfg["mean"]) == len(cfg["std"]) == 1
    with pytest.raises(ValueError, match=r"^mynet_forgot: its first conv \(stem\.0\) reads 1 channels, but it has "
                                         r"no in_chans attribute, so timm takes it for 3 .* keep self\.in_chans") as e:
        modeling.save_pretrained(modeling.create_model("mynet_forgot", num_classes=2, in_chans=1), tmp_path / "bad",
                                 label_names=["a", "b"])
    assert "\n" not in str(e.value) and not (tmp_path / "bad" / "config.json").exists()


def test_scratch_registry_restores_timm(tmp_path, monkeypatch):
    """A family registered inside restored_registry (what the scratch_registry fixture runs) is gone after it."""
    (tmp_path / "mynet_example.py").write_text(docstring_family_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mynet_example", raising=False)
    assert not timm.is_model(DOC_FAMILY)
    with restored_registry():
        import mynet_example  # noqa: F401

        assert timm.is_model(DOC_FAMILY) and DOC_FAMILY in modeling.list_models()
    assert not timm.is_model(DOC_FAMILY) and DOC_FAMILY not in modeling.list_models()
    monkeypatch.delitem(sys.modules, "mynet_example")


def test_variant_without_its_cfg_fails_at_import(tmp_path, monkeypatch, scratch_registry):
    source = docstring_family_source().replace('generate_default_cfgs({"mynet_doc_example"',
                                               'generate_default_cfgs({"mynet_doc_exampel"')  # a typo in the key
    (tmp_path / "mynet_typo.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"mynet_typo.py: variant 'mynet_doc_example' has no default_cfgs entry "
                                          r"\(entries: mynet_doc_exampel\)") as e:
        import mynet_typo  # noqa: F401
    assert "\n" not in str(e.value) and not timm.is_model(DOC_FAMILY)


def test_unknown_model_names_the_family_files_not_imported():
    probe = Path(modeling.__file__).parent / "mynet_not_imported.py"  # a family file whose import line is missing
    probe.write_text(docstring_family_source("mynet_pico"))
    try:
        with pytest.raises(ValueError, match=r"not imported: modeling/mynet_not_imported.py \(add `from \. import "
                                             r"mynet_not_imported` to modeling/__init__.py\)") as e:
            modeling.create_model("mynet_pico")
    finally:
        probe.unlink()
    assert "\n" not in str(e.value)


USERS_FAMILIES = r"""
# a pytest plugin (-p): registers what README section 6 has a user add before the suite collects its tests
import re
from pathlib import Path

import modeling
import modeling.blocknet
import mynet  # noqa: F401  a plain-CNN family of the user's, the docstring's example as written

readme = (Path(modeling.__file__).resolve().parents[1] / "README.md").read_text()
snippet = re.search(r"```python\n(@register\ndef blocknet_wide.*?)```", readme, flags=re.S).group(1)
exec(snippet, vars(modeling.blocknet))  # as if pasted at the end of modeling/blocknet.py
three = snippet.replace("blocknet_wide", "blocknet_three").replace(
    "depths=(2, 2, 2, 2), widths=(96, 192, 384, 768)", "depths=(1, 1, 1), widths=(16, 32, 64), strides=(2, 2, 2)")
assert "strides=(2, 2, 2)" in three
exec(three, vars(modeling.blocknet))  # a three-stage variant: four feature taps, timm's default asks for five
"""


def test_a_users_families_pass_the_registry_suite_as_written(tmp_path):
    """README section 6's three-line blocknet_wide, a three-stage variant of it and the docstring's plain-CNN
    mynet_small (no residual blocks, two feature maps at strides 2 and 4, 32 px-sized) registered as a user would,
    then the registry tests of this file, tests/test_timm_contract.py and tests/test_recipes.py on them: nothing in
    the suite may ask more of a family than every family needs, and timm's contract holds for each."""
    (tmp_path / "mynet.py").write_text(docstring_family_source("mynet_small"))
    (tmp_path / "users_families.py").write_text(USERS_FAMILIES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "users_families", "-p", "no:cacheprovider",
                           "tests/test_modeling.py", "tests/test_timm_contract.py", "tests/test_recipes.py", "-k",
                           "mynet_small or blocknet_wide or blocknet_three or test_registry_lists"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    ran = re.findall(r"(\d+) passed", proc.stdout)
    # forward/backward, features_only, save/load, FSDP wrap and timm's contract (8) for each of the three, plus the
    # registry test
    assert ran and int(ran[0]) >= 3 * (4 + 8) + 1, proc.stdout[-2000:]
    assert " skipped" not in proc.stdout.splitlines()[-1]


CLEAN_LOAD = (
    "import importlib.util, sys, json, torch\n"
    "assert importlib.util.find_spec('modeling') is None\n"
    "from safetensors.torch import load_file\n"
    "from transformers import AutoModelForImageClassification, pipeline\n"
    "folder, tensors, photo = sys.argv[1:]\n"
    "io = load_file(tensors)\n"
    "hf = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()\n"
    "with torch.no_grad():\n"
    "    equal = bool(torch.allclose(hf(pixel_values=io['x']).logits, io['logits'], atol=1e-5))\n"
    "labels = [p['label'] for p in pipeline('image-classification', model=folder, trust_remote_code=True)"
    "(photo, top_k=4)]\n"
    "print('RESULT ' + json.dumps({'equal': equal, 'labels': labels}))\n")


def load_in_clean_interpreter(model, folder: Path, tmp_path: Path) -> dict:
    """transformers' trust_remote_code load of ``folder`` in a process that cannot import this project or any
    module next to the family's file (``-I``, no PYTHON* variables, another working directory): whether its logits
    equal ``model``'s, and the labels its pipeline prints."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        save_file({"x": x, "logits": model(x)}, tmp_path / "io.safetensors")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-I", "-c", CLEAN_LOAD, str(folder), str(tmp_path / "io.safetensors"),
                           str(PHOTO)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_users_family_exports_its_file_and_loads_with_trust_remote_code(tmp_path, monkeypatch, scratch_registry):
    """A plain-CNN family defined outside this package exports with its own file and loads in transformers in a
    process that cannot import modeling."""
    (tmp_path / "mynet_remote.py").write_text(docstring_family_source("mynet_remote_small"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynet_remote  # noqa: F401

    torch.manual_seed(0)
    model = modeling.create_model("mynet_remote_small", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=WNIDS, label_descriptions=NAMES,
                                      pretrained_cfg={"input_size": (3, 32, 32)})
    assert sorted(p.name for p in folder.glob("*.py")) == ["modeling_mynet_remote.py", "mynet_remote.py"]
    copied = (folder / "mynet_remote.py").read_text()
    card = (folder / "README.md").read_text()
    assert "import mynet_remote  # registers mynet_remote_small" in card and "import modeling" not in card
    assert "from timm.models import register_model as register" in copied and "import modeling" not in copied
    out = load_in_clean_interpreter(model, folder, tmp_path)
    assert out["equal"] and sorted(out["labels"]) == sorted(SHOWN)


TWO_FILE_LAYERS = """from torch import nn


class ConvBnAct(nn.Sequential):  # a layer of the family's own second file
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__(nn.Conv2d(in_chs, out_chs, 3, stride, 1), nn.BatchNorm2d(out_chs), nn.ReLU())
"""


def import_two_file_family(root: Path, monkeypatch, import_line: str) -> None:
    """Package ``userfamilies`` under ``root``, imported: the docstring's family in ``twofile.py``, its stem built by
    a class of ``twolayers.py`` that ``import_line`` brings in."""
    for name in ("userfamilies", "userfamilies.twofile", "userfamilies.twolayers"):  # another test's copy
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    package = root / "userfamilies"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "twolayers.py").write_text(TWO_FILE_LAYERS)
    stem = "self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())"
    source = docstring_family_source("mynet_two_small")
    assert stem in source
    source = source.replace(stem, "self.stem = twolayers_stem(in_chans, width, 2)").replace(
        "from modeling._registry import register", f"from modeling._registry import register\n{import_line}")
    (package / "twofile.py").write_text(source)
    importlib.import_module("userfamilies.twofile")


def test_two_file_family_exports_both_files_and_loads_in_a_clean_interpreter(tmp_path, monkeypatch,
                                                                            scratch_registry):
    import_two_file_family(tmp_path, monkeypatch, "from .twolayers import ConvBnAct as twolayers_stem")

    torch.manual_seed(0)
    model = modeling.create_model("mynet_two_small", num_classes=4).eval()
    modeling.check_exportable(model)
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=WNIDS, label_descriptions=NAMES,
                                      pretrained_cfg={"input_size": (3, 32, 32)})
    assert sorted(p.name for p in folder.glob("*.py")) == ["modeling_twofile.py", "twofile.py", "twolayers.py"]
    assert "class ConvBnAct" in (folder / "twolayers.py").read_text()
    out = load_in_clean_interpreter(model, folder, tmp_path)
    assert out["equal"] and sorted(out["labels"]) == sorted(SHOWN)


@pytest.mark.parametrize("import_line, named", [
    ("from . import twolayers; twolayers_stem = twolayers.ConvBnAct", "'.'"),  # transformers follows no such import
    ("import imagenet_trainer.metrics  # noqa: F401\nfrom .twolayers import ConvBnAct as twolayers_stem",
     "'imagenet_trainer.metrics'"),  # this project's code: not in the export
], ids=["from-dot-import", "project-code"])
def test_family_that_cannot_travel_is_refused_before_training(tmp_path, monkeypatch, scratch_registry, import_line,
                                                             named):
    import_two_file_family(tmp_path, monkeypatch, import_line)

    model = modeling.create_model("mynet_two_small", num_classes=4)
    with pytest.raises(ValueError, match=f"twofile.py line \\d+ imports {named}") as e:
        modeling.check_exportable(model)
    assert "\n" not in str(e.value)
    import train  # train.py's model step, before any data is read: the same line, as an error

    with pytest.raises(SystemExit, match=f"error: --model mynet_two_small: twofile.py line \\d+ imports {named}"):
        train.build_model(train.TrainConfig(model="mynet_two_small", dataset="unused"), list("abcd"))


def test_readme_three_line_variant_gets_the_family_cfg(scratch_registry):
    """README's new-variant snippet (no default_cfgs entry): it must get BlockNet's cfg (classifier, crop, mean/std),
    not timm's fallback, or validate.py cannot find the head of its checkpoints."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("def blocknet_wide", 1)[1].split("```", 1)[0]
    namespace = vars(modeling.blocknet).copy()
    exec(("@register\ndef blocknet_wide" + snippet).replace("blocknet_wide", "blocknet_readme_wide"), namespace)
    model = modeling.create_model("blocknet_readme_wide", num_classes=5)
    assert model.pretrained_cfg["classifier"] == "fc" and model.pretrained_cfg["crop_pct"] == 0.875
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


# ---------------------------------------------------------------- saving and loading

@pytest.mark.parametrize("name", OURS + ZOO_SMALL)
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the buffers must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, label_descriptions=NAMES)
    x = small_input()
    loaded = modeling.load_model(folder)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg["label_names"] == WNIDS
    assert modeling.label_info(folder) == (WNIDS, NAMES)

    fresh_head = modeling.load_model(folder, num_classes=3)  # fine-tuning start: saved features, new classifier
    with torch.no_grad():
        assert fresh_head(x).shape == (2, 3)
        assert torch.equal(fresh_head.forward_features(x), model.forward_features(x))


@pytest.mark.parametrize("name", ["blocknet_tiny", *ZOO_SMALL])
@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the export's copy, imported here
def test_load_model_of_headless_weights_builds_the_headless_model(name, tmp_path):
    """transformers' AutoModel (TimmWrapperModel, built for 0 classes) saves no classifier while config.json keeps
    the class count (keys as timm's for timm's families, under timm_model. for ours, loaded with the export's remote
    code): load_model without num_classes builds what the weights hold, the headless network; with num_classes, a
    fresh classifier on those features. save_pretrained of a headless model loads back headless. Weights that lack a
    tensor of the network are refused in one line, not filled in at random."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=WNIDS)
    with restored_registry():
        AutoModel.from_pretrained(folder, trust_remote_code=True).save_pretrained(tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["num_classes"] == 4
    x = small_input()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        headless = modeling.load_model(tmp_path / "auto")
        assert headless.num_classes == 0 and torch.equal(headless(x), pooled)
        fresh = modeling.load_model(tmp_path / "auto", num_classes=3)
        assert fresh(x).shape == (2, 3) and torch.equal(fresh.forward_features(x), model.forward_features(x))
        assert modeling.load_model(folder, num_classes=0)(x).shape == pooled.shape
    own = modeling.save_pretrained(modeling.create_model(name, num_classes=0), tmp_path / "own", label_names=[])
    assert modeling.load_model(own).num_classes == 0

    state = load_file(tmp_path / "auto" / "model.safetensors")
    dropped = next(k for k in state if k.endswith("running_var"))
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "auto" / "model.safetensors")
    key = re.escape(dropped.removeprefix("timm_model."))
    with pytest.raises(ValueError, match=rf"does not fit architecture '{name}' \({key} missing or unexpected\)") as e:
        modeling.load_model(tmp_path / "auto")
    assert "\n" not in str(e.value)


def test_config_json_keys(saved_tiny):
    _, folder = saved_tiny
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "blocknet_tiny" and config["num_classes"] == 4
    assert config["num_features"] == 128
    assert "num_classes" not in config["model_args"]  # transformers passes it too and fails on the duplicate
    assert "label_names" not in config  # a root list would be copied over timm's wnids and printed by transformers
    pcfg = config["pretrained_cfg"]
    assert pcfg["label_names"] == WNIDS and pcfg["label_descriptions"] == dict(zip(WNIDS, NAMES))
    assert pcfg["input_size"] == [3, 64, 64] and pcfg["crop_pct"] == 1.0
    assert {"mean", "std", "interpolation"} <= set(pcfg) and "tag" not in pcfg
    assert list(config["id2label"].values()) == SHOWN
    assert config["label2id"] == {name: i for i, name in enumerate(SHOWN)}
    assert sorted(p.name for p in folder.iterdir()) == [".eval_results", "README.md", "blocknet.py", "config.json",
                                                          "model.safetensors", "modeling_blocknet.py"]
    assert config["auto_map"] == {"AutoModelForImageClassification":
                                  "modeling_blocknet.TimmWrapperForImageClassification",
                                  "AutoModel": "modeling_blocknet.TimmWrapperModel",
                                  "AutoBackbone": "modeling_blocknet.BlockNetBackbone"}


@pytest.mark.parametrize("name, kwargs, size", [("blocknet_tiny", {}, 32), ("blocknet_tiny", {"output_stride": 16}, 64),
                                               ("resnet18", {}, 96)], ids=["32px", "os16", "resnet18-96px"])
def test_pool_size_is_the_feature_map_at_the_exported_input_size(name, kwargs, size, tmp_path):
    """pool_size is forward_features' map at input_size (timm's test_model_default_cfgs): at another input size or
    output stride than the architecture's default cfg, the export measures it."""
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4, **kwargs).eval()
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS,
                                      pretrained_cfg={"input_size": (3, size, size)})
    for loaded in (modeling.load_model(folder), timm.create_model(f"local-dir:{folder}", pretrained=True).eval()):
        cfg = loaded.pretrained_cfg
        with torch.no_grad():
            fmap = loaded.forward_features(torch.zeros(1, *cfg["input_size"]))
        assert tuple(cfg["pool_size"]) == tuple(fmap.shape[-2:]) != tuple(model.pretrained_cfg["pool_size"])


@pytest.mark.parametrize("in_chans", [1, 2])
@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the export's copy, imported here
def test_mean_and_std_of_an_export_fit_its_channels(in_chans, tmp_path, scratch_registry):
    """An export for in_chans != 3 writes one mean and std value per channel, as timm's exporter reduces them
    (resolve_input_data_config: their mean): transformers' image processor asserts that count, so
    AutoImageProcessor reads the folder, and a grayscale photo through it gives the export's logits."""
    from PIL import Image
    from timm.data.model_config import resolve_input_data_config
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4, in_chans=in_chans).eval()
    folder = modeling.save_pretrained(model, tmp_path / "gray", label_names=WNIDS, label_descriptions=NAMES)
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [in_chans, 64, 64]
    for key in ("mean", "std"):
        assert cfg[key] == pytest.approx(list(resolve_input_data_config(model)[key])) and len(cfg[key]) == in_chans
    processor = AutoImageProcessor.from_pretrained(folder)
    if in_chans == 1:
        pixels = processor(Image.open(PHOTO).convert("L"), return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 1, 64, 64)
        classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.allclose(classifier(pixel_values=pixels).logits, model(pixels), atol=1e-5)


def test_1000_class_label_keys_agree_with_transformers():
    """For 1000 classes transformers substitutes timm's ImageNet names unless a root label_names exists."""
    from transformers import TimmWrapperConfig

    with torch.device("meta"):
        model = modeling.create_model("blocknet_tiny", num_classes=1000)
    info = timm.data.ImageNetInfo("imagenet-1k")
    wnids, names = info.label_names(), info.label_descriptions()
    config = hub_config(model, wnids, names)
    assert "label_names" not in config
    hf = TimmWrapperConfig.from_dict(json.loads(json.dumps(config)))
    assert hf.id2label[0] == "tench, Tinca tinca" and hf.id2label[1] == "goldfish, Carassius auratus"

    ids = [f"c{i:04d}" for i in range(1000)]  # 1000 classes that are not ImageNet's
    config = hub_config(model, ids, [f"thing {i}" for i in range(1000)])
    hf = TimmWrapperConfig.from_dict(json.loads(json.dumps(config)))
    assert hf.id2label[0] == "thing 0" and hf.id2label[999] == "thing 999"
    assert config["pretrained_cfg"]["label_names"][:2] == ["c0000", "c0001"]


def test_model_card_and_eval_results(saved_tiny):
    _, folder = saved_tiny
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["ILSVRC/imagenet-1k"] and "image-classification" in card.data.tags
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert metrics == {"top-1 accuracy (%)": 67.12, "top-5 accuracy (%)": 87.45}
    body = card.text
    for fact in ("16", "1x H100 80GB", "| lr | 0.8 |", "| batch_size | 1024 |", "[0.485, 0.456, 0.406]",
                 "crop_pct 1.0", "| 67.12 | 87.45 |", "| 0 | n02012849 | crane |", "import modeling",
                 'timm.create_model("hf-hub:me/tiny", pretrained=True', "features_only=True",
                 'pipeline("image-classification", model="me/tiny", trust_remote_code=True)', "topk(4)",
                 "num_classes=0", "Params (M): 0.31", "GMACs", "Activations (M)", "@misc{rw2019timm"):
        assert fact in body, fact

    entries = huggingface_hub.parse_eval_result_entries(
        yaml.safe_load((folder / ".eval_results" / "imagenet-1k.yaml").read_text()))
    assert [(e.dataset_id, e.task_id, e.value) for e in entries] == [
        ("ILSVRC/imagenet-1k", "top1_accuracy", 67.12), ("ILSVRC/imagenet-1k", "top5_accuracy", 87.45)]


def test_card_shows_no_local_paths_and_links_only_hub_datasets(tmp_path):
    model = modeling.create_model("blocknet_tiny", num_classes=1000)
    info = timm.data.ImageNetInfo("imagenet-1k")
    labels = {"label_names": info.label_names(), "label_descriptions": info.label_descriptions()}
    home = tmp_path / "home" / "alice"
    (home / "imagenet").mkdir(parents=True)
    results = {"top1": 70.0, "top5": 90.0, "n": 50000}
    recipe = {"dataset": str(home / "imagenet"), "output_dir": str(home / "runs" / "r50"),
              "model": f"local-dir:{home / 'start'}", "resume_from_checkpoint": "latest", "lr": 0.1}
    local = modeling.save_pretrained(model, tmp_path / "local", **labels, model_card={
        "dataset": str(home / "imagenet"), "recipe": recipe, "results": results})
    text = (local / "README.md").read_text()
    assert "alice" not in text  # the card is public, the cluster's paths are not
    for row in ("| model | local-dir:start |", "| lr | 0.1 |", "| imagenet | validation | 50000 | 70.00 | 90.00 |"):
        assert row in text, row
    for plumbing in ("| dataset | imagenet |", "| output_dir |", "| resume_from_checkpoint |"):  # not how the weights were made
        assert plumbing not in text, plumbing
    # ILSVRC's 1000 wnids do not make a local folder the Hub's ILSVRC/imagenet-1k (preprocess.py's demo trees have
    # them too): the results are in the metadata under the folder's own name, with no Hub dataset linked
    card = huggingface_hub.ModelCard.load(local / "README.md")
    assert card.data.datasets is None and not (local / ".eval_results").exists()
    assert {(r.dataset_name, r.dataset_type, r.metric_value) for r in card.data.eval_results} == {
        ("imagenet", "imagenet", 70.0), ("imagenet", "imagenet", 90.0)}
    assert 'timm.create_model("hf-hub:OWNER/NAME"' in text  # no repo id yet: push_to_hub fills it in

    # --dataset given as a Hub id is that dataset; a known repo id goes into the snippets
    hub = modeling.save_pretrained(model, tmp_path / "hub", **labels, model_card={
        "dataset": "ILSVRC/imagenet-1k", "results": results, "repo_id": "me/r50"})
    card = huggingface_hub.ModelCard.load(hub / "README.md")
    assert card.data.datasets == ["ILSVRC/imagenet-1k"]
    assert card.data.eval_results[0].dataset_type == "ILSVRC/imagenet-1k"
    assert 'hf-hub:me/r50"' in card.text and 'model="me/r50"' in card.text and "OWNER/NAME" not in card.text
    for bad, message in (({"dataset_id": "my data"}, "dataset id 'my data' is not a Hub dataset id"),
                         ({"repo_id": "me/r50/x"}, "repo_id 'me/r50/x' is not a Hub repo id")):
        with pytest.raises(ValueError, match=message):
            modeling.save_pretrained(model, tmp_path / "bad", **labels, model_card=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "hub", "local"]  # no half folder


def test_export_follows_the_umask_not_mkdtemp(saved_tiny, tmp_path):
    """mkdtemp makes 0700 and safetensors 0600: on a shared cluster teammates could not read the export."""
    model, _ = saved_tiny
    old = os.umask(0o022)
    try:
        folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, model_card=CARD)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in (folder, *folder.rglob("*"))}
    assert modes == {".": 0o755, ".eval_results": 0o755, ".eval_results/imagenet-1k.yaml": 0o644,
                     "README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644, "blocknet.py": 0o644,
                     "modeling_blocknet.py": 0o644}


def test_update_model_card_results_rewrites_only_the_results(saved_tiny, tmp_path):
    model, _ = saved_tiny
    # the card train.py writes: float epochs, a recipe with None and lists, results with n and ema
    recipe = {"model": "blocknet_tiny", "lr": 0.1, "auto_augment": None, "betas": [0.9, 0.999]}
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, label_descriptions=NAMES, model_card={
        "dataset": "me/train-data", "recipe": recipe, "epochs": 2.5, "hardware": "1 x cpu (NO, no)",
        "results": {"top1": 50.0, "top5": 100.0, "split": "validation", "n": 8, "ema": True}})
    text = (folder / "README.md").read_text()
    assert "| auto_augment | None |" in text and "**Epochs:** 2.5" in text and "(EMA)" in text
    assert "| me/train-data | validation | 8 | 50.00 | 100.00 |" in text
    after_results = text.split("## Training")[1]

    # validate.py's results at another size on another Hub dataset; it knows nothing of EMA
    modeling.update_model_card_results(folder, {"top1": 62.5, "top5": 87.5, "split": "val", "n": 16,
                                                "dataset": "other/dataset", "image_size": 80, "crop_pct": 1.0,
                                                "interpolation": "bicubic"})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert {r.metric_name: (r.metric_value, r.dataset_split, r.dataset_type) for r in card.data.eval_results} == {
        "top-1 accuracy (%)": (62.5, "val", "other/dataset"), "top-5 accuracy (%)": (87.5, "val", "other/dataset")}
    assert card.text.count("## Results") == 1 and "| other/dataset | val | 16 | 62.50 | 87.50 |" in card.text
    assert "Evaluated at 80x80 px center crop (crop_pct 1.0, bicubic)." in card.text and "50.00" not in card.text
    modeling.update_model_card_results(folder, {"top1": 62.5, "top5": 87.5, "split": "val", "n": 16, "image_size": 80,
                                                "flip": True})  # flip TTA numbers say so
    assert "px center crop, logits averaged with the mirrored image's (flip TTA)." in (folder / "README.md").read_text()
    modeling.update_model_card_results(folder, {"top1": 62.5, "top5": 87.5, "split": "val", "n": 16,
                                                "dataset": "other/dataset", "image_size": 80, "crop_pct": 1.0,
                                                "interpolation": "bicubic"})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert "Weights: the exponential moving average (EMA)" in card.text  # the same EMA weights were scored
    assert card.text.split("## Training")[1] == after_results  # the rest is as written
    entries = yaml.safe_load((folder / ".eval_results" / "dataset.yaml").read_text())
    assert [e["value"] for e in entries] == [62.5, 87.5] and entries[0]["notes"].endswith("at 80x80 px center crop "
                                                                                        "(crop_pct 1.0, bicubic)")

    # on a local folder: the table is replaced, the metadata gains the folder's entry and keeps the Hub dataset's
    (tmp_path / "home" / "mine").mkdir(parents=True)
    before = [(r.dataset_type, r.dataset_split, r.metric_value) for r in card.data.eval_results]
    modeling.update_model_card_results(folder, {"top1": 30.0, "top5": 60.0, "dataset": str(tmp_path / "home" / "mine"),
                                                "ema": False})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert [(r.dataset_type, r.dataset_split, r.metric_value) for r in card.data.eval_results] == before + [
        ("mine", "validation", 30.0), ("mine", "validation", 60.0)]
    assert card.data.datasets == ["me/train-data", "other/dataset"]
    assert "| mine | validation | - | 30.00 | 60.00 |" in card.text
    assert str(tmp_path) not in card.text and "(EMA)" not in card.text  # ema=False was said explicitly

    bare = modeling.save_pretrained(model, tmp_path / "bare", label_names=WNIDS)  # no results section yet
    modeling.update_model_card_results(bare, {"top1": 10.0, "top5": 40.0})
    text = (bare / "README.md").read_text()
    assert text.index("## Results") < text.index("## Training") and "| 10.00 | 40.00 |" in text
    with pytest.raises(ValueError, match="unknown results keys \\['acc'\\]"):
        modeling.update_model_card_results(bare, {"acc": 1.0})


def test_a_card_update_without_a_dataset_scores_the_cards_own_and_keeps_other_splits(saved_tiny, tmp_path):
    """A card's own dataset scored again, without naming it, after other sets were added: the numbers go to the
    dataset the Results table names, not to whichever the metadata lists first (ImageNet-V2 here, whose numbers
    stay); an evaluation of another split adds its entries to .eval_results/ beside the validation ones."""
    from modeling.card_sets import update_card_sets

    model, _ = saved_tiny
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, label_descriptions=NAMES, model_card={
        "dataset": "me/mydata", "results": {"top1": 70.0, "top5": 90.0, "split": "validation", "n": 100}})
    update_card_sets(folder, [{"name": "ImageNet-V2", "dataset_id": "other/imagenet-v2", "split": "validation",
                               "top1": 55.0, "top5": 80.0}])
    for _ in range(2):  # the same call twice changes nothing more
        modeling.update_model_card_results(folder, {"top1": 71.5, "top5": 91.0, "split": "validation", "n": 100})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert sorted((r.dataset_type, r.dataset_name, r.metric_value) for r in card.data.eval_results) == [
        ("me/mydata", "me/mydata", 71.5), ("me/mydata", "me/mydata", 91.0),
        ("other/imagenet-v2", "ImageNet-V2", 55.0), ("other/imagenet-v2", "ImageNet-V2", 80.0)]

    def eval_results(name):
        return [(e.task_id, e.value) for e in huggingface_hub.parse_eval_result_entries(
            yaml.safe_load((folder / ".eval_results" / f"{name}.yaml").read_text()))]

    assert eval_results("imagenet-v2") == [("top1_accuracy", 55.0), ("top5_accuracy", 80.0)]
    modeling.update_model_card_results(folder, {"top1": 99.0, "top5": 100.0, "split": "train", "n": 400,
                                                "dataset": "me/mydata"})
    assert eval_results("mydata") == [("top1_accuracy", 71.5), ("top5_accuracy", 91.0),
                                      ("top1_accuracy_train", 99.0), ("top5_accuracy_train", 100.0)]


def test_own_design_loads_through_transformers(saved_tiny):
    from transformers import AutoModelForImageClassification, pipeline

    model, folder = saved_tiny
    x = small_input()
    hf = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=x).logits, model(x), atol=1e-5)
    predictions = pipeline("image-classification", model=str(folder))(str(PHOTO), top_k=4)
    assert sorted(p["label"] for p in predictions) == sorted(SHOWN)
    backbone = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
    with torch.no_grad():
        assert torch.allclose(backbone(x)[-1], model.forward_features(x), atol=1e-6)


def test_save_rejects_bad_input_and_never_leaves_half_a_folder(saved_tiny, tmp_path, monkeypatch):
    model, _ = saved_tiny
    with pytest.raises(ValueError, match="label_names has 3 entries but the model has 4 classes"):
        modeling.save_pretrained(model, tmp_path / "x", label_names=WNIDS[:3])
    with pytest.raises(ValueError, match="must be unique"):
        modeling.save_pretrained(model, tmp_path / "x", label_names=["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="unknown keys"):
        modeling.save_pretrained(model, tmp_path / "x", label_names=WNIDS, pretrained_cfg={"resize": 256})
    with pytest.raises(ValueError, match="not a timm classifier"):
        modeling.save_pretrained(torch.nn.Linear(2, 4), tmp_path / "x", label_names=WNIDS)
    assert not (tmp_path / "x").exists()

    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS)
    before = folder_digest(folder)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        modeling.save_pretrained(model, folder, label_names=WNIDS, label_descriptions=NAMES)
    assert folder_digest(folder) == before  # the old folder is intact ...
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # ... and no temp folder is left behind


def test_load_refuses_pickles_and_missing_folders(saved_tiny, tmp_path):
    model, _ = saved_tiny
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "blocknet_tiny", "num_classes": 4}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no model.safetensors"):
        modeling.load_model(folder)
    with pytest.raises(ValueError, match="no config.json"):
        modeling.load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither a folder nor a Hub repo id"):
        modeling.load_model("not a repo id!")


def test_hub_ids_load_offline_from_the_cache(saved_tiny, tmp_path, monkeypatch):
    model, folder = saved_tiny
    snapshot = tmp_path / "hub" / "models--me--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "hub" / "models--me--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--me--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    x = small_input()
    for ref in ("hf-hub:me/tiny", "me/tiny"):
        with torch.no_grad():
            assert torch.equal(modeling.load_model(ref)(x), model(x))
    assert modeling.label_info("me/tiny") == (WNIDS, NAMES)
    with pytest.raises(ValueError, match="with HF_HUB_OFFLINE=1 set Hub repo 'me/absent'") as e:
        modeling.load_model("me/absent")
    assert "\n" not in str(e.value) and f"not in the Hugging Face cache {tmp_path / 'hub'}:" in str(e.value)


ISOLATED = r"""
import importlib.util, json, sys
# the point of this process: no project code can be imported
assert importlib.util.find_spec("modeling") is None and importlib.util.find_spec("imagenet_trainer") is None
import torch, timm
from safetensors.torch import load_file
folder, tensors, photo = sys.argv[1:]
io = load_file(tensors)
out = {"sys_path": sys.path}
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
with torch.no_grad():
    out["timm_equal"] = bool(torch.allclose(model(io["x"]), io["logits"], atol=1e-5))
out["timm_label_names"] = list(model.pretrained_cfg["label_names"])
out["timm_label_descriptions"] = model.pretrained_cfg["label_descriptions"]
backbone = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
with torch.no_grad():
    out["feature_channels"] = [m.shape[1] for m in backbone(io["x"])]
    out["features_equal"] = bool(torch.allclose(backbone(io["x"])[-1], io["last_map"], atol=1e-5))
from transformers import AutoModelForImageClassification, pipeline
hf = AutoModelForImageClassification.from_pretrained(folder).eval()
with torch.no_grad():
    out["transformers_equal"] = bool(torch.allclose(hf(pixel_values=io["x"]).logits, io["logits"], atol=1e-5))
out["pipeline"] = pipeline("image-classification", model=folder)(photo, top_k=4)
print("RESULT " + json.dumps(out))
"""


def test_zoo_folder_loads_with_no_project_code(tmp_path):
    """timm, transformers' Auto class and pipeline load a saved resnet18 folder in a process that cannot see us."""
    torch.manual_seed(0)
    model = modeling.create_model("resnet18", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "resnet18-demo", label_names=WNIDS,
                                      label_descriptions=NAMES, model_card=CARD)
    x = small_input()
    with torch.no_grad():
        save_file({"x": x, "logits": model(x), "last_map": model.forward_features(x)}, tmp_path / "io.safetensors")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-I", "-c", ISOLATED, str(folder), str(tmp_path / "io.safetensors"),
                           str(PHOTO)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])

    project = str(Path(modeling.__file__).resolve().parent.parent)
    assert not any(p and Path(p).resolve() == Path(project) for p in out["sys_path"])
    assert out["timm_equal"] and out["transformers_equal"] and out["features_equal"]
    assert out["timm_label_names"] == WNIDS
    assert out["timm_label_descriptions"] == dict(zip(WNIDS, NAMES))
    assert out["feature_channels"] == [64, 64, 128, 256, 512]
    labels = [p["label"] for p in out["pipeline"]]
    assert sorted(labels) == sorted(SHOWN)  # human names, both cranes told apart
    assert not any(re.fullmatch(r"n\d{8}|LABEL_\d+", label) for label in labels)


# ---------------------------------------------------------------- pushing (to a local Hub over HTTP)

@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Online, no token anywhere; tests add what they need."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return monkeypatch


def test_check_hub_ready_fails_fast(hub_env):
    with pytest.raises(ValueError, match="no Hugging Face token") as e:
        modeling.check_hub_ready("me/tiny")
    assert "\n" not in str(e.value)
    hub_env.setenv("HF_TOKEN", "hf_secretsecret")
    modeling.check_hub_ready("me/tiny")  # ready
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1") as e:
        modeling.check_hub_ready("me/tiny")
    assert "\n" not in str(e.value) and "hf_secret" not in str(e.value)
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        modeling.check_hub_ready("me/tiny/extra")


@pytest.fixture
def local_hub(hub_env, tmp_path):
    """tests/hub_server.py's local Hub, read and write side, with this interpreter's huggingface_hub pointed at it."""
    with LocalHub() as hub:
        point_this_process_at(hub, hub_env, tmp_path / "hf-home")
        yield hub


def test_push_uploads_the_folder_and_fails_cleanly(saved_tiny, local_hub, tmp_path):
    """To the local Hub: the repo created private as asked, the folder's files in one commit with its message (the
    weights as LFS through the storage host), the card naming the repo; a wrong token (401) and a refused commit
    (500) end in one line without the token, the folder and the repo as they were."""
    _, folder = saved_tiny
    hub, before = local_hub, folder_digest(folder)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        modeling.push_to_hub(folder, "me/tiny")

    url = modeling.push_to_hub(folder, "me/tiny", token=hub.token, private=True, commit_message="v1")
    repo = hub.repo("me/tiny")
    assert url == f"{hub.endpoint}/me/tiny" and repo.private
    assert [summary for _, summary in repo.log] == ["Initial commit", "v1"]
    assert sorted(repo.files) == [".eval_results/imagenet-1k.yaml", ".gitattributes", "README.md", "blocknet.py",
                                  "config.json", "model.safetensors", "modeling_blocknet.py"]
    assert {name: data for name, data in repo.files.items() if name != ".gitattributes"} == \
        {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert repo.lfs == {"model.safetensors"}  # through the LFS batch API and the storage host
    assert ("PUT", f"/upload/{repo.oid('model.safetensors')}") in hub.requests

    # a card saved before the repo id was known: the pushed copy names the repo, the local one is left as it is
    bare = modeling.save_pretrained(saved_tiny[0], tmp_path / "bare", label_names=WNIDS)
    local_card = (bare / "README.md").read_text()
    modeling.push_to_hub(bare, "me/other", token=hub.token)
    card = hub.repo("me/other").files["README.md"].decode()
    assert 'timm.create_model("hf-hub:me/other"' in card and "OWNER/NAME" not in card
    assert card == local_card.replace("OWNER/NAME", "me/other") and (bare / "README.md").read_text() == local_card

    head = repo.commit
    with pytest.raises(OSError, match=r"push of .* to 'me/tiny' failed \(HfHubHTTPError: .*'401 Unauthorized'") as e:
        modeling.push_to_hub(bare, "me/tiny", token="hf_wrongsecret")
    assert "\n" not in str(e.value) and "hf_wrongsecret" not in str(e.value) and "retry with" in str(e.value)
    assert "the Hub says: Invalid credentials in Authorization header" in str(e.value)  # its reason, kept
    hub.refuse["commit"] = 500
    with pytest.raises(OSError, match=r"push of .* to 'me/tiny' failed \(HfHubHTTPError: .*'500 Internal") as e:
        modeling.push_to_hub(bare, "me/tiny", token=hub.token)
    assert "\n" not in str(e.value) and hub.token not in str(e.value)
    assert repo.commit == head and folder_digest(folder) == before
    assert not hub.unhandled


def test_push_refreshes_remote_code_an_earlier_version_wrote(saved_tiny, local_hub, tmp_path, capsys):
    """The uploaded (and local) modeling_blocknet.py and auto_map become the installed project's, one line says
    so, weights and card stay; with weights the installed code no longer builds, the saved code goes up as it is."""
    _, folder = saved_tiny
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    wrapper, config_path = old / "modeling_blocknet.py", old / "config.json"
    old_text = wrapper.read_text().replace("    config_class = TimmWrapperConfig\n", "")
    wrapper.write_text(old_text)
    config = json.loads(config_path.read_text())
    config["auto_map"].pop("AutoBackbone")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    before = folder_digest(old)
    modeling.push_to_hub(old, "me/old", token=local_hub.token)
    assert capsys.readouterr().out.splitlines() == [
        f"{old}: rewrote modeling_blocknet.py, config.json from the installed imagenet-trainer (the code transformers' "
        f"trust_remote_code loads); weights and card unchanged"]
    uploaded = local_hub.repo("me/old").files
    assert uploaded["modeling_blocknet.py"] == (folder / "modeling_blocknet.py").read_bytes()
    assert json.loads(uploaded["config.json"]) == json.loads((folder / "config.json").read_text())
    after = folder_digest(old)
    assert sorted(k for k in before if before[k] != after[k]) == ["config.json", "modeling_blocknet.py"]

    state = safetensors.torch.load_file(old / "model.safetensors")
    safetensors.torch.save_file({k: v for k, v in state.items() if k != "fc.bias"}, old / "model.safetensors")
    wrapper.write_text(old_text)
    modeling.push_to_hub(old, "me/old", token=local_hub.token)
    line, = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{old}: remote code uploaded as saved: the installed 'blocknet_tiny' no longer fits "
                           f"the saved weights (keys or shapes differ: fc.bias)"), line
    assert wrapper.read_text() == old_text == local_hub.repo("me/old").files["modeling_blocknet.py"].decode()
    assert not local_hub.unhandled


def test_load_of_an_unregistered_architecture_says_what_to_install(saved_tiny, tmp_path):
    _, folder = saved_tiny
    copy_dir = tmp_path / "export"
    copy_dir.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (copy_dir / p.name).write_bytes(p.read_bytes())
    config = json.loads((copy_dir / "config.json").read_text())
    (copy_dir / "config.json").write_text(json.dumps({**config, "architecture": "mynet_unregistered"}))
    with pytest.raises(ValueError, match=r"'mynet_unregistered' .* is not registered with timm: install the package "
                                         r".*pip install -e \..*\(blocknet.py\).*trust_remote_code=True") as e:
        modeling.load_model(copy_dir)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("full", [True, False], ids=["full-ilsvrc", "subset"])
def test_card_of_a_preprocess_dataset_names_ilsvrc_only_when_full(saved_tiny, tmp_path, full):
    """train.py passes its --dataset folder; preprocess.py's source.json there says what the images are."""
    model, _ = saved_tiny
    data = tmp_path / "imagenet"
    data.mkdir()
    (data / "source.json").write_text(json.dumps({
        "layout": "ilsvrc-kaggle", "name": "ILSVRC-2012", "ilsvrc2012_full": full, "num_classes": 1000 if full else 4,
        "counts": {"train": 1281167, "validation": 50000}, "val_fraction": None, "split_seed": None}))
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, label_descriptions=NAMES, model_card={
        "dataset": str(data), "results": {"top1": 60.0, "top5": 80.0, "split": "validation", "n": 50000}})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("ILSVRC-2012", 60.0),
                                                                                   ("ILSVRC-2012", 80.0)]
    assert card.data.datasets == (["ILSVRC/imagenet-1k"] if full else None)
    assert (folder / ".eval_results" / "imagenet-1k.yaml").exists() == full
    assert ("(the full ILSVRC-2012)" in card.text) == full and "1,281,167 train" in card.text


def test_fine_tuning_a_head_for_as_many_other_classes_says_so(tmp_path):
    """train.py --pretrained keeps a head whose class count is the dataset's (timm does, silently): where its classes
    are another order of the dataset's, or other classes, class i starts from a row that learnt another class."""
    import train

    start = tmp_path / "start"
    modeling.save_pretrained(modeling.create_model("blocknet_tiny", num_classes=4), start,
                             label_names=["n01", "n02", "n03", "n04"], label_descriptions=["w", "x", "y", "z"])
    cfg = train.TrainConfig(model=f"local-dir:{start}", dataset="unused", pretrained=True)

    def said(label_names):
        lines = []
        train.build_model(cfg, label_names, print_fn=lines.append)
        return lines

    assert said(["n01", "n02", "n03", "n04"]) == said(["w", "x", "y", "z"]) == []  # by id or by human name
    assert said(["n04", "n03", "n02", "n01"]) == [
        f"--model local-dir:{start}: the pretrained head has the dataset's classes in another index order (['n01', "
        "'n02', 'n03']... against ['n04', 'n03', 'n02']...): kept, each class starts from another's weights; "
        "re-export it in the dataset's order, or preprocess with the same class order"]
    assert said(["cat", "dog", "emu", "fox"]) == [
        f"--model local-dir:{start}: the pretrained 4-class head is kept, though its classes are not the dataset's "
        "(['n01', 'n02', 'n03']... against ['cat', 'dog', 'emu']...): each class starts from another's weights"]

    # 1000 classes: timm takes the count for ImageNet-1k's and builds pretrained_cfg from the config's root
    # label_names, which are human names there; the ids the export was saved with are what is compared
    ids, names = [f"c{i:04d}" for i in range(1000)], [f"thing {i}" for i in range(1000)]
    modeling.save_pretrained(modeling.create_model("blocknet_tiny", num_classes=1000), start, label_names=ids,
                             label_descriptions=names)
    assert said(ids) == said(names) == []
    assert "another index order" in said(ids[::-1])[0]


def test_the_cards_epochs_are_of_the_schedule_max_train_steps_cut(saved_tiny, tmp_path):
    """train.py with --max_train_steps trains fewer epochs than --epochs: the card's Epochs line counts against the
    schedule the run had, and says what cut it; a run that ended at its --epochs says neither."""
    model, _ = saved_tiny
    recipe = {"model": "blocknet_tiny", "epochs": 90, "max_train_steps": 9}

    def epochs_line(**card) -> str:
        folder = modeling.save_pretrained(model, tmp_path / "m", label_names=WNIDS, model_card={"recipe": recipe,
                                                                                               **card})
        return next(line for line in (folder / "README.md").read_text().splitlines() if "**Epochs:**" in line)

    assert epochs_line(epochs=2.0, scheduled_epochs=3.0) == (
        "- **Epochs:** 2 of 3 (--max_train_steps 9 of --epochs 90) (these weights are from the epoch with the best "
        "validation top-1)")
    assert epochs_line(epochs=3.0, scheduled_epochs=3.0) == "- **Epochs:** 3 (--max_train_steps 9 of --epochs 90)"
    recipe = {"model": "blocknet_tiny", "epochs": 4, "max_train_steps": 0}
    assert epochs_line(epochs=4.0, scheduled_epochs=4.0) == "- **Epochs:** 4"
