"""Pushing to tests/hub_server.py's local Hub over HTTP, then loading by Hub id as a user elsewhere would: the
export through transformers (no project installed) and timm, each in a fresh interpreter with an empty HF_HOME;
and what the stand-in itself answers where the Hub's rules decide (upload modes, tokens, existing repos, xet)."""
import compileall
import importlib
import os
import py_compile
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from hub_server import LFS_MIN_BYTES, LocalHub, point_this_process_at
from safetensors.torch import load_file
from test_backbones import X
from test_hub_loading import export, io_file  # noqa: F401  (fixtures)
from test_hub_loading import (PROJECT_ROUTES, REPO, TRANSFORMERS_ROUTES, check_transformers_outputs, hub_env, load,
                              logits_of, same_maps)
from test_modeling import restored_registry

import modeling
from imagenet_trainer import ilsvrc
from modeling import refresh_code


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


# edits of the export's copy of blocknet.py that keep every key and shape: what a version of the family that saved
# these weights may have differed in
SILU = ("self.act = nn.ReLU(inplace=True)", "self.act = nn.SiLU(inplace=True)")  # BasicBlock's activation
EPS = ("nn.BatchNorm2d(out_chs),", "nn.BatchNorm2d(out_chs, eps=1e-6),")  # conv_bn's (installed: 1e-5)
NOT_INPLACE = ("self.act = nn.ReLU(inplace=True)", "self.act = nn.ReLU(inplace=False)")  # other text, same function


def saved_with(export_folder: Path, folder: Path, edit: tuple[str, str]) -> Path:
    """A copy of the export whose blocknet.py (the architecture of its weights) has ``edit`` applied once."""
    shutil.copytree(export_folder, folder)
    path = folder / "blocknet.py"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(*edit, 1))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def code_logits(files: dict[str, bytes], where: Path) -> torch.Tensor:
    """Logits on X of an export's files as its own blocknet.py builds them: the folder imported as a package (its
    variants replace the installed ones in timm's registry until restored_registry puts those back)."""
    where.mkdir()
    for name, data in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    sys.path.insert(0, str(where.parent))
    try:
        with restored_registry(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Overwriting blocknet_", UserWarning)  # the point of this import
            module = importlib.import_module(f"{where.name}.blocknet")
            model = timm.create_model(f"local-dir:{where}", pretrained=True).eval()
            assert timm.models.model_entrypoint("blocknet_tiny").__module__ == module.__name__
            return model(X)
    finally:
        sys.path.remove(str(where.parent))
        for name in [m for m in sys.modules if m == where.name or m.startswith(f"{where.name}.")]:
            del sys.modules[name]


def test_push_keeps_a_family_file_that_computes_otherwise_and_leaves_bytecode_out(export, monkeypatch, tmp_path,
                                                                                 capsys):
    """An export whose blocknet.py builds BasicBlock with SiLU (the installed one: ReLU; same keys and shapes) is
    pushed with that copy: the published code gives the export's logits, not the installed network's, and the push
    says in one line why it kept the file. __pycache__/ and .pyc files (the card's `import blocknet` leaves them in
    the folder) stay local; .eval_results/ goes up."""
    repos, model = export
    folder = saved_with(repos / REPO, tmp_path / "saved", SILU)
    modeling.update_model_card_results(folder, {"top1": 50.0, "top5": 100.0, "n": 8, "dataset_id": "me/digits"})
    compileall.compile_file(str(folder / "blocknet.py"), quiet=1)
    py_compile.compile(str(folder / "blocknet.py"), cfile=str(folder / "blocknet.pyc"))
    before = files_of(folder)
    assert ".eval_results/digits.yaml" in before and any(name.startswith("__pycache__/") for name in before)
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "pusher")
        modeling.push_to_hub(folder, "me/saved", token=hub.token)
        published = dict(hub.repo("me/saved").files)
        assert not hub.unhandled
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith(
        f"{folder}: kept blocknet.py as saved, the architecture of these weights: the installed 'blocknet_tiny' gives "
        f"other outputs from these weights than its saved blocknet.py (max |difference| "), printed
    assert printed[0].endswith(" on a seeded 1x3x64x64 input); it is uploaded as saved"), printed
    assert files_of(folder) == before  # nothing rewritten
    source = {name: data for name, data in before.items() if not name.endswith(".pyc")}
    assert published.keys() == {".gitattributes", *source} and published["blocknet.py"] == before["blocknet.py"]
    logits = code_logits(source, tmp_path / "as_saved")
    assert torch.equal(code_logits(published, tmp_path / "as_published"), logits)
    assert not torch.allclose(logits, logits_of(model), atol=1e-3)  # the installed network's: another function


