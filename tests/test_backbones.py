"""Exports as transformers backbones: the export's weights and BatchNorm statistics, exactly, through
modeling.timm_backbone / load_backbone_weights (TimmBackbone, UperNet, DETR) and through the export's own remote
code (auto_map's AutoBackbone) in an interpreter that cannot import this project; timm families whose features_only
model is a class of their own (EfficientNet, MobileNetV3, HRNet) through the same routes; a one-channel export through
transformers' pipelines. Also pins the transformers behaviour the README blames, so the README is rewritten when
transformers changes it."""
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.layers import BatchNormAct2d
from timm.layers import freeze_batch_norm_2d as freeze_norms
from test_modeling import DOC_FAMILY, PHOTO, docstring_family_source, restored_registry
from torchvision.models.detection import FasterRCNN
from transformers import TimmBackbone, TimmBackboneConfig

import modeling
from modeling.backbone import TimmFPN, reference_features, restore_norm_activations
from modeling.refresh_code import refresh_remote_code

LABELS = ["n01440764", "n02012849", "n02085620", "n03126707"]
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def registry_of_its_own():
    """A trust_remote_code load registers the export's copy of the family with timm for the rest of the process: a
    test's loads stay its own, and a later test's timm.create_model builds what ``import modeling`` registered."""
    with restored_registry():
        yield


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics far from the 0/1 a reset leaves, so a reset cannot pass unnoticed."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module", params=["blocknet_tiny", "resnet18"])
def export(request, tmp_path_factory):
    """(folder, the model saved there): one of our designs (remote code) and one of timm's (none)."""
    return saved_export(request.param, tmp_path_factory.mktemp("export") / request.param)


def saved_export(arch: str, folder, **model_args):
    """(folder, the model saved there): `arch` with 4 classes, trained-looking statistics, at 64 px."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model(arch, num_classes=4, **model_args))
    folder = modeling.save_pretrained(model, folder, label_names=LABELS, pretrained_cfg={"input_size": (3, 64, 64)})
    return folder, model


def expected_maps(model, indices=(1, 2, 3, 4)) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(X, indices=list(indices), intermediates_only=True)


def batchnorm_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_timm_backbone_has_the_exports_weights_and_statistics(export):
    folder, model = export
    backbone = modeling.timm_backbone(folder)
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    ours, theirs = backbone._backbone.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(batchnorm_buffers(backbone)) >= 8
    with torch.no_grad():
        maps = backbone(X).feature_maps
    assert backbone.channels == [m.shape[1] for m in maps]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected_maps(model)))
    # every tap, the stem's too: transformers keys them by feature_info's "stages.0", BlockNet's FeatureListNet by
    # "stages_0" (an IndexError, and every later call returned no maps)
    with torch.no_grad():
        hidden = backbone(X, output_hidden_states=True).hidden_states
        again = backbone(X).feature_maps
    assert len(hidden) == len(model.feature_info)
    assert all(torch.equal(a, b) for a, b in zip(hidden, expected_maps(model, range(len(hidden)))))
    assert again is not None and all(torch.equal(a, b) for a, b in zip(again, maps))


def test_transformers_resets_the_statistics_it_loads(export):
    """The upstream fault README section "Use it as a backbone" names: weights loaded, BatchNorm statistics 0/1."""
    folder, model = export
    upstream = TimmBackbone.from_pretrained(f"local-dir:{folder}", out_indices=(1, 2, 3, 4))
    variances = [v for k, v in batchnorm_buffers(upstream).items() if k.endswith("running_var")]
    assert variances and all(torch.equal(v, torch.ones_like(v)) for v in variances)
    conv = next(v for k, v in upstream._backbone.state_dict().items() if k.endswith("weight") and v.ndim == 4)
    assert torch.equal(conv, next(v for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim == 4))


def test_output_stride_16_backbone(export):
    folder, model = export
    backbone = modeling.timm_backbone(folder, output_stride=16)
    with torch.no_grad():
        maps = backbone(X).feature_maps
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4]  # the last stage dilated, not strided
    assert torch.equal(maps[0], expected_maps(model)[0])


def test_upernet_and_detr_get_the_exports_backbone(export):
    """The config routes build a random backbone (pinned here); load_backbone_weights puts the export's in."""
    folder, model = export
    name = modeling.timm_name(folder)
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=TimmBackboneConfig(backbone=name, out_indices=(1, 2, 3, 4)), hidden_size=16,
        auxiliary_in_channels=model.feature_info[3]["num_chs"], num_labels=3)).eval()
    detr = transformers.DetrForObjectDetection(transformers.DetrConfig(
        use_timm_backbone=True, backbone=name, use_pretrained_backbone=True, encoder_layers=1, decoder_layers=1,
        d_model=16, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        num_queries=4, num_labels=3)).eval()
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        before = upernet.backbone(X).feature_maps[-1]
        assert not torch.allclose(before, expected_maps(model)[-1], atol=1e-3)  # random, whatever the config says
        assert modeling.load_backbone_weights(upernet, folder) == ["backbone._backbone"]
        assert all(torch.equal(a, b) for a, b in zip(upernet.backbone(X).feature_maps, expected_maps(model)))
        assert modeling.load_backbone_weights(detr, folder) == ["model.backbone.model"]
        detr_maps = [m for m, _ in detr.model.backbone(X, mask)]  # DETR's frozen BatchNorm: rsqrt(var + eps)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(detr_maps, expected_maps(model)))
    assert upernet(pixel_values=X).logits.shape == (1, 3, 64, 64)


def test_a_saved_upernet_or_detr_reloads_once_the_export_is_gone(export, tmp_path):
    """README section 8's route, saved with transformers' save_pretrained: from_pretrained gives the same outputs
    after the export folder moved (runs/ cleaned, the model copied to another machine). The config.json names the
    architecture, which timm knows wherever `import modeling` runs, and the checkpoint holds every backbone weight."""
    folder, model = export
    copied = Path(shutil.copytree(folder, tmp_path / "export"))
    name = modeling.timm_name(copied)
    built = {transformers.UperNetForSemanticSegmentation: transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=TimmBackboneConfig(backbone=name, out_indices=(1, 2, 3, 4)),
                                   hidden_size=16, auxiliary_in_channels=model.feature_info[3]["num_chs"],
                                   num_labels=3)), transformers.DetrForObjectDetection: small_detr(name)}
    mask = {transformers.DetrForObjectDetection: {"pixel_mask": torch.ones(1, 64, 64, dtype=torch.long)}}
    outputs = {}
    for cls, downstream in built.items():
        modeling.load_backbone_weights(downstream, copied)
        with torch.no_grad():
            outputs[cls] = downstream.eval()(pixel_values=X, **mask.get(cls, {})).logits
        downstream.save_pretrained(tmp_path / cls.__name__)
    shutil.move(copied, tmp_path / "moved")
    for cls, logits in outputs.items():
        config = json.loads((tmp_path / cls.__name__ / "config.json").read_text())
        assert config["backbone_config"]["backbone"] == name, cls.__name__
        with torch.no_grad():
            again = cls.from_pretrained(tmp_path / cls.__name__).eval()(pixel_values=X, **mask.get(cls, {})).logits
        assert torch.allclose(again, logits, rtol=0, atol=1e-6), cls.__name__  # float rounding: ~1e-8
    assert name == model.pretrained_cfg["architecture"]


