"""Pushing to tests/hub_server.py's local Hub over HTTP, then loading by Hub id as a user elsewhere would: the
export through transformers (no project installed) and timm, each in a fresh interpreter with an empty HF_HOME;
and what the stand-in itself answers where the Hub's rules decide (upload modes, tokens, existing repos, xet)."""
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from hub_server import LFS_MIN_BYTES, LocalHub, point_this_process_at
from safetensors.torch import load_file
from test_hub_loading import export, io_file  # noqa: F401  (fixtures)
from test_hub_loading import (PROJECT_ROUTES, REPO, TRANSFORMERS_ROUTES, check_transformers_outputs, load, logits_of,
                              same_maps)

import modeling
from imagenet_trainer import ilsvrc


def test_pushed_export_loads_by_hub_id_in_transformers_and_timm(export, io_file, monkeypatch, tmp_path):
    """modeling.push_to_hub, then AutoModelForImageClassification/AutoBackbone.from_pretrained(hub id,
    trust_remote_code=True) without the project, and timm's hf-hub: with it: the local model's logits, maps and
    BatchNorm statistics, from what the push uploaded."""
    repos, model = export
    home, out = tmp_path / "home", tmp_path / "out.safetensors"
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "pusher")
        assert modeling.push_to_hub(repos / REPO, REPO, token=hub.token) == f"{hub.endpoint}/{REPO}"
        assert hub.repo(REPO).files["README.md"] != (repos / REPO / "README.md").read_bytes()  # repo id filled in
        online = load(TRANSFORMERS_ROUTES, [io_file, out], home, hub, isolated=True)
        assert online == {"auto_backbone": "BlockNetBackbone", "backbone": "BlockNetBackbone"}
        check_transformers_outputs(load_file(out), model)
        out.unlink()
        result = load(PROJECT_ROUTES, ["timm", io_file, out], home, hub)
        assert not hub.unhandled
    tensors = load_file(out)
    assert torch.allclose(tensors["logits"], logits_of(model), rtol=0, atol=1e-5) and same_maps(tensors, model)
    assert result["label_names"] == ilsvrc.imagenet_wnids()[:4]


def test_upload_modes_tokens_and_existing_repos_as_the_hub_answers(monkeypatch, tmp_path):
    """LFS for the default .gitattributes' suffixes, binary content and files of 10 MiB or more, git otherwise; a
    second create is 409 (exist_ok takes it); no token or a wrong one is 401; an unchanged file is not committed
    again; a deletion is a commit."""
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        api = HfApi(token=hub.token)
        api.create_repo("me/x")
        with pytest.raises(HfHubHTTPError, match="409 Conflict"):
            api.create_repo("me/x")
        assert api.create_repo("me/x", exist_ok=True).repo_id == "me/x"
        for token in (False, "hf_wrongsecret"):
            with pytest.raises(HfHubHTTPError, match="401 Unauthorized"):
                HfApi(token=token).create_repo("me/y")
        files = {"notes.txt": b"text\n", "w.bin": b"weights", "raw.dat": b"a\0b", "big.txt": b"x" * LFS_MIN_BYTES,
                 "arrays/a.npz": b"PK"}
        api.create_commit("me/x", [CommitOperationAdd(path, data) for path, data in files.items()],
                          commit_message="add")
        repo = hub.repo("me/x")
        assert repo.lfs == {"w.bin", "raw.dat", "big.txt", "arrays/a.npz"}
        assert {path: repo.files[path] for path in files} == files
        head = repo.commit
        api.create_commit("me/x", [CommitOperationAdd("notes.txt", b"text\n")], commit_message="same")
        assert repo.commit == head
        api.create_commit("me/x", [CommitOperationDelete("notes.txt")], commit_message="rm")
        assert api.list_repo_files("me/x") == [".gitattributes", "arrays/a.npz", "big.txt", "raw.dat", "w.bin"]
        assert [summary for _, summary in repo.log] == ["Initial commit", "add", "rm"] and not hub.unhandled


# huggingface_hub with hf_xet installed and HF_HUB_DISABLE_XET unset
XET_PUSH = r"""
import sys
from huggingface_hub import HfApi
api = HfApi(token=sys.argv[1])
api.create_repo("me/xet")
try:
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="w.bin", repo_id="me/xet")
except Exception as e:
    print("RESULT " + type(e).__name__)
"""


def test_without_disabling_xet_the_client_asks_for_a_xet_token(tmp_path):
    """Why pushes here set HF_HUB_DISABLE_XET=1: huggingface_hub 2.4 with hf_xet installed uploads LFS content
    through xet whatever the server answers, starting with a write token the stand-in does not serve."""
    pytest.importorskip("hf_xet")
    with LocalHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1")
        proc = subprocess.run([sys.executable, "-c", XET_PUSH, hub.token], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "RESULT " in proc.stdout, proc.stderr[-3000:]
        assert hub.unhandled == [("GET", "/api/models/me/xet/xet-write-token/main")], hub.unhandled
        assert hub.repo("me/xet").files.keys() == {".gitattributes"}
