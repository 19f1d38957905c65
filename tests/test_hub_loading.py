"""Loading an export by Hub id across a real network boundary: tests/hub_server.py serves a saved blocknet_tiny
(trained-looking BatchNorm statistics) as "me/blocknet" on 127.0.0.1, and each route runs in a fresh interpreter
with HF_ENDPOINT pointing at it and an empty HF_HOME, then again from what it downloaded with HF_HUB_OFFLINE=1 and
the server stopped (the air-gapped cluster). Pins what transformers does there, so README section 8 changes with it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import LocalHub
from safetensors.torch import load_file, save_file
from test_backbones import X, batchnorm_buffers, expected_maps, trained_looking

import modeling
import validate
from imagenet_trainer import ilsvrc

ROOT = Path(__file__).resolve().parents[1]
REPO = "me/blocknet"

# A user without this project (-I: no cwd, no PYTHONPATH): the card's and README's transformers routes
TRANSFORMERS_ROUTES = r"""
import importlib.util, json, sys, torch
assert importlib.util.find_spec("modeling") is None and importlib.util.find_spec("imagenet_trainer") is None
from safetensors.torch import load_file, save_file
from transformers import AutoBackbone, AutoConfig, AutoModelForImageClassification
from transformers.dynamic_module_utils import get_class_from_dynamic_module
io, out = sys.argv[1:]
x, result = load_file(io)["x"], {}
try:
    backbone = AutoBackbone.from_pretrained("me/blocknet", trust_remote_code=True, out_indices=(1, 2, 3, 4))
    result["auto_backbone"] = type(backbone).__name__
except Exception as e:  # README section 8: then the class that auto_map names, loaded by hand
    result["auto_backbone"] = type(e).__name__
    entry = AutoConfig.from_pretrained("me/blocknet", trust_remote_code=True).auto_map["AutoBackbone"]
    backbone = get_class_from_dynamic_module(entry, "me/blocknet").from_pretrained("me/blocknet",
                                                                                  out_indices=(1, 2, 3, 4))
result["backbone"] = type(backbone).__name__
classifier = AutoModelForImageClassification.from_pretrained("me/blocknet", trust_remote_code=True).eval()
with torch.no_grad():
    maps, logits = backbone(x).feature_maps, classifier(pixel_values=x).logits