def test_a_reloaded_detr_gets_its_norm_activations_back_with_the_fine_tuned_values(tmp_path):
    """DETR's build swaps timm's BatchNormAct2d (EfficientNet, MobileNetV3) for its frozen norm without the
    activation, at from_pretrained as at the first build: load_backbone_weights put it back then;
    reload_norm_activations puts it back after the reload, with no export, keeping the values the checkpoint holds
    (a fine-tune's, here a changed norm)."""
    folder, _ = saved_export("efficientnet_b0", tmp_path / "export")
    name = modeling.timm_name(folder)
    detr = small_detr(name)
    modeling.load_backbone_weights(detr, folder)
    norm = next(m for m in detr.model.backbone.modules() if type(m).__name__ == "FrozenBatchNormAct2d")
    norm.running_mean += 0.5  # fine-tuned: the export's values no longer
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        logits = detr(pixel_values=X, pixel_mask=mask).logits
    detr.save_pretrained(tmp_path / "detr")
    shutil.move(folder, tmp_path / "moved")
    again = transformers.DetrForObjectDetection.from_pretrained(tmp_path / "detr").eval()
    with torch.no_grad():
        assert not torch.allclose(again(pixel_values=X, pixel_mask=mask).logits, logits, atol=1e-3)  # SiLU dropped
        replaced = modeling.reload_norm_activations(again)  # the architecture its config names
        assert replaced and all(".bn" in r for r in replaced)
        assert torch.allclose(again(pixel_values=X, pixel_mask=mask).logits, logits, rtol=0, atol=1e-6)
    assert modeling.reload_norm_activations(again, name) == []  # put back once


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the export's copy, imported here
def test_the_exports_own_backbone_class_names_the_architecture_in_its_config(tmp_path):
    """auto_map's <Class>Backbone: a UperNet built on its config and saved reloads once the export moved."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("blocknet_tiny", num_classes=4))
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    backbone = transformers.dynamic_module_utils.get_class_from_dynamic_module(
        config.auto_map["AutoBackbone"], folder).from_pretrained(folder, out_indices=(1, 2, 3, 4))
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=backbone.config, hidden_size=16, auxiliary_in_channels=64, num_labels=3)).eval()
    upernet.backbone.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        logits = upernet(pixel_values=X).logits
        assert all(torch.equal(a, b) for a, b in zip(upernet.backbone(X).feature_maps, expected_maps(model)))
    upernet.save_pretrained(tmp_path / "upernet")
    shutil.move(folder, tmp_path / "moved")
    with torch.no_grad():
        again = transformers.UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet").eval()(
            pixel_values=X).logits
    assert torch.allclose(again, logits, rtol=0, atol=1e-6)  # float rounding of another build: ~1e-8
    assert backbone.config.backbone == "blocknet_tiny"
    with torch.no_grad():  # the export's class keys its hidden layers by BlockNet's FeatureListNet names
        hidden = backbone(X, output_hidden_states=True).hidden_states
    assert len(hidden) == len(model.feature_info) and torch.equal(hidden[-1], expected_maps(model)[-1])
    reloaded = transformers.UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet").eval()
    modeling.name_hidden_layers(reloaded)  # transformers' own TimmBackbone, rebuilt by from_pretrained
    with torch.no_grad():
        assert reloaded(pixel_values=X, output_hidden_states=True).logits.shape == logits.shape


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the export's copy, imported here
def test_a_dilated_export_is_built_at_its_output_stride(tmp_path):
    """An export saved with output_stride=8 (in its model_args): timm_backbone and the export's own AutoBackbone
    class build it at 8, with its maps, or at a stride asked for. A config names the architecture without
    model_args, so a UperNet built without output_stride=8 is warned of in one line (another stride is a choice:
    the weights fit), and with it gets the export's maps."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("blocknet_tiny", num_classes=4, output_stride=8))
    folder = modeling.save_pretrained(model, tmp_path / "os8", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    remote = transformers.dynamic_module_utils.get_class_from_dynamic_module(config.auto_map["AutoBackbone"], folder)

    def upernet(**stride):
        config = TimmBackboneConfig(backbone=modeling.timm_name(folder), out_indices=(1, 2, 3, 4), **stride)
        return transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
            backbone_config=config, hidden_size=16, auxiliary_in_channels=64, num_labels=3)).eval()

    with pytest.warns(UserWarning, match=r"saved with output_stride=8 \(maps at strides \[4, 8, 8, 8\]\), "
                                         r"UperNetForSemanticSegmentation.backbone._backbone gives strides "
                                         r"\[4, 8, 16, 32\]; for the export's maps build it with output_stride=8") as w:
        assert modeling.load_backbone_weights(upernet(), folder) == ["backbone._backbone"]
    assert "\n" not in str(w[0].message)
    dilated = upernet(output_stride=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export's stride: no warning
        modeling.load_backbone_weights(dilated, folder)
        strided = modeling.timm_backbone(folder, output_stride=16)  # asked for: built so, without a warning
    with torch.no_grad():
        assert [m.shape[-1] for m in strided(X).feature_maps] == [16, 8, 4, 4]  # 64 px input: strides 4, 8, 16, 16
    with torch.no_grad():
        for route, maps in {"timm_backbone": modeling.timm_backbone(folder)(X).feature_maps,
                            "auto_map AutoBackbone": remote.from_pretrained(folder)(X).feature_maps,
                            "UperNet": dilated.backbone(X).feature_maps}.items():
            assert all(torch.equal(a, b) for a, b in zip(maps, expected_maps(model))) and len(maps) == 4, route


def test_an_export_with_model_args_no_config_carries_is_named_by_its_folder(tmp_path):
    """A ResNet built with act_layer="silu" has the weights of timm's resnet18 and computes otherwise: its
    architecture's name would load them without a word and give other maps. timm_name names its folder instead, and
    warns that a model saved with it needs the folder there."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("resnet18", num_classes=4, act_layer="silu"))
    folder = modeling.save_pretrained(model, tmp_path / "silu", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    with pytest.warns(UserWarning, match=r"built with model_args act_layer, which no transformers config carries: "
                                         r"backbone= names its folder") as record:
        name = modeling.timm_name(folder)
    assert name == f"local-dir:{folder.resolve()}" and "\n" not in str(record[0].message)
    backbone = TimmBackbone(TimmBackboneConfig(backbone=name, out_indices=(1, 2, 3, 4)))
    modeling.load_backbone_weights(backbone, folder)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(backbone.eval()(X).feature_maps, expected_maps(model)))


def test_detr_dc5_dilates_the_last_stage(export):
    """DetrConfig(dilation=True) asks timm for output_stride=16: BlockNet takes it (DETR-DC5)."""
    folder, model = export
    detr = transformers.DetrForObjectDetection(transformers.DetrConfig(
        use_timm_backbone=True, backbone=modeling.timm_name(folder), dilation=True, encoder_layers=1,
        decoder_layers=1, d_model=16, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
        decoder_ffn_dim=16, num_queries=4, num_labels=3)).eval()
    modeling.load_backbone_weights(detr, folder)
    with torch.no_grad():
        maps = [m for m, _ in detr.model.backbone(X, torch.ones(1, 64, 64, dtype=torch.long))]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4]
    assert torch.allclose(maps[0], expected_maps(model)[0], atol=1e-5)


def test_load_backbone_weights_refuses_what_does_not_fit(export, tmp_path):
    folder, _ = export
    with pytest.raises(ValueError, match="holds no timm backbone") as e:
        modeling.load_backbone_weights(torch.nn.Linear(2, 2), folder)
    assert "\n" not in str(e.value)
    other = modeling.save_pretrained(modeling.create_model("blocknet_mobile", num_classes=4), tmp_path / "other",
                                     label_names=LABELS)
    with pytest.raises(ValueError, match="does not fit"):
        modeling.load_backbone_weights(modeling.timm_backbone(folder), other)


def test_hidden_states_through_transformers_classifier(export):
    """transformers' output_hidden_states calls forward_intermediates: every feature_info map, the export's."""
    folder, model = export
    classifier = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = classifier(pixel_values=X, output_hidden_states=True).hidden_states
    assert len(hidden) == len(model.feature_info)
    assert all(torch.equal(a, b) for a, b in zip(hidden[1:], expected_maps(model)))


CLEAN = r"""
import importlib.util, json, sys, torch
assert importlib.util.find_spec("modeling") is None
from safetensors.torch import load_file, save_file
from transformers import AutoBackbone, AutoConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module
folder, tensors, out = sys.argv[1:]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
cls = get_class_from_dynamic_module(config.auto_map["AutoBackbone"], folder)
backbone = cls.from_pretrained(folder, out_indices=(1, 2, 3, 4))
with torch.no_grad():
    maps = backbone(load_file(tensors)["x"]).feature_maps
save_file({f"map{i}": m.contiguous() for i, m in enumerate(maps)} | {
    k: v.contiguous() for k, v in backbone._backbone.state_dict().items() if k.endswith("running_var")}, out)
try:
    AutoBackbone.from_pretrained(folder, trust_remote_code=True)
    upstream = "loaded"
except Exception as e:
    upstream = type(e).__name__
print("RESULT " + json.dumps({"class": cls.__name__, "upstream": upstream}))
"""


def test_auto_backbone_entry_of_the_remote_code_in_a_clean_interpreter(export, tmp_path):
    folder, model = export
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    if model.pretrained_cfg["architecture"] == "resnet18":
        assert not auto_map  # timm ships it: transformers' own TimmBackbone route, no remote code
        return
    assert auto_map["AutoBackbone"] == "modeling_blocknet.BlockNetBackbone"
    save_file({"x": X}, tmp_path / "x.safetensors")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-I", "-c", CLEAN, str(folder), str(tmp_path / "x.safetensors"),
                           str(tmp_path / "out.safetensors")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["class"] == "BlockNetBackbone"
    assert result["upstream"] == "HFValidationError"  # AutoBackbone.from_pretrained(local folder): transformers' fault
    out = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(out[f"map{i}"], m) for i, m in enumerate(expected_maps(model)))
    saved_vars = {k: v for k, v in model.state_dict().items() if k.endswith("running_var")}
    assert len([k for k in out if k.endswith("running_var")]) >= 8
    assert not any(torch.equal(v, torch.ones_like(v)) for k, v in out.items() if k.endswith("running_var"))
    assert sorted(v.sum().item() for k, v in out.items() if k.endswith("running_var")) == sorted(
        v.sum().item() for k, v in saved_vars.items() if not k.startswith("head"))


@pytest.mark.filterwarnings("ignore:Overwriting blocknet_:UserWarning")  # the export's copy, imported here
def test_auto_backbone_class_takes_transformers_arguments_and_refuses_others(tmp_path):
    """The export's <Class>Backbone.from_pretrained does what each argument asks (out_features by feature_info's
    module names, a TimmBackboneConfig as config, freeze_batch_norm_2d) or says it cannot: nothing is dropped."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("blocknet_tiny", num_classes=4))
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    cls = transformers.dynamic_module_utils.get_class_from_dynamic_module(config.auto_map["AutoBackbone"], folder)
    names = [tap["module"] for tap in model.feature_info]
    maps = expected_maps(model, range(len(names)))

    def check(backbone, indices, frozen=False):
        with torch.no_grad():
            got = backbone(X).feature_maps
        assert backbone.out_indices == list(indices) and backbone.out_features == [names[i] for i in indices]
        assert all(torch.allclose(a, maps[i], atol=1e-5) for a, i in zip(got, indices)) and len(got) == len(indices)
        kinds = {type(m).__name__ for m in backbone.modules() if "BatchNorm" in type(m).__name__}
        assert kinds == ({"FrozenBatchNorm2d"} if frozen else {"BatchNorm2d"}), kinds

    check(cls.from_pretrained(folder, out_features=["stages.1"]), [2])
    check(cls.from_pretrained(folder, config=TimmBackboneConfig(out_indices=(3, 4), freeze_batch_norm_2d=True)),
          [3, 4], frozen=True)
    check(cls.from_pretrained(folder, freeze_batch_norm_2d=True, out_indices=(1,)), [1], frozen=True)
    # what AutoBackbone.from_pretrained passes along itself
    check(cls.from_pretrained(folder, config=config, trust_remote_code=True, _from_auto=True, force_download=False,
                              local_files_only=True, proxies=None, subfolder="", revision=None, cache_dir=None,
                              adapter_kwargs=None, out_indices=(1, 2)), [1, 2])
    with pytest.raises(ValueError, match=r"out_features \['layer9'\]: this network's feature maps are \['stem.2'"):
        cls.from_pretrained(folder, out_features=["layer9"])
    with pytest.raises(ValueError, match="name different maps"):
        cls.from_pretrained(folder, out_features=["stages.1"], out_indices=(1,))
    for kwargs in ({"num_labels": 3}, {"config": transformers.ResNetConfig()}):
        with pytest.raises(TypeError, match=r"from_pretrained: unexpected .*; it takes out_indices") as e:
            cls.from_pretrained(folder, **kwargs)
        assert "\n" not in str(e.value)