def test_refresh_replaces_a_family_file_only_where_the_installed_one_computes_the_same(export, tmp_path, capsys,
                                                                                       monkeypatch):
    """python -m modeling.refresh_code replaces a saved blocknet.py that differs from the installed one in text only;
    where it differs in function by as little as BatchNorm's eps (1e-6 saved, 1e-5 installed: the logits move by a
    few 1e-6), what modeling.load_model builds from the installed code is warned of in one line."""
    repos, _ = export
    same = saved_with(repos / REPO, tmp_path / "same", NOT_INPLACE)
    refresh_code.main(["--folder", str(same)])
    assert capsys.readouterr().out == f"{same}: rewrote blocknet.py\n"
    assert files_of(same) == files_of(repos / REPO)
    assert refresh_code.installed_code_warning(same) is None  # the sources are the same now: nothing to run

    eps = saved_with(repos / REPO, tmp_path / "eps", EPS)
    with pytest.warns(UserWarning) as caught:  # what validate.py --model FOLDER scores is built by load_model
        modeling.load_model(eps)
    (warning,) = [str(w.message) for w in caught]
    assert warning.startswith(f"{eps}: the installed code may not be the architecture of these weights (the "
                              f"installed 'blocknet_tiny' gives other outputs from these weights than its saved "
                              f"blocknet.py (max |difference| "), warning
    assert "\n" not in warning and f"from_pretrained('{eps}', trust_remote_code=True)" in warning

    # the verdict is kept for the process: a second load starts no interpreter
    monkeypatch.setattr(refresh_code.subprocess, "run", lambda *a, **k: pytest.fail("checked twice"))
    assert refresh_code.installed_code_warning(eps) == warning
    monkeypatch.undo()
    # a saved copy that cannot run here (a package it imports is missing) is no evidence that the code differs in
    # function: the line says the check could not be made, not that the weights' architecture is another
    missing = saved_with(repos / REPO, tmp_path / "missing", ("import torch\n", "import torch\nimport not_here\n"))
    line = refresh_code.installed_code_warning(missing)
    assert line.startswith(f"{missing}: the installed code differs from the export's blocknet.py and whether it "
                           "computes the same could not be checked (its saved blocknet.py did not run"), line
    assert "No module named 'not_here'" in line and "may not be the architecture" not in line


# ---------------------------------------------------------------- a push over an existing repo, and a Hub that stalls

