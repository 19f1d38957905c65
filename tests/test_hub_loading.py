"""Loading an export by Hub id across a real network boundary: tests/hub_server.py serves a saved blocknet_tiny
(trained-looking BatchNorm statistics) as "me/blocknet" on 127.0.0.1, and each route runs in a fresh interpreter
with HF_ENDPOINT pointing at it and an empty HF_HOME, then again from what it downloaded with HF_HUB_OFFLINE=1 and
the server stopped (the air-gapped cluster). Pins what transformers does there, so README section 8 changes with it."""
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from hub_server import LocalHub, point_this_process_at
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_backbones import X, batchnorm_buffers, expected_maps, trained_looking

import modeling
import modeling.refresh_code
import validate
from imagenet_trainer import ilsvrc
from modeling.hub import weights_crc32

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
    statistics; offline, transformers 5.24-5.25 ask the Hub whether the repo exists first (OfflineModeIsEnabled), and
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
            if offline:  # offline mode named, and the cache it looked in
                assert f"HF_HUB_OFFLINE=1 set Hub repo 'me/absent'" in absent, absent
                assert f"is not in the Hugging Face cache {home / 'hub'}" in absent, absent
            else:
                assert "RepositoryNotFoundError" in absent, absent
    assert not hub.unhandled


def test_validate_by_hub_id_online_then_offline_and_an_unknown_repo(export, hub, preprocessed, tmp_path):
    """validate.py --model hf-hub:OWNER/NAME scores what the local Hub serves as the folder scores, and again with
    HF_HUB_OFFLINE=1 and the server stopped from what the online run cached; an unknown repo ends in one line naming
    it (offline: that offline mode is on and the repo is not in the cache)."""
    repos, _ = export
    home = tmp_path / "home"
    local = validate.main(["--model", str(repos / REPO), "--dataset", str(preprocessed), "--num_workers", "0",
                           "--batch_size", "8"])
    for offline in (False, True):
        if offline:
            hub.stop()
        env, results = hub_env(hub, home, offline), {}
        for ref in (f"hf-hub:{REPO}", "hf-hub:me/absent"):
            results[ref] = subprocess.run(
                [sys.executable, str(ROOT / "validate.py"), "--model", ref, "--dataset", str(preprocessed),
                 "--num_workers", "0", "--batch_size", "8", "--output", str(tmp_path / f"{offline}.json")],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert results[f"hf-hub:{REPO}"].returncode == 0, results[f"hf-hub:{REPO}"].stderr[-4000:]
        scored = json.loads((tmp_path / f"{offline}.json").read_text())
        assert (scored["top1"], scored["top5"]) == (local["top1"], local["top5"])
        absent = results["hf-hub:me/absent"]
        assert absent.returncode != 0 and "Traceback" not in absent.stderr, absent.stderr[-3000:]
        last = absent.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --model hf-hub:me/absent: "), last
        assert ("HF_HUB_OFFLINE=1" in last and str(home / "hub") in last) if offline else \
            "RepositoryNotFoundError" in last, last
    assert not hub.unhandled


# transformers' AutoBackbone on an export as saved before its Backbone class declared config_class, and on a copy
# refreshed by modeling.refresh_code; the feature maps of the refreshed one
AUTO_BACKBONES = r"""
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoBackbone
io, out, *repos = sys.argv[1:]
result = {}
for repo in repos:
    try:
        backbone = AutoBackbone.from_pretrained(repo, trust_remote_code=True, out_indices=(1, 2, 3, 4))
        result[repo] = type(backbone).__name__
        with torch.no_grad():
            maps = backbone(load_file(io)["x"]).feature_maps
        save_file({f"map{i}": m.contiguous() for i, m in enumerate(maps)}, out)
    except Exception as e:
        result[repo] = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps(result))
"""


def saved_by_an_earlier_version(export_folder: Path, folder: Path) -> Path:
    """A copy of the export whose Backbone class lacks ``config_class``, as exports were once written."""
    shutil.copytree(export_folder, folder)
    wrapper = folder / "modeling_blocknet.py"
    text = wrapper.read_text()
    old = "".join(line for line in text.splitlines(keepends=True) if "config_class = TimmWrapperConfig" not in line)
    assert old != text
    wrapper.write_text(old)
    return folder


def test_an_old_export_refreshed_loads_through_auto_backbone(export, io_file, tmp_path):
    """python -m modeling.refresh_code rewrites the old remote code from the installed project (weights, config and
    card as they were); then AutoBackbone.from_pretrained(hub id, trust_remote_code=True) loads it from the local
    Hub with the export's maps, where the unrefreshed copy is refused."""
    repos, model = export
    old = saved_by_an_earlier_version(repos / REPO, tmp_path / "old")
    refreshed = saved_by_an_earlier_version(repos / REPO, tmp_path / "refreshed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "modeling.refresh_code", "--folder", str(refreshed)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == f"{refreshed}: rewrote modeling_blocknet.py\n", proc
    assert {p.name: p.read_bytes() for p in refreshed.iterdir() if p.name != "modeling_blocknet.py"} == \
        {p.name: p.read_bytes() for p in old.iterdir() if p.name != "modeling_blocknet.py"}
    assert (refreshed / "modeling_blocknet.py").read_text() == (repos / REPO / "modeling_blocknet.py").read_text()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == f"{refreshed}: remote code up to date\n", again

    out = tmp_path / "maps.safetensors"
    with LocalHub({"me/old": old, "me/x": refreshed}) as hub:
        result = load(AUTO_BACKBONES, [io_file, out, "me/old", "me/x"], tmp_path / "home", hub, isolated=True)
        assert not hub.unhandled
    assert result["me/x"] == "BlockNetBackbone", result
    assert result["me/old"].startswith("ValueError: ") and "config_class" in result["me/old"], result
    assert same_maps(load_file(out), model)


@contextmanager
def connection_spy(monkeypatch):
    """A TCP listener as every proxy of this process: it records each connection and closes it at once, so a download
    attempt is seen and fails in milliseconds instead of going out (or hanging behind a firewall); yields the list of
    connections' first bytes."""
    seen = []

    class Record(socketserver.BaseRequestHandler):
        def handle(self):
            seen.append(self.request.recv(200))

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Record) as server:
        server.daemon_threads = True
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
            monkeypatch.setenv(var, proxy)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield seen
        finally:
            server.shutdown()


def offline(monkeypatch, hf_cache: Path, var: str = "HF_HUB_OFFLINE") -> None:
    """``var``=1 (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, the other unset) as huggingface_hub read it at import, and
    an empty Hugging Face cache at ``hf_cache``."""
    monkeypatch.delenv("HF_HUB_OFFLINE" if var == "TRANSFORMERS_OFFLINE" else "TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))


def test_timm_weights_at_a_url_load_offline_from_torch_hubs_cache_and_fail_at_once_without(tmp_path, monkeypatch):
    """A timm tag whose weights timm downloads from a URL (no Hub repo): offline, torch.hub would still fetch it, with
    no timeout, so without a copy in $TORCH_HOME/hub/checkpoints create_model fails at once, naming the URL and that
    file, and makes no connection; with the file there it loads it, still without a connection."""
    name = "legacy_seresnet18.in1k"
    url = timm.models.get_pretrained_cfg(name).url
    assert url and not timm.models.get_pretrained_cfg(name).hf_hub_id
    expected = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    offline(monkeypatch, tmp_path / "hf")
    with connection_spy(monkeypatch) as seen:
        with pytest.raises(ValueError) as e:
            modeling.create_model(name, pretrained=True)
        message = str(e.value)
        assert "\n" not in message and f"come from {url}, not from a Hugging Face Hub repo" in message, message
        assert f"no copy at {expected} " in message and f"TORCH_HOME={tmp_path / 'torch'}" in message, message
        assert "Hub repo '" not in message and "model.safetensors" not in message, message
        assert seen == []

        torch.manual_seed(0)
        weights = timm.create_model("legacy_seresnet18").state_dict()
        expected.parent.mkdir(parents=True)
        torch.save(weights, expected)
        loaded = modeling.create_model(name, pretrained=True).state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert seen == []


def test_timm_weights_at_a_url_behind_a_silent_firewall_end_in_one_line_not_a_hang(tmp_path, monkeypatch):
    """Online, torch.hub downloads with no timeout: a server (or firewall) that takes the connection and never answers
    would hold train.py forever. A stall of URL_TIMEOUT_S is one line naming the URL and where to put the file, and
    leaves no partial file in torch.hub's cache."""
    from modeling import _registry

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nothing ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/weights/legacy_seresnet18.pth"
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # online, with the local server in reach
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_registry, "URL_TIMEOUT_S", 1.0)
    before, start = socket.getdefaulttimeout(), time.monotonic()
    try:
        with pytest.raises(ValueError) as e:
            modeling.create_model("legacy_seresnet18.in1k", pretrained=True,
                                  pretrained_cfg_overlay={"url": url, "hf_hub_id": None})
    finally:
        silent.close()
    message, cache = str(e.value), tmp_path / "torch" / "hub" / "checkpoints"
    assert time.monotonic() - start < 30 and socket.getdefaulttimeout() == before
    assert "\n" not in message and f"come from {url}, not from a Hugging Face Hub repo" in message, message
    assert "timed out" in message and f"{cache / 'legacy_seresnet18.pth'}" in message, message
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("pretrained, var", [(True, "HF_HUB_OFFLINE"), (False, "HF_HUB_OFFLINE"),
                                             (False, "TRANSFORMERS_OFFLINE")])
def test_an_hf_hub_name_offline_and_not_cached_is_one_line_naming_the_repo_and_cache(tmp_path, monkeypatch,
                                                                                    pretrained, var):
    """create_model("hf-hub:OWNER/NAME") (train.py --model): timm reads config.json from the Hub, with --pretrained
    the weights too; offline without a cached copy, the line names the variable that turned offline mode on (the
    one the user set: huggingface_hub obeys TRANSFORMERS_OFFLINE too), the repo, the files and the cache folder, as
    modeling.load_model (validate.py) does."""
    offline(monkeypatch, tmp_path / "hf", var)
    with pytest.raises(ValueError) as e:
        modeling.create_model("hf-hub:me/absent@v1", pretrained=pretrained)
    message = str(e.value)
    files = "config.json, model.safetensors" if pretrained else "config.json"
    assert message == (f"{var}=1 is set and Hub repo 'me/absent' ({files}) is not in the Hugging Face cache "
                       f"{tmp_path / 'hf'}: load it once online (the same HF_HOME), or point HF_HOME at a cache that "
                       f"holds it"), message


def flip_a_tensor_byte(weights: Path) -> None:
    """Flip one bit of a safetensors file's last byte, which lies in the data of the tensor stored last (checked from
    the header: an 8-byte little-endian length, then the JSON): what a bad disk or copy leaves, size and header as
    they were."""
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    data_end = max(entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__")
    assert 8 + header_len + data_end == len(data) and data_end > 0
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


def damaged_line(weights: Path) -> str:
    return (f"{weights}: its tensors differ from the CRC-32 saved with them (a damaged copy); copy the export again or "
            f"re-export it")


def same_state(loaded: dict, saved: dict) -> bool:
    return loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_bit_flipped_export_is_refused_in_one_line_by_each_loader_and_by_push(export, tmp_path, monkeypatch):
    """A bit flipped in the tensor data of model.safetensors reads in safetensors as other weights without a word; the
    CRC-32 save_pretrained writes into the header's metadata makes load_model, timm_backbone, load_backbone_weights
    and push_to_hub refuse it in one line naming the file, the push before any request. The sound copy loads with the
    saved tensors and uploads."""
    repos, model = export
    good = shutil.copytree(repos / REPO, tmp_path / "good")
    saved = model.state_dict()
    with safe_open(str(good / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "crc32": weights_crc32(saved)}
    assert re.fullmatch(r"[0-9a-f]{8}", weights_crc32(saved))
    assert same_state(modeling.load_model(good).state_dict(), saved)
    backbone = modeling.timm_backbone(good)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    bad = shutil.copytree(good, tmp_path / "bad")
    weights = bad / "model.safetensors"
    flip_a_tensor_byte(weights)
    damaged = load_file(weights)
    assert len([k for k in saved if not torch.equal(damaged[k], saved[k])]) == 1  # safetensors itself says nothing
    for load in (lambda: modeling.load_model(bad), lambda: modeling.load_model(f"local-dir:{bad}"),
                 lambda: modeling.timm_backbone(bad), lambda: modeling.load_backbone_weights(backbone, bad),
                 lambda: modeling.create_model(f"local-dir:{bad}", pretrained=True)):  # train.py --pretrained
        with pytest.raises(ValueError) as e:
            load()
        assert str(e.value) == damaged_line(weights)
    assert same_state(backbone.state_dict(), before)

    # a damaged key name in the header (same length, so the file still parses): the tensor bytes alone would pass
    renamed = shutil.copytree(good, tmp_path / "renamed")
    renamed_weights = renamed / "model.safetensors"
    data = renamed_weights.read_bytes()
    key = next(k for k in saved if k.endswith(".weight")).encode()
    assert data.count(b'"' + key + b'"') == 1
    renamed_weights.write_bytes(data.replace(b'"' + key + b'"', b'"' + key[:-1] + b'X"'))
    assert key[:-1].decode() + "X" in load_file(renamed_weights)
    with pytest.raises(ValueError) as e:
        modeling.load_model(renamed)
    assert str(e.value) == damaged_line(renamed_weights)

    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "hf-home")
        with pytest.raises(ValueError) as e:
            modeling.push_to_hub(bad, "me/bad", token=hub.token)
        assert str(e.value) == damaged_line(weights)
        assert hub.requests == [] and hub.repo("me/bad") is None
        modeling.push_to_hub(good, "me/good", token=hub.token)
        assert hub.repo("me/good").files["model.safetensors"] == (good / "model.safetensors").read_bytes()
        assert not hub.unhandled


def test_an_export_without_the_crc_loads_and_a_cut_one_is_one_line(export, tmp_path, monkeypatch):
    """Weights with no CRC-32 in their metadata (timm's own Hub weights, a transformers re-save, an export older than
    the seal) load as before. A file cut short, whose header does not parse: one line naming it and what to do from
    load_model, python -m modeling.refresh_code and push_to_hub (nothing uploaded), not safetensors' traceback."""
    repos, model = export
    plain = shutil.copytree(repos / REPO, tmp_path / "plain")
    save_file(load_file(plain / "model.safetensors"), plain / "model.safetensors", metadata={"format": "pt"})
    assert same_state(modeling.load_model(plain).state_dict(), model.state_dict())
    with torch.no_grad():
        maps = modeling.timm_backbone(plain)(X).feature_maps
    assert all(torch.equal(a, b) for a, b in zip(maps, expected_maps(model)))

    cut = shutil.copytree(repos / REPO, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    start = f"{weights} does not read (Error while deserializing header: "
    end = "): a cut or damaged copy; copy, download or export it again"
    with pytest.raises(ValueError) as e:
        modeling.load_model(cut)
    assert str(e.value).startswith(start) and str(e.value).endswith(end) and "\n" not in str(e.value), e.value
    with pytest.raises(SystemExit) as e:
        modeling.refresh_code.main(["--folder", str(cut)])
    assert str(e.value.code).startswith(f"error: --folder {cut}: {start}") and "\n" not in str(e.value.code)
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "hf-home")
        with pytest.raises(ValueError) as e:
            modeling.push_to_hub(cut, "me/cut", token=hub.token)
        assert str(e.value).startswith(start) and str(e.value).endswith(end)
        assert hub.requests == []


FINE_TUNE_FROM_HUB = """
import json, sys
import torch
from safetensors.torch import load_file
import modeling
model = modeling.create_model("hf-hub:me/resaved", pretrained=True, num_classes=7)
saved = {k.removeprefix("timm_model."): v for k, v in load_file(sys.argv[1]).items()}
body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
print("RESULT " + json.dumps({"classes": model.num_classes, "tensors": len(body),
                              "equal": sum(torch.equal(v, saved[k]) for k, v in body.items())}))
"""


def test_a_hub_repo_of_transformers_saved_weights_is_fine_tuned_from_them(tmp_path):
    """An export of a timm architecture re-saved from a remote-code wrapper keeps its weights under "timm_model."
    (transformers applies no key conversion to classes it does not ship; modeling_one_channel.py's older copies did
    so); pushed to the Hub, timm's own hf-hub: load would skip every key without a word and train.py --model
    hf-hub:... --pretrained would start from random weights. create_model loads them strictly from the Hub repo too,
    with the new head the class count asks for."""
    torch.manual_seed(0)
    model = trained_looking(modeling.create_model("resnet10t", num_classes=4))
    resaved = modeling.save_pretrained(model, tmp_path / "resaved", label_names=ilsvrc.imagenet_wnids()[:4])
    state = load_file(resaved / "model.safetensors")
    save_file({f"timm_model.{k}": v for k, v in state.items()}, resaved / "model.safetensors",
              metadata={"format": "pt"})
    assert model.pretrained_cfg["classifier"] == "fc"
    with LocalHub({"me/resaved": resaved}) as hub:
        result = load(FINE_TUNE_FROM_HUB, [resaved / "model.safetensors"], tmp_path / "home", hub)
    backbone = [k for k in model.state_dict() if not k.startswith("fc.")]
    assert result == {"classes": 7, "tensors": len(backbone), "equal": len(backbone)}, result


def test_rebuild_is_the_trained_architecture_whatever_became_of_its_source(tmp_path):
    """train.py's export rebuilds the network from the trained one in memory: a local-dir: source saved over with
    other architecture arguments (same weight shapes: nothing would fail) or deleted during the run changes nothing."""
    source = modeling.save_pretrained(modeling.create_model("resnet18", num_classes=4), tmp_path / "base",
                                      label_names=list("abcd"))
    trained = modeling.create_model(f"local-dir:{source}", pretrained=True, num_classes=3, drop_path_rate=0.1)
    other = modeling.create_model("resnet18", num_classes=4, global_pool="max")
    modeling.save_pretrained(other, source, label_names=list("abcd"))  # replaces the folder whole
    rebuilt = modeling.rebuild(trained, 3)
    assert timm.models.get_model_args(rebuilt) == timm.models.get_model_args(trained)
    assert (rebuilt.global_pool.pool_type, rebuilt.num_classes) == ("avg", 3)
    shutil.rmtree(source)
    rebuilt = modeling.rebuild(trained)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), trained.eval()(x))
    ours = modeling.create_model("blocknet_tiny", num_classes=5, in_chans=1)
    assert timm.models.get_model_args(modeling.rebuild(ours)) == timm.models.get_model_args(ours)