def run_clean(script: str, args: list, tmp_path: Path) -> dict:
    """``script`` in an interpreter that cannot import this project (``-I``, no PYTHON* variables, another working
    directory), offline; its RESULT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-I", "-c", script, *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


HEADLESS = r"""
import importlib.util, json, sys, torch
assert importlib.util.find_spec("modeling") is None
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, pipeline
folder, tensors, out = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    hidden = model(pixel_values=load_file(tensors)["x"]).last_hidden_state
save_file({"hidden": hidden.contiguous()}, out)
extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
shape = list(torch.tensor(extractor(Image.new("RGB", (80, 60), "gray"))).shape)
print("RESULT " + json.dumps({"class": type(model).__name__, "module": type(model).__module__, "shape": shape}))
"""


def test_auto_model_and_feature_extraction_pipeline_in_a_clean_interpreter(export, tmp_path):
    """transformers' headless route (AutoModel, pipeline("image-feature-extraction")) gives the export's feature map
    where nothing imports this project. For our designs only auto_map's TimmWrapperModel imports the file that
    registers the architecture (transformers' own builds it by name and finds none); an export written before that
    entry existed gets it from modeling.refresh_code."""
    folder, model = export
    folders = {"export": folder}
    remote = (folder / "modeling_blocknet.py").is_file()
    if remote:
        old = Path(shutil.copytree(folder, tmp_path / "old"))
        wrapper, config_path = old / "modeling_blocknet.py", old / "config.json"
        text = re.sub(r"^class TimmWrapperModel\(.*?\n\n\n", "", wrapper.read_text(), flags=re.M | re.S)
        assert "TimmWrapperModel(" not in text and "class BlockNetBackbone" in text
        wrapper.write_text(text)
        config = json.loads(config_path.read_text())
        del config["auto_map"]["AutoModel"]
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        assert refresh_remote_code(old) == ["modeling_blocknet.py", "config.json"]
        assert (old / "config.json").read_text() == (folder / "config.json").read_text()
        folders["refreshed"] = old
    save_file({"x": X}, tmp_path / "x.safetensors")
    pool_size = json.loads((folder / "config.json").read_text())["pretrained_cfg"]["pool_size"]
    with torch.no_grad():
        features = model.forward_features(X)
    for kind, path in folders.items():
        result = run_clean(HEADLESS, [path, tmp_path / "x.safetensors", tmp_path / f"{kind}.safetensors"], tmp_path)
        assert result["class"] == "TimmWrapperModel", (kind, result)
        assert result["module"].startswith("transformers_modules.") == remote, (kind, result)  # resnet18: theirs
        assert torch.equal(load_file(tmp_path / f"{kind}.safetensors")["hidden"], features), kind
        assert result["shape"] == [1, model.num_features, *pool_size], (kind, result)  # resized to input_size


def test_single_channel_export_loads_as_a_backbone(tmp_path):
    """An in_chans=1 (grayscale) export: config.json's input_size says 1 channel, as timm's save_config_for_hf writes
    it, the card counts its GMACs on such an input, and timm_backbone and the remote BlockNetBackbone build a
    1-channel network for its weights (TimmBackbone asks timm for num_channels, 3 unless told)."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("blocknet_tiny", num_classes=4, in_chans=1))
    folder = modeling.save_pretrained(model, tmp_path / "gray", label_names=LABELS)
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"] == [1, 64, 64]
    assert re.search(r"GMACs: \d", (folder / "README.md").read_text())  # model_stats ran on a 1-channel image
    x = X[:, :1]
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(modeling.timm_backbone(folder)(x).feature_maps, expected))
    save_file({"x": x}, tmp_path / "x.safetensors")
    result = run_clean(CLEAN, [folder, tmp_path / "x.safetensors", tmp_path / "out.safetensors"], tmp_path)
    assert result["class"] == "BlockNetBackbone"
    out = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(out[f"map{i}"], m) for i, m in enumerate(expected))