def tiny_export(folder: Path, seed: int, results: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = modeling.create_model("blocknet_tiny", num_classes=4)
    card = {"dataset": "me/data", "results": results} if results else {}
    return modeling.save_pretrained(model, folder, label_names=ilsvrc.imagenet_wnids()[:4], model_card=card)


def test_a_private_push_to_an_existing_public_repo_is_refused_before_any_upload(monkeypatch, tmp_path):
    """create_repo(private=True, exist_ok=True) leaves an existing repo public: push_to_hub(private=True), the
    start-up check of train.py --hub_private and a dataset push (private unless --public) refuse in one line
    naming the repo and what to do, nothing uploaded; a private repo, or private=False, pushes."""
    from imagenet_trainer import hub_dataset

    folder = tiny_export(tmp_path / "m", 0)
    (tmp_path / "d" / "data").mkdir(parents=True)
    (tmp_path / "d" / "README.md").write_text("---\nlicense: other\n---\n")
    (tmp_path / "d" / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        api = HfApi(token=hub.token)
        api.create_repo("me/tiny")
        api.create_repo("me/imagenet", repo_type="dataset")
        with pytest.raises(ValueError) as e:
            modeling.push_to_hub(folder, "me/tiny", token=hub.token, private=True)
        assert str(e.value) == (f"'me/tiny' is a public repo on the Hub and a private one was asked for; nothing was "
                                f"uploaded: make it private in its settings ({hub.endpoint}/me/tiny/settings) or leave "
                                f"out --hub_private (push_to_hub: private=False)")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        with pytest.raises(ValueError, match="^'me/tiny' is a public repo on the Hub"):
            modeling.check_hub_ready("me/tiny", private=True)
        with pytest.raises(ValueError, match=r"^'me/imagenet' is a public dataset repo .* or pass --public "
                                             r"\(push_dataset: private=False\)$"):
            hub_dataset.push_dataset(tmp_path / "d", "me/imagenet", token=hub.token)
        modeling.check_hub_ready("me/new", private=True)  # no repo yet: created private at the push
        assert [len(hub.repo(r, t).log) for r, t in [("me/tiny", "model"), ("me/imagenet", "dataset")]] == [1, 1]
        assert not any(method == "PUT" or path.endswith(("/commit/main", "/preupload/main"))
                       for method, path in hub.requests)
        modeling.push_to_hub(folder, "me/tiny", token=hub.token)  # public asked: pushes
        hub.repo("me/imagenet", "dataset").private = True
        hub_dataset.push_dataset(tmp_path / "d", "me/imagenet", token=hub.token)
        assert "data/train-00000-of-00001.parquet" in hub.repo("me/imagenet", "dataset").files
        assert len(hub.repo("me/tiny").log) == 2 and not hub.unhandled


def test_a_model_pushed_over_another_deletes_its_eval_results_and_code_in_the_same_commit(monkeypatch, tmp_path):
    """Model A's .eval_results/ and a top-level *.py of another architecture would show A's accuracy and code beside
    B's weights: the push of B deletes them in its one commit; the user's other files (an image, a script in a
    folder) and B's own files stay."""
    a = tiny_export(tmp_path / "a", 0, {"top1": 81.5, "top5": 95.0, "n": 100})
    b = tiny_export(tmp_path / "b", 1)
    assert (a / ".eval_results").is_dir() and not (b / ".eval_results").exists()
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        modeling.push_to_hub(a, "me/tiny", token=hub.token)
        user = {"old_family.py": b"# another architecture\n", "assets/logo.png": b"\x89PNG\0",
                "scripts/demo.py": b"print('demo')\n"}
        HfApi(token=hub.token).create_commit("me/tiny", [CommitOperationAdd(p, d) for p, d in user.items()],
                                             commit_message="user files")
        modeling.push_to_hub(b, "me/tiny", token=hub.token, commit_message="B")
        repo = hub.repo("me/tiny")
        assert sorted(repo.files) == sorted({".gitattributes", "assets/logo.png", "scripts/demo.py", *files_of(b)})
        assert {p: repo.files[p] for p in files_of(b) if p != "README.md"} == \
            {p: d for p, d in files_of(b).items() if p != "README.md"}  # the card: its repo id filled in
        assert [summary for _, summary in repo.log][-2:] == ["user files", "B"] and not hub.unhandled
        modeling.push_to_hub(a, "me/tiny", token=hub.token, commit_message="A again")  # its own files come back
        assert {p: d for p, d in files_of(a).items() if p != "README.md"}.items() <= repo.files.items()


def test_a_card_saved_for_one_repo_and_pushed_to_another_names_the_repo_it_is_in(monkeypatch, tmp_path):
    """train.py writes --hub_model_id into the card's load snippets; a push to another repo (the first refused, a
    mirror) must not tell readers to load the first. A dataset id of the same name is the dataset's: it stays."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4)
    folder = modeling.save_pretrained(model, tmp_path / "m", label_names=ilsvrc.imagenet_wnids()[:4],
                                      model_card={"repo_id": "me/first-try", "dataset": "me/first-try",
                                                  "results": {"top1": 50.0, "top5": 100.0, "n": 8}})
    saved = (folder / "README.md").read_text()
    assert saved.count('"hf-hub:me/first-try"') == 3 and 'model="me/first-try"' in saved
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        modeling.push_to_hub(folder, "me/second-try", token=hub.token)
        card = hub.repo("me/second-try").files["README.md"].decode()
    assert card.count('"hf-hub:me/second-try"') == 3 and 'model="me/second-try"' in card
    assert 'from_pretrained("me/second-try"' in card and '"hf-hub:me/first-try"' not in card
    assert "- me/first-try" in card  # the front matter's datasets: the dataset's own id
    assert (folder / "README.md").read_text() == saved  # the local card as it was


def test_a_downloaded_copy_pushes_what_upload_folder_would(monkeypatch, tmp_path):
    """`hf download REPO --local-dir DIR` leaves .cache/huggingface/ in DIR (the Hub takes no path under .cache/), and
    a kill during an atomic write (validate.py --update_model_card's card, .eval_results/) leaves its temp file: the
    push of DIR uploads neither, as upload_folder would not (huggingface_hub's DEFAULT_IGNORE_PATTERNS), and the
    new repo holds the export's files."""
    source = tiny_export(tmp_path / "source", 0, {"top1": 81.5, "top5": 95.0, "n": 100})
    local = tmp_path / "downloaded"
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        modeling.push_to_hub(source, "me/source", token=hub.token)
        subprocess.run([Path(sys.executable).with_name("hf"), "download", "me/source", "--local-dir", local],
                       env=hub_env(hub, tmp_path / "cli"), check=True, capture_output=True, timeout=300)
        assert any(path.startswith(".cache/huggingface/") for path in files_of(local))
        (local / ".README.md.k2j4h6g8.tmp").write_text("---\nlibrary_name: timm\n")
        (local / ".eval_results" / ".data.yaml.0a1b2c3d.tmp").write_text("[]\n")
        modeling.push_to_hub(local, "me/copy", token=hub.token)
        published = dict(hub.repo("me/copy").files)
        assert not hub.unhandled
    assert sorted(published) == sorted({".gitattributes", *files_of(source)})
    assert {p: published[p] for p in files_of(source) if p != "README.md"} == \
        {p: d for p, d in files_of(source).items() if p != "README.md"}  # the card: its repo id filled in


def test_a_read_only_token_or_a_namespace_not_the_users_is_refused_at_start_up(monkeypatch, tmp_path):
    """The Hub's whoami names the token's role and its user's organizations: a read token, or a repo under another
    user or an organization the user is not in, fails only at the push (403) once training or a dataset export has
    run for hours; check_hub_ready says so before, in one line."""
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        hub.role = "read"
        for repo_type in ("model", "dataset"):
            with pytest.raises(ValueError) as e:
                modeling.check_hub_ready("me/tiny", repo_type=repo_type)
            assert str(e.value).startswith("cannot push to 'me/tiny': the Hugging Face token is read-only; ")
            assert "\n" not in str(e.value) and hub.token not in str(e.value)
        with pytest.raises(Exception, match="403"):  # what the push would have met
            modeling.push_to_hub(tiny_export(tmp_path / "m", 0), "me/tiny")
        hub.role, hub.orgs = "write", ("lab",)
        modeling.check_hub_ready("me/tiny")
        modeling.check_hub_ready("lab/tiny", private=True)
        modeling.check_hub_ready("Lab/tiny")  # the Hub's names ignore case
        with pytest.raises(ValueError) as e:
            modeling.check_hub_ready("facebook/tiny")
        assert str(e.value) == ("cannot push to 'facebook/tiny': the Hugging Face token is me's, who is not a member "
                                "of 'facebook'; push under me/ or one of their organizations, or use a token of "
                                "'facebook'")
        assert not hub.unhandled


def test_a_bad_token_or_a_silent_hub_is_refused_at_start_up_and_a_stalled_push_ends_in_one_line(monkeypatch,
                                                                                               tmp_path):
    """check_hub_ready asks the Hub who the token is: a 401 is one line before training; a Hub behind a firewall
    that takes the connection and never answers is one line after HUB_CHECK_S. A push to it ends after HUB_STALL_S
    without progress in the push's one-line error with its retry hint, not a hang; the token is never shown."""
    import socket

    from huggingface_hub import get_session

    folder = tiny_export(tmp_path / "m", 0)
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        monkeypatch.setenv("HF_TOKEN", "hf_wrongsecret")
        with pytest.raises(ValueError) as e:
            modeling.check_hub_ready("me/tiny")
        assert str(e.value).startswith("cannot push to 'me/tiny': the Hub refuses the Hugging Face token (401")
        assert "hf_wrongsecret" not in str(e.value) and ("GET", "/api/whoami-v2") in hub.requests
        monkeypatch.setenv("HF_TOKEN", hub.token)
        modeling.check_hub_ready("me/tiny")
        assert not hub.unhandled
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    point_this_process_at(type("Silent", (), {"endpoint": endpoint}), monkeypatch, tmp_path / "home")
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecret")
    monkeypatch.setattr(modeling.hub, "HUB_CHECK_S", 0.5)
    monkeypatch.setattr(modeling.hub, "HUB_STALL_S", 0.5)
    before, start = get_session().timeout, time.monotonic()
    try:
        with pytest.raises(ValueError) as e:
            modeling.check_hub_ready("me/tiny")
        assert str(e.value) == (f"cannot push to 'me/tiny': the Hub ({endpoint}) gave no answer within 0.5 s (a "
                                f"firewall or proxy dropping the connection?); fix the network from this machine or "
                                f"do not ask for a push")
        with pytest.raises(OSError) as e:
            modeling.push_to_hub(folder, "me/tiny")
    finally:
        silent.close()
    assert time.monotonic() - start < 30 and get_session().timeout == before
    message = str(e.value)
    assert message.startswith(f"push of {folder} to 'me/tiny' failed (ReadTimeout: no answer for 0.5 s); the folder "
                              f"is unchanged, retry with modeling.push_to_hub"), message
    assert "\n" not in message and "hf_secretsecret" not in message


def test_the_stall_limit_survives_the_new_client_a_connection_error_brings():
    """huggingface_hub's retries close their HTTP client after a connection error and build another from the client
    factory: the stall limit is in the factory, so a Hub that refuses a connect and then takes one and never answers
    still ends in a timeout, not a hang; after the block the factory is as before."""
    import socket
    import threading

    from huggingface_hub.utils import _http, http_backoff

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # closed: the first connect is refused
    taken = []

    def black_hole():
        time.sleep(0.3)
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(8)  # the kernel completes the handshakes; nothing ever answers
        taken.append(server)

    threading.Thread(target=black_hole, daemon=True).start()
    factory, start = _http._GLOBAL_CLIENT_FACTORY, time.monotonic()
    try:
        with pytest.raises(Exception) as e, modeling.hub.stall_limit(0.5):
            http_backoff("GET", f"http://127.0.0.1:{port}/api/whoami-v2", max_retries=2, base_wait_time=0.5)
    finally:
        for server in taken:
            server.close()
    assert taken and modeling.hub._timed_out(e.value), repr(e.value)
    assert time.monotonic() - start < 10 and _http._GLOBAL_CLIENT_FACTORY is factory