statistics = {k: v for k, v in backbone._backbone.state_dict().items() if k.endswith(("running_mean", "running_var"))}
save_file({f"map{i}": m.contiguous() for i, m in enumerate(maps)} | {"logits": logits} | statistics, out)
print("RESULT " + json.dumps(result))
"""

# With this project installed: the card's timm snippet (import modeling registers the family) and modeling.load_model
PROJECT_ROUTES = r"""
import json, sys, torch, timm
import modeling
from safetensors.torch import load_file, save_file
route, io, out = sys.argv[1:]
x, result = load_file(io)["x"], {}
if route == "timm":
    model = timm.create_model("hf-hub:me/blocknet", pretrained=True).eval()
    features = timm.create_model("hf-hub:me/blocknet", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    with torch.no_grad():
        tensors = {"logits": model(x)} | {f"map{i}": m for i, m in enumerate(features.eval()(x))}
    result["label_names"] = list(model.pretrained_cfg["label_names"])
else:
    with torch.no_grad():
        tensors = {"logits": modeling.load_model("me/blocknet")(x),
                   "hf_hub": modeling.load_model("hf-hub:me/blocknet")(x)}
    result["label_names"] = modeling.label_info("me/blocknet")[0]
    try:
        modeling.load_model("me/absent")
    except ValueError as e:
        result["absent"] = str(e)
save_file(tensors, out)
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(repos folder holding me/blocknet, the model saved there)."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("blocknet_tiny", num_classes=4))
    repos = tmp_path_factory.mktemp("repos")
    modeling.save_pretrained(model, repos / REPO, label_names=ilsvrc.imagenet_wnids()[:4],
                             pretrained_cfg={"input_size": (3, 64, 64)})
    return repos, model


@pytest.fixture
def hub(export):
    """The local Hub serving me/blocknet, for one test; stopping it twice is harmless."""
    repos, _ = export
    with LocalHub({REPO: repos / REPO}) as hub:
        yield hub


def hub_env(hub: LocalHub, home: Path, offline: bool = False) -> dict:
    """This environment pointed at ``hub``, with Hugging Face's files (cache, modules) in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), NO_PROXY="127.0.0.1", OMP_NUM_THREADS="1")
    return env | ({"HF_HUB_OFFLINE": "1"} if offline else {})


def load(script: str, args: list, home: Path, hub: LocalHub, offline: bool = False, isolated: bool = False) -> dict:
    """Run ``script`` in a fresh interpreter against ``hub`` with Hugging Face files in ``home``; its RESULT."""
    cmd = [sys.executable, *(["-I"] if isolated else []), "-c", script, *map(str, args)]
    proc = subprocess.run(cmd, cwd=home.parent if isolated else ROOT, env=hub_env(hub, home, offline),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


@pytest.fixture
def io_file(tmp_path) -> Path:
    save_file({"x": X}, tmp_path / "x.safetensors")
    return tmp_path / "x.safetensors"


def test_auto_backbone_by_hub_id_online_and_the_class_route_offline(export, hub, io_file, tmp_path):
    """README section 8: AutoBackbone.from_pretrained(hub id, trust_remote_code=True) gives the export's maps and
    statistics; offline, transformers 5.24 asks the Hub whether the repo exists first (OfflineModeIsEnabled), and
    the class auto_map names loads from the same cache."""
    _, model = export
    home, out = tmp_path / "home", tmp_path / "out.safetensors"
    online = load(TRANSFORMERS_ROUTES, [io_file, out], home, hub, isolated=True)
    assert online == {"auto_backbone": "BlockNetBackbone", "backbone": "BlockNetBackbone"}
    assert ("GET", f"/api/models/{REPO}") in hub.requests and not hub.unhandled  # repo_exists reached the server
    check_transformers_outputs(load_file(out), model)

    hub.stop()
    out.unlink()
    offline = load(TRANSFORMERS_ROUTES, [io_file, out], home, hub, offline=True, isolated=True)
    assert offline == {"auto_backbone": "OfflineModeIsEnabled", "backbone": "BlockNetBackbone"}
    check_transformers_outputs(load_file(out), model)


def same_maps(out: dict, model) -> bool:
    """Up to float rounding: another process sums in another order (thread count); a statistics reset moves the
    maps by far more."""
    return all(torch.allclose(out[f"map{i}"], m, rtol=0, atol=1e-5) for i, m in enumerate(expected_maps(model)))


def check_transformers_outputs(out: dict, model) -> None:
    assert same_maps(out, model)
    saved = {k: v for k, v in batchnorm_buffers(model).items() if not k.startswith("head")}
    loaded = {k: v for k, v in out.items() if k.endswith(("running_mean", "running_var"))}
    assert len(loaded) == len(saved) >= 16
    assert sorted(v.sum().item() for v in loaded.values()) == sorted(v.sum().item() for v in saved.values())
    assert torch.allclose(out["logits"], logits_of(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize("route", ["timm", "modeling"])
def test_project_routes_by_hub_id_online_then_offline(export, hub, io_file, tmp_path, route):
    """The card's timm snippet (import modeling, then hf-hub:) and modeling.load_model: the export's logits from the
    local Hub, and again offline from what that download left; an unknown repo is our one-line error."""
    _, model = export
    home, out = tmp_path / "home", tmp_path / "out.safetensors"
    for offline in (False, True):
        if offline:
            hub.stop()
            out.unlink()
        result = load(PROJECT_ROUTES, [route, io_file, out], home, hub, offline=offline)
        tensors = load_file(out)
        assert torch.allclose(tensors["logits"], logits_of(model), rtol=0, atol=1e-5)
        assert result["label_names"] == ilsvrc.imagenet_wnids()[:4]
        if route == "timm":
            assert same_maps(tensors, model)
        else:
            assert torch.equal(tensors["hf_hub"], tensors["logits"])
            absent = result["absent"]
            assert "\n" not in absent and "Hub repo 'me/absent'" in absent
            assert ("LocalEntryNotFoundError" if offline else "RepositoryNotFoundError") in absent, absent
    assert not hub.unhandled


def test_validate_by_hub_id_and_an_unknown_repo(export, hub, preprocessed, tmp_path):
    """validate.py --model hf-hub:OWNER/NAME scores what the local Hub serves as the folder scores; an unknown repo
    ends in one line naming it."""
    repos, _ = export
    env, results = hub_env(hub, tmp_path / "home"), {}
    for ref in (f"hf-hub:{REPO}", "hf-hub:me/absent"):
        proc = subprocess.run([sys.executable, str(ROOT / "validate.py"), "--model", ref, "--dataset",
                               str(preprocessed), "--num_workers", "0", "--batch_size", "8", "--output",
                               str(tmp_path / "r.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        results[ref] = proc
    assert results[f"hf-hub:{REPO}"].returncode == 0, results[f"hf-hub:{REPO}"].stderr[-4000:]
    assert not hub.unhandled
    from_hub = json.loads((tmp_path / "r.json").read_text())
    local = validate.main(["--model", str(repos / REPO), "--dataset", str(preprocessed), "--num_workers", "0",
                           "--batch_size", "8"])
    assert (from_hub["top1"], from_hub["top5"]) == (local["top1"], local["top5"])
    absent = results["hf-hub:me/absent"]
    assert absent.returncode != 0 and "Traceback" not in absent.stderr, absent.stderr[-3000:]
    last = absent.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --model hf-hub:me/absent: ") and "RepositoryNotFoundError" in last, last