@pytest.mark.parametrize("name", ["blocknet_tiny", "resnet18"])
def test_one_channel_export_in_a_three_channel_config_is_told_num_channels(name, tmp_path):
    """TimmBackboneConfig and DetrConfig build a 3-channel stem unless told (num_channels): load_backbone_weights
    names num_channels=1 in one line (not the backbone= the config already has), and with it the maps are the
    export's."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model(name, num_classes=4, in_chans=1))
    folder = modeling.save_pretrained(model, tmp_path / "gray", label_names=LABELS,
                                      pretrained_cfg={"input_size": (1, 64, 64)})
    timm_name = modeling.timm_name(folder)
    builds = {"TimmBackbone": lambda **channels: TimmBackbone(TimmBackboneConfig(
        backbone=timm_name, out_indices=(1, 2, 3, 4), **channels)), "DETR": lambda **channels: small_detr(
        timm_name, **channels)}
    for route, build in builds.items():
        with pytest.raises(ValueError, match=r"reads 1-channel images, .* takes 3: build it with num_channels=1") as e:
            modeling.load_backbone_weights(build(), folder)
        assert "\n" not in str(e.value) and "backbone=" not in str(e.value), route
        assert len(modeling.load_backbone_weights(build(num_channels=1), folder)) == 1, route
    backbone = builds["TimmBackbone"](num_channels=1)
    modeling.load_backbone_weights(backbone, folder)
    x = X[:, :1]
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(backbone.eval()(x).feature_maps, expected))


@pytest.mark.filterwarnings("ignore:Overwriting (blocknet_|alexnet):UserWarning")  # the export's copy, imported here
@pytest.mark.parametrize("arch", ["convnext_atto", "resnet18", "blocknet_tiny", "alexnet"])
def test_default_taps_are_every_stage_after_the_stem(arch, tmp_path):
    """ResNet and BlockNet have a stem tap at stride 2 before their four stages; ConvNeXt and AlexNet have none (their
    first tap is at 4): timm_backbone, TimmFPN and the export's own AutoBackbone class take the taps at strides 4 to 32,
    the ones timm's features_only gives less any stem's, and the maps are the export's."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model(arch, num_classes=4))
    folder = modeling.save_pretrained(model, tmp_path / arch, label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 128, 128)})
    strides = [tap["reduction"] for tap in model.feature_info]
    taps = [i for i, stride in enumerate(strides) if stride >= 4]
    timm_default = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).feature_info
    assert [strides[i] for i in taps] == [s for s in timm_default.reduction() if s >= 4] == [4, 8, 16, 32]
    assert modeling.backbone.default_taps(modeling.timm_name(folder)) == tuple(taps)
    x = torch.randn(1, 3, 128, 128)
    fpn = modeling.backbone.TimmFPN(folder).eval()
    routes = {"timm_backbone": lambda: modeling.timm_backbone(folder)(x).feature_maps, "TimmFPN": lambda: fpn.body(x)}
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map")
    if auto_map:  # our families: the export's own class, for AutoBackbone
        remote = transformers.dynamic_module_utils.get_class_from_dynamic_module(auto_map["AutoBackbone"], folder)
        routes["auto_map AutoBackbone"] = lambda: remote.from_pretrained(folder)(x).feature_maps
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=taps, intermediates_only=True)
        for route, maps in routes.items():
            got = maps()
            assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, expected)), route
        assert list(fpn(x)) == ["0", "1", "2", "3", "pool"]


@pytest.mark.filterwarnings("ignore:Overwriting alexnet:UserWarning")  # the export's copy, imported here
def test_out_indices_past_the_last_tap_are_refused_in_one_line(tmp_path):
    """AlexNet has four feature_info taps (0-3): out_indices (2, 4) is a one-line ValueError naming out_indices and
    the range through timm_backbone, TimmFPN and the export's own AutoBackbone class (timm's own is a bare
    IndexError from deep inside its build); -1, the last tap, is taken."""
    folder = modeling.save_pretrained(modeling.create_model("alexnet", num_classes=4), tmp_path / "alexnet",
                                      label_names=LABELS, pretrained_cfg={"input_size": (3, 128, 128)})
    config = json.loads((folder / "config.json").read_text())
    remote = transformers.dynamic_module_utils.get_class_from_dynamic_module(config["auto_map"]["AutoBackbone"], folder)
    routes = {"timm_backbone": lambda taps: modeling.timm_backbone(folder, out_indices=taps),
              "TimmFPN": lambda taps: TimmFPN(folder, out_indices=taps),
              "auto_map AutoBackbone": lambda taps: remote.from_pretrained(folder, out_indices=taps)}
    for route, build in routes.items():
        with pytest.raises(ValueError, match=r"^out_indices \[2, 4\]: .*has 4 feature maps, so out_indices are 0 to 3 "
                                             r"\(or -4 to -1, from the last\)$") as e:
            build((2, 4))
        assert "\n" not in str(e.value), route
        build((-1,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_export_records_its_pool_size_and_stats(dtype, tmp_path):
    """save_pretrained of a bfloat16 or float16 model measures pool_size and counts the card's Model stats with an
    image of the model's dtype: config.json and the card say what the float32 export's say."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4)
    saved = {}
    for kind, cast in {"float32": model, "half": copy.deepcopy(model).to(dtype)}.items():
        folder = modeling.save_pretrained(cast, tmp_path / kind, label_names=LABELS,
                                          pretrained_cfg={"input_size": (3, 64, 64)})
        card = (folder / "README.md").read_text()
        stats = re.search(r"^- \*\*Model stats:\*\*\n((?:  - .*\n)+)", card, flags=re.M)
        pool_size = json.loads((folder / "config.json").read_text())["pretrained_cfg"].get("pool_size")
        saved[kind] = (pool_size, stats and stats.group(1))
    assert saved["float32"][0] == [2, 2] and "GMACs: " in saved["float32"][1]
    assert saved["half"] == saved["float32"]


def readme_backbone_blocks() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## 8. Use it as a backbone", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("block", [0, 1, 2], ids=["timm", "torchvision-detection", "transformers"])
def test_readme_backbone_routes_run_as_written(export, block):
    """README section 8's blocks, on the saved folder in place of runs/blocknet/final: the maps are the export's."""
    folder, model = export
    blocks = readme_backbone_blocks()
    assert len(blocks) == 3
    namespace = {}
    exec(compile(blocks[block].replace("runs/blocknet/final", str(folder)), f"README block {block}", "exec"),
         namespace)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        first = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]  # before any dilation
        if block == 0:
            backbone = namespace["backbone"]
            assert backbone.feature_info.reduction() == [4, 8, 16, 16]
            assert torch.equal(backbone(x)[0], first)
        elif block == 1:
            body = namespace["detector"].backbone.body
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
            assert torch.equal(namespace["TimmFPN"](folder).body.eval()(x)[0], first)
        else:
            assert torch.equal(namespace["backbone"](x).feature_maps[0], first)
            assert torch.equal(namespace["upernet"].eval().backbone(x).feature_maps[0], first)
            detr_first = namespace["detr"].eval().model.backbone(x, torch.ones(1, 224, 224, dtype=torch.long))[0][0]
            assert torch.allclose(detr_first, first, atol=1e-5)


def template_export(tmp_path, monkeypatch, edit=lambda source: source, **model_args):
    """(folder, the model saved there): section 6's template family (modeling/__init__.py's docstring: two taps, at
    strides 2 and 4) registered from a family file outside the package, as a user's is; ``edit`` changes its source,
    ``model_args`` its build."""
    (tmp_path / "mynet_taps.py").write_text(edit(docstring_family_source()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mynet_taps", raising=False)
    importlib.import_module("mynet_taps")
    return saved_export(DOC_FAMILY, tmp_path / "export", **model_args)


@pytest.mark.parametrize("block", [1, 2], ids=["torchvision-detection", "transformers"])
def test_readme_backbone_routes_run_for_a_family_with_two_taps(block, tmp_path, monkeypatch):
    """README section 8's FasterRCNN, UperNet and DETR blocks as written, on an export of section 6's template: one
    map by default (its tap at stride 4; the other is its stem's, at 2), where torchvision's default anchors (five
    maps) and DetrConfig(backbone=...)'s taps (1-4) do not fit. Each runs in eval mode on a 64 px image, on the
    export's maps."""
    folder, model = template_export(tmp_path, monkeypatch)
    namespace = {}
    exec(compile(readme_backbone_blocks()[block].replace("runs/blocknet/final", str(folder)), f"README block {block}",
                 "exec"), namespace)
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        expected = model.forward_intermediates(X, indices=[1], intermediates_only=True)[0]
        if block == 1:
            detector = namespace["detector"].eval()
            assert detector.rpn.anchor_generator.sizes == ((32,), (64,))  # 8 x the strides of "0" and "pool"
            assert list(detector.backbone(X)) == ["0", "pool"]
            found = detector([X[0]])[0]
            assert found["boxes"].shape == (len(found["scores"]), 4)
            assert torch.equal(namespace["TimmFPN"](folder).body.eval()(X)[0], expected)
        else:
            assert torch.equal(namespace["backbone"](X).feature_maps[0], expected)
            upernet, detr = namespace["upernet"].eval(), namespace["detr"].eval()
            assert upernet.auxiliary_head is None and torch.equal(upernet.backbone(X).feature_maps[0], expected)
            assert upernet(pixel_values=X).logits.shape == (1, 3, 64, 64)
            assert torch.allclose(detr.model.backbone(X, mask)[0][0], expected, atol=1e-5)
            assert detr(pixel_values=X, pixel_mask=mask).logits.shape == (1, 100, 4)  # 100 queries, 3 labels + none


# (family, its model_args, out_indices, the maps' strides, the maps roi_pool() pools)
OTHER_TAPS = {"template-both-taps": ("template", {}, (0, 1), [2, 4], ["0", "1"]),
              "template-dilated": ("template", {"output_stride": 2}, None, [2], ["0"]),  # the stem's tap left out
              "template-dilated-both-taps": ("template", {"output_stride": 2}, (0, 1), [2, 2], ["1"]),
              "blocknet-three-taps": ("blocknet_tiny", {}, (2, 3, 4), [8, 16, 32], ["0", "1", "2"]),
              "blocknet-gap": ("blocknet_tiny", {}, (1, 3), [4, 16], ["1"])}


@pytest.mark.parametrize("family, model_args, out_indices, strides, pooled", OTHER_TAPS.values(), ids=OTHER_TAPS)
def test_detectors_and_transformers_take_any_taps(family, model_args, out_indices, strides, pooled, tmp_path,
                                                  monkeypatch):
    """README section 8's FasterRCNN (TimmFPN's anchor_generator() and roi_pool()), UperNet and DETR
    (modeling.backbone_config) with out_indices: 2 or 3 maps, equal strides (the template dilated: both at 2; by
    default both routes take its stage's tap alone, as undilated) or a gap. FasterRCNN trains a step and detects in
    eval mode, UperNet (its auxiliary head reads the third map) and DETR run on the export's maps. roi_pool() gives
    torchvision's level mapper the maps it can tell apart, which it counts as strides doubling from the first: the
    deepest per stride, from the last down to a gap."""
    if family == "template":
        folder, model = template_export(tmp_path, monkeypatch, **model_args)
    else:
        folder, model = saved_export(family, tmp_path / family, **model_args)
    fpn = TimmFPN(folder, out_channels=16, out_indices=out_indices)
    config = modeling.backbone_config(folder, out_indices=out_indices)
    with torch.no_grad():
        expected = model.forward_intermediates(X, indices=list(config.out_indices), intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(fpn.body.eval()(X), expected))
    assert list(fpn.strides.values()) == [*strides, 2 * strides[-1]]
    detector = FasterRCNN(fpn, num_classes=3, min_size=64, max_size=64,
                          rpn_anchor_generator=fpn.anchor_generator(), box_roi_pool=fpn.roi_pool()).train()
    assert detector.roi_heads.box_roi_pool.featmap_names == pooled
    losses = detector([X[0]], [{"boxes": torch.tensor([[5.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in fpn.body.parameters())
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=config, use_auxiliary_head=len(config.out_indices) >= 3, hidden_size=16, num_labels=3))
    detr = transformers.DetrForObjectDetection(transformers.DetrConfig(backbone_config=config, **SMALL_DETR))
    assert modeling.load_backbone_weights(upernet, folder) == ["backbone._backbone"]
    assert modeling.load_backbone_weights(detr, folder) == ["model.backbone.model"]
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        found = detector.eval()([X[0]])[0]
        assert found["boxes"].shape == (len(found["scores"]), 4)
        maps = upernet.eval().backbone(X).feature_maps
        assert len(maps) == len(strides) and all(torch.equal(a, b) for a, b in zip(maps, expected))
        assert upernet(pixel_values=X).logits.shape == (1, 3, 64, 64)
        assert (upernet.auxiliary_head is not None) == (len(strides) >= 3)
        assert torch.allclose(detr.eval().model.backbone(X, mask)[-1][0], expected[-1], atol=1e-5)
        assert detr(pixel_values=X, pixel_mask=mask).logits.shape == (1, 4, 4)


def test_timm_fpn_takes_the_taps_an_exports_model_args_give(tmp_path):
    """A ViT saved with depth=4 has 4 taps, not the architecture's 12: TimmFPN's default taps and its range check
    are the export's own, as timm_backbone's and backbone_config's are."""
    folder, model = saved_export("vit_tiny_patch16_224", tmp_path / "vit", depth=4, img_size=64)
    fpn = TimmFPN(folder).eval()
    with torch.no_grad():
        maps = fpn(X)
    assert list(maps) == ["0", "1", "2", "3", "pool"] and list(fpn.strides.values()) == [16, 16, 16, 16, 32]
    assert list(modeling.backbone_config(folder).out_indices) == [0, 1, 2, 3]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fpn.body(X), expected_maps(model, (0, 1, 2, 3))))


def test_roi_pool_of_a_stride_not_a_power_of_two_is_refused_in_one_line(tmp_path, monkeypatch):
    """torchvision's MultiScaleRoIAlign reads each map's scale as a power of two: the template with a stride-3 stem
    (maps at 3 and 6) is refused in one line naming the family and what to pass instead; its anchors take any
    stride."""
    def stride_3(source):
        edited = source.replace("nn.Conv2d(in_chans, width, 3, 2, 1)", "nn.Conv2d(in_chans, width, 3, 3, 1)").replace(
            "reduction=2, module=", "reduction=3, module=").replace("reduction=2 * s,", "reduction=3 * s,")
        assert all(part in edited for part in ("3, 3, 1)", "reduction=3, module=", "reduction=3 * s,"))
        return edited

    folder, model = template_export(tmp_path, monkeypatch, edit=stride_3)
    assert [tap["reduction"] for tap in model.feature_info] == [3, 6]
    fpn = TimmFPN(folder)
    assert fpn.strides == {"0": 6, "pool": 12} and fpn.anchor_generator().sizes == ((48,), (96,))
    with pytest.raises(ValueError, match=rf"^TimmFPN of {re.escape(str(folder))} \({DOC_FAMILY}\): its maps are at "
                                         r"strides \[6\], and torchvision's MultiScaleRoIAlign pools power-of-two "
                                         r"strides only: pass out_indices whose last tap is at one, or a box_roi_pool "
                                         r"of your own$") as e:
        fpn.roi_pool()
    assert "\n" not in str(e.value)


# timm families whose features_only model is a class of their own, not timm's FeatureListNet: what TimmBackbone holds
# for them, so what load_backbone_weights must know as a feature extractor
OWN_FEATURE_CLASS = {"efficientnet_b0": "EfficientNetFeatures", "mobilenetv3_small_100": "MobileNetV3Features",
                     "hrnet_w18_small": "HighResolutionNetFeatures"}


@pytest.fixture(scope="module", params=sorted(OWN_FEATURE_CLASS))
def family_export(request, tmp_path_factory):
    """(folder, the model saved there) of a timm family with a feature class of its own."""
    return saved_export(request.param, tmp_path_factory.mktemp("family") / request.param)


# a DETR a CPU runs in milliseconds: one encoder and one decoder layer, 16-d, 4 queries
SMALL_DETR = dict(encoder_layers=1, decoder_layers=1, d_model=16, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=4, num_labels=3)


def small_detr(name: str, **config) -> transformers.DetrForObjectDetection:
    return transformers.DetrForObjectDetection(transformers.DetrConfig(
        use_timm_backbone=True, backbone=name, use_pretrained_backbone=False, **SMALL_DETR, **config)).eval()


def test_families_with_their_own_feature_class_load_as_backbones(family_export, tmp_path):
    """EfficientNet, MobileNetV3 and HRNet build features_only as EfficientNetFeatures, MobileNetV3Features and
    HighResolutionNetFeatures: timm_backbone, UperNet and DETR get the export's maps, as does timm's generic
    FeatureGetterNet of the family (feature_cls="getter"; timm builds no FeatureListNet of these three). DETR's
    frozen BatchNorm drops the activation of timm's BatchNormAct2d it replaces (EfficientNet, MobileNetV3):
    load_backbone_weights puts it back."""
    folder, model = family_export
    arch = model.pretrained_cfg["architecture"]
    name = modeling.timm_name(folder)
    backbone = modeling.timm_backbone(folder)
    assert type(backbone._backbone).__name__ == OWN_FEATURE_CLASS[arch]
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=TimmBackboneConfig(backbone=name, out_indices=(1, 2, 3, 4)), hidden_size=16,
        auxiliary_in_channels=model.feature_info[3]["num_chs"], num_labels=3)).eval()
    detr = small_detr(name)
    getter = timm.create_model(name, features_only=True, feature_cls="getter", out_indices=(1, 2, 3, 4)).eval()
    assert modeling.load_backbone_weights(upernet, folder) == ["backbone._backbone"]
    assert modeling.load_backbone_weights(detr, folder) == ["model.backbone.model"]
    assert modeling.load_backbone_weights(getter, folder) == [""]
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        expected = expected_maps(model)
        for route, maps in {"timm_backbone": backbone(X).feature_maps, "UperNet": upernet.backbone(X).feature_maps,
                            "FeatureGetterNet": getter(X)}.items():
            assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, expected)), route
        detr_maps = [m for m, _ in detr.model.backbone(X, mask)]
    # DETR's frozen BatchNorm computes rsqrt(var + eps): float rounding of HRNet's maps (values in the hundreds)
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() for a, b in zip(detr_maps, expected))
    # another width of MobileNetV3 (shapes differ), or another feature class
    other = modeling.save_pretrained(modeling.create_model("mobilenetv3_small_050", num_classes=4),
                                     tmp_path / "other", label_names=LABELS)
    with pytest.raises(ValueError, match="does not fit") as e:
        modeling.load_backbone_weights(backbone, other)
    assert "\n" not in str(e.value)


def test_family_feature_class_loads_strictly_and_refuses_in_one_line(family_export, tmp_path):
    """The family's own builder loads features_only non-strictly (it leaves the head out): a tensor the export lacks
    is refused, not left random. output_stride=16 dilates EfficientNet and MobileNetV3; HRNet has no dilation, and
    says so in one line instead of timm's bare AssertionError."""
    folder, model = family_export
    arch = model.pretrained_cfg["architecture"]
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if k.endswith("running_var"))  # a stem or first-stage norm: in every tap set
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    save_file({k: v for k, v in state.items() if k != dropped}, broken / "model.safetensors")
    with pytest.raises(ValueError, match=rf"model.safetensors lacks 1 of the tensors .*\({re.escape(dropped)}\)") as e:
        modeling.timm_backbone(broken)
    assert "\n" not in str(e.value)
    if arch.startswith("hrnet"):
        with pytest.raises(ValueError, match=r"cannot build its architecture with output_stride=16 \(no dilated") as e:
            modeling.timm_backbone(folder, output_stride=16)
        assert "\n" not in str(e.value)
        return
    backbone = modeling.timm_backbone(folder, output_stride=16)
    with torch.no_grad():
        maps = backbone(X).feature_maps
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4] and torch.equal(maps[0], expected_maps(model)[0])


def test_restored_norms_take_the_dtype_and_mode_of_the_layers_they_replace(tmp_path):
    """The layers that get their activation back are built from a float32 CPU reference in eval mode: in a DETR cast
    to bfloat16 (or moved to the GPU) before the load they take its dtype and device, in a training model its mode, so
    it runs and gives the maps of the model cast after the load; a trainable norm keeps its requires_grad.
    MobileNetV3: the smallest family with BatchNormAct2d (bfloat16 convolutions are slow on CPUs)."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("mobilenetv3_small_100", num_classes=4))
    folder = modeling.save_pretrained(model, tmp_path / "mobilenet", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    name = modeling.timm_name(folder)
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    cast = small_detr(name).to(torch.bfloat16).train()
    modeling.load_backbone_weights(cast, folder)
    backbone = cast.model.backbone.model
    assert {t.dtype for t in backbone.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    assert all(m.training for m in backbone.modules())
    after = small_detr(name)
    modeling.load_backbone_weights(after, folder)
    with torch.no_grad():
        maps = [m for m, _ in cast.eval().model.backbone(X.to(torch.bfloat16), mask)]
        expected = [m for m, _ in after.to(torch.bfloat16).model.backbone(X.to(torch.bfloat16), mask)]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    # a norm with parameters in the place of timm's (trainable: the reference's own layer goes in), frozen by its user
    features = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    reference = reference_features(folder, features)
    features.load_state_dict(reference.state_dict())
    norm = next(n for n, m in features.named_modules() if isinstance(m, BatchNormAct2d))
    parent, _, child = norm.rpartition(".")
    plain = torch.nn.BatchNorm2d(features.get_submodule(norm).num_features).requires_grad_(False)
    features.get_submodule(parent).add_module(child, plain)
    features.to(torch.bfloat16).train()
    assert restore_norm_activations(features, reference) == [norm]
    restored = features.get_submodule(norm)
    assert isinstance(restored, BatchNormAct2d) and restored.training
    assert [(p.dtype, p.requires_grad) for p in restored.parameters()] == [(torch.bfloat16, False)] * 2


def test_export_with_frozen_batchnorm_loads_as_a_backbone(family_export, tmp_path):
    """A model fine-tuned with frozen BatchNorms (timm's freeze_batch_norm_2d, as detection recipes do) saves no
    num_batches_tracked, a counter nothing computes from: the families with a feature class of their own load it
    strictly all the same, with the export's maps."""
    folder, model = family_export
    frozen = modeling.save_pretrained(freeze_norms(copy.deepcopy(model)), tmp_path / "frozen", label_names=LABELS,
                                      pretrained_cfg={"input_size": (3, 64, 64)})
    assert not any(k.endswith("num_batches_tracked") for k in load_file(frozen / "model.safetensors"))
    with torch.no_grad():  # timm_backbone: load_backbone_weights' route too; TimmFPN: exported_features alone
        expected = expected_maps(model)
        for route, maps in {"timm_backbone": modeling.timm_backbone(frozen)(X).feature_maps,
                            "TimmFPN": TimmFPN(frozen).eval().body(X)}.items():
            assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, expected)), route


def test_output_stride_the_family_cannot_build_is_named(tmp_path):
    """timm asserts what it cannot build: ResNet dilates to 8 or 16 but asserts on 4, which is no want of dilated
    stages; the refusal names the value and the strides the family takes."""
    folder = modeling.save_pretrained(modeling.create_model("resnet18", num_classes=4), tmp_path / "resnet18",
                                      label_names=LABELS, pretrained_cfg={"input_size": (3, 64, 64)})
    with pytest.raises(ValueError, match=r"with output_stride=4 \(it takes 8 or 16\); leave output_stride out") as e:
        modeling.timm_backbone(folder, output_stride=4)
    assert "\n" not in str(e.value) and "no dilated" not in str(e.value)


# the card's code blocks that run without this project (a block that imports modeling needs it installed:
# tests/test_sharing.py), then transformers' pipelines on a photo, in a clean interpreter
ONE_CHANNEL = r"""
import contextlib, importlib.util, io, json, re, sys, torch
assert importlib.util.find_spec("modeling") is None
from PIL import Image
from transformers import AutoImageProcessor, pipeline
folder, photo = sys.argv[1:]
card = open(f"{folder}/README.md").read().replace('"hf-hub:OWNER/NAME"', repr(f"local-dir:{folder}")).replace(
    '"OWNER/NAME"', repr(folder)).replace('"photo.jpg"', repr(photo))
blocks = [b for b in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "import modeling" not in b]
for block in blocks:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "<card block>", "exec"), {"__name__": "__main__"})
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
scores = {mode: {r["label"]: r["score"] for r in classifier(Image.open(photo).convert(mode), top_k=4)}
          for mode in ("RGB", "L")}
extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
shape = list(torch.tensor(extractor(Image.open(photo))).shape)
own = AutoImageProcessor.from_pretrained(folder)  # no trust_remote_code: transformers' own
channels = own(Image.open(photo).convert("RGB"), return_tensors="pt")["pixel_values"].shape[1]
print("RESULT " + json.dumps({"processor": type(classifier.image_processor).__name__, "scores": scores,
                              "shape": shape, "own": [type(own).__name__, channels], "blocks": len(blocks)}))
"""


@pytest.mark.parametrize("name", ["blocknet_tiny", "resnet18"])
def test_one_channel_export_classifies_photos_through_transformers_pipelines(name, tmp_path):
    """An in_chans=1 export, ours or timm's: transformers' pipelines open every image as RGB and its
    TimmWrapperImageProcessor keeps three channels (pinned here: when transformers learns one channel, the export's
    processor can go); the export's modeling_one_channel.py, named in auto_map, makes each image PIL's "L" first, so
    pipeline(..., trust_remote_code=True) gives what timm's own transforms of the gray photo give. The card opens
    photos as "L" and says trust_remote_code=True for the pipeline; its blocks run as written."""
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4, in_chans=1).eval()
    folder = modeling.save_pretrained(model, tmp_path / "gray", label_names=LABELS,
                                      pretrained_cfg={"input_size": (1, 64, 64)})
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoImageProcessor"] == "modeling_one_channel.TimmWrapperOneChannelImageProcessor"
    card = (folder / "README.md").read_text()
    assert 'Image.open("photo.jpg").convert("L")' in card and "modeling_one_channel.py" in card
    assert 'pipeline("image-classification", model="OWNER/NAME", trust_remote_code=True)' in card
    result = run_clean(ONE_CHANNEL, [folder, PHOTO], tmp_path)
    assert result["blocks"] == (4 if name == "resnet18" else 1)  # ours: its timm blocks import modeling
    assert result["processor"] == "TimmWrapperOneChannelImageProcessor"
    assert result["own"] == ["TimmWrapperImageProcessor", 3]
    loaded = modeling.load_model(folder)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=loaded))
    with torch.no_grad():
        probabilities = loaded(transform(Image.open(PHOTO).convert("L")).unsqueeze(0)).softmax(-1)[0]
        features = loaded.forward_features(transform(Image.open(PHOTO).convert("L")).unsqueeze(0))
    expected = dict(zip(LABELS, probabilities.tolist()))
    for mode, scores in result["scores"].items():
        assert scores == pytest.approx(expected, abs=1e-5), mode
    assert result["shape"] == list(features.shape)


RESAVED = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("modeling") is None
from PIL import Image
from transformers import pipeline
results = {}
for folder in sys.argv[1:-1]:
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
    results[folder] = [type(classifier.image_processor).__name__, classifier(Image.open(sys.argv[-1]), top_k=4)]
print("RESULT " + json.dumps(results))
"""


@pytest.mark.parametrize("name", ["blocknet_tiny", "resnet18"])
def test_one_channel_export_resaved_by_transformers_keeps_its_processor(name, tmp_path):
    """transformers' save_pretrained of a one-channel export loaded with trust_remote_code keeps auto_map's
    AutoImageProcessor entry and copies only the files of a remote model class and what it imports: the re-save holds
    modeling_one_channel.py, and its pipeline opens photos as the export's does."""
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4, in_chans=1).eval()
    folder = modeling.save_pretrained(model, tmp_path / "gray", label_names=LABELS,
                                      pretrained_cfg={"input_size": (1, 64, 64)})
    loaded = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    loaded.save_pretrained(tmp_path / "resaved")
    auto_map = json.loads((tmp_path / "resaved" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoImageProcessor"] == "modeling_one_channel.TimmWrapperOneChannelImageProcessor"
    assert (tmp_path / "resaved" / "modeling_one_channel.py").is_file()
    result = run_clean(RESAVED, [folder, tmp_path / "resaved", PHOTO], tmp_path)
    export, resaved = result[str(folder)], result[str(tmp_path / "resaved")]
    assert resaved[0] == "TimmWrapperOneChannelImageProcessor"
    assert [r["label"] for r in resaved[1]] == [r["label"] for r in export[1]]
    assert [r["score"] for r in resaved[1]] == pytest.approx([r["score"] for r in export[1]], abs=1e-6)
