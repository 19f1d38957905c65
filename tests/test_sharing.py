"""Sharing as a user meets it: the package installs with pip, and every code block of a generated model card runs,
as written, against the exported folder, in a process that sees no checkout."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

import modeling
from imagenet_trainer import runinfo
from test_modeling import import_two_file_family, scratch_registry  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["digit 0", "digit 1", "digit 2", "digit 3"]
CARD = {"repo_id": "me/tiny", "dataset": "me/digits", "epochs": 2, "recipe": {"lr": 0.1, "epochs": 2},
        "results": {"top1": 50.0, "top5": 100.0, "n": 8}}

# runs each ```python block of a card in a fresh namespace, the Hub id replaced by the local folder (repo "-": as is)
RUNNER = r"""
import contextlib, io, json, sys
card, folder, repo = sys.argv[1:]
blocks = __import__("re").findall(r"```python\n(.*?)```", open(card).read(), flags=__import__("re").S)
outputs = []
for block in blocks:
    code = block if repo == "-" else block.replace(f'"hf-hub:{repo}"', repr(f"local-dir:{folder}")).replace(
        f'"{repo}"', repr(folder))  # "-": as printed, for a Hub (tests/hub_server.py) that serves the repo id
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<card block>", "exec"), {"__name__": "__main__"})
    outputs.append(out.getvalue())
mods = sys.modules
print("RESULT " + json.dumps({"outputs": outputs, "n": len(blocks),
                              "modeling": getattr(mods.get("modeling"), "__file__", None)}))
"""


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), **extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` of the project (its pyproject.toml) into a folder of its own, from a copy of the sources so the
    checkout gets no build/ or egg-info."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("modeling", "imagenet_trainer"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(base / "site"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "site"


def run_card(folder: Path, workdir: Path, env: dict, isolated: bool, card: Path | None = None,
             repo: str = "me/tiny") -> dict:
    workdir.mkdir()
    shutil.copy(PHOTO, workdir / "photo.jpg")  # the file name the card's snippets open
    flags = ["-I"] if isolated else ["-P", "-s"]  # -P: the working folder is not on sys.path either
    proc = subprocess.run([sys.executable, *flags, "-c", RUNNER, str(card or folder / "README.md"), str(folder), repo],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_pip_install_and_every_card_block_of_our_design_runs(installed, tmp_path):
    """blocknet_tiny: the card's timm blocks work after `pip install` (local-dir load, features_only, embeddings),
    its transformers block with trust_remote_code; top-k is clipped to the 4 classes; names are human."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "tiny", label_names=WNIDS, label_descriptions=NAMES,
                                      model_card=CARD)
    out = run_card(folder, tmp_path / "work", clean_env(tmp_path, PYTHONPATH=str(installed)), isolated=False)
    assert out["n"] == 4  # classification, feature maps, embeddings, transformers
    assert out["modeling"].startswith(str(installed))  # the installed copy, not the checkout
    classification, features, embeddings, *_ = out["outputs"]
    assert len(classification.splitlines()) == 4 and all(line.split(":")[0] in NAMES
                                                         for line in classification.splitlines())
    assert "torch.Size([1, 16, 32, 32])" in features and "[16, 16, 32, 64, 128] [2, 4, 8, 16, 32]" in features
    assert "torch.Size([1, 128])" in embeddings
    assert all(name in out["outputs"][-1] for name in NAMES)  # the pipeline's answer: human names


def test_every_card_block_of_a_zoo_export_runs_with_no_project_code(tmp_path):
    torch.manual_seed(0)
    model = modeling.create_model("resnet18", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "r18", label_names=WNIDS, label_descriptions=NAMES,
                                      pretrained_cfg={"input_size": (3, 64, 64)}, model_card=CARD)
    text = (folder / "README.md").read_text()
    assert "trust_remote_code" not in text and "import modeling" not in text and not list(folder.glob("*.py"))
    out = run_card(folder, tmp_path / "work", clean_env(tmp_path), isolated=True)
    assert out["n"] == 4 and out["modeling"] is None
    assert re.search(r"\[64, 64, 128, 256, 512\] \[2, 4, 8, 16, 32\]", out["outputs"][1])
    assert all(name in out["outputs"][-1] for name in NAMES)


def test_timm_blocks_of_a_family_split_over_two_files_run_as_printed(tmp_path, monkeypatch, scratch_registry):
    """A user family whose file imports its neighbour (`from .twolayers import ConvBnAct`): the card's timm blocks,
    run as printed against tests/hub_server.py's Hub in an interpreter that sees neither this project nor the
    family's own folder, fetch the copies and import them as a package (a plain `import twofile` of the copy fails:
    attempted relative import with no known parent package)."""
    from hub_server import LocalHub

    import_two_file_family(tmp_path, monkeypatch, "from .twolayers import ConvBnAct as twolayers_stem")
    torch.manual_seed(0)
    model = modeling.create_model("mynet_two_small", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "export", label_names=WNIDS, label_descriptions=NAMES,
                                      pretrained_cfg={"input_size": (3, 32, 32)},
                                      model_card={**CARD, "repo_id": "me/twofile"})
    assert sorted(p.name for p in folder.glob("*.py")) == ["modeling_twofile.py", "twofile.py", "twolayers.py"]
    timm_blocks = tmp_path / "timm_blocks.md"  # the transformers block is another route (trust_remote_code)
    timm_blocks.write_text((folder / "README.md").read_text().split("### transformers")[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    with LocalHub({"me/twofile": folder}) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1")
        out = run_card(folder, tmp_path / "work", env, isolated=True, card=timm_blocks, repo="-")
        assert not hub.unhandled
    assert out["n"] == 3 and out["modeling"] is None  # classification, feature maps, embeddings
    classification, features, embeddings = out["outputs"]
    assert sorted(line.split(":")[0] for line in classification.splitlines()) == sorted(NAMES)
    assert "torch.Size([1, 32, 16, 16])" in features and "torch.Size([1, 64])" in embeddings


def test_demo_tree_describes_what_its_images_show(tmp_path):
    """Real ILSVRC wnids (the layout and ids are ImageNet's), honest names: a digits model never answers "tench"."""
    from imagenet_trainer import ilsvrc
    from imagenet_trainer.demo import make_ilsvrc_tree

    tree = make_ilsvrc_tree(tmp_path / "digits", source="digits", num_classes=3, train_per_class=1, val_per_class=1,
                            num_test=1)
    wnids, descriptions = ilsvrc.read_synset_mapping(tree / ilsvrc.SYNSET_MAPPING)
    assert wnids == ilsvrc.imagenet_wnids()[:3] and descriptions == ["digit 0", "digit 1", "digit 2"]
    photos = make_ilsvrc_tree(tmp_path / "photos", source="photos", num_classes=12, train_per_class=1,
                              val_per_class=1, num_test=1)
    _, descriptions = ilsvrc.read_synset_mapping(photos / ilsvrc.SYNSET_MAPPING)
    assert descriptions[:2] == ["astronaut", "chelsea"] and descriptions[10] == "astronaut (variant 1)"
    assert len(set(descriptions)) == 12


# used without an import statement: tensorboard (accelerate's --report_to tracker), turbojpeg (its libturbojpeg is
# loaded through ctypes), ipykernel (runs the notebooks), pytest, its pytest-xdist plugin (make test's -n) and the
# notebook runners (the tests themselves)
NOT_IMPORTED = {"tensorboard", "turbojpeg", "ipykernel", "pytest", "pytest-xdist", "nbclient", "nbformat"}


def test_every_requirement_is_used():
    """requirements.txt lists no dependency that nothing uses (the project once installed `evaluate` for nothing)."""
    import ast
    from importlib.metadata import packages_distributions

    dists = {d.lower().replace("_", "-") for mods in packages_distributions().values() for d in mods}
    by_module = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in packages_distributions().items()}
    imported = set()
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                match = re.match(r"\s*(?:from|import)\s+([A-Za-z_]\w*)", line)
                if match:
                    imported.add(match.group(1))
    used = {d for m in imported for d in by_module.get(m, ())}
    requirements = [line.split("==")[0].strip().lower().replace("_", "-") for line in
                    (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "evaluate" not in requirements
    unused = [r for r in requirements if r in dists and r not in used and r not in NOT_IMPORTED]
    assert unused == [], f"requirements.txt lists {unused}, which nothing imports"


@pytest.fixture(scope="module")
def parquet_copy(preprocessed, tmp_path_factory) -> Path:
    """imagenet_trainer.hub_dataset's Hub layout of the preprocess.py fixture (with the provenance preprocess.py
    records beside its output)."""
    from imagenet_trainer.hub_dataset import export_parquet

    base = tmp_path_factory.mktemp("parquet")
    data = base / "imagenet"
    shutil.copytree(preprocessed, data)
    (data / "source.json").write_text(json.dumps({
        "layout": "ilsvrc-kaggle", "name": "ILSVRC-2012", "ilsvrc2012_full": False, "num_classes": 4,
        "counts": {"train": 24, "validation": 8}, "val_fraction": None, "split_seed": None}))
    return export_parquet(data, base / "imagenet-parquet", shard_bytes=20_000)  # several shards per split


def test_parquet_copy_keeps_labels_and_human_names(preprocessed, parquet_copy):
    import datasets
    import huggingface_hub

    from imagenet_trainer.data import Rows, load_image_dataset
    from imagenet_trainer.ilsvrc import class_descriptions

    original = datasets.load_from_disk(str(preprocessed))
    copy = load_image_dataset(str(parquet_copy))  # what train.py/validate.py --dataset FOLDER read
    assert sorted(copy) == sorted(original)
    assert len(list((parquet_copy / "data").glob("train-*.parquet"))) > 1
    for name in original:
        assert copy[name].features["label"].names == original[name].features["label"].names
        assert len(copy[name]) == len(original[name])
        rows, before = Rows(copy[name]), Rows(original[name])
        assert [(bytes(rows[i][0]), rows[i][1]) for i in range(len(rows))] == [
            (bytes(before[i][0]), before[i][1]) for i in range(len(before))]
    names = class_descriptions(copy)
    assert names == class_descriptions(preprocessed) and names[0] == "astronaut"  # not the wnid's "tench"

    card = huggingface_hub.DatasetCard.load(parquet_copy / "README.md")
    assert card.data.pretty_name == "ILSVRC-2012" and card.data.task_categories == ["image-classification"]
    assert "| 0 | n01440764 | astronaut |" in card.text and "24 train" in card.text
    assert "forbid redistributing" in card.text  # ImageNet's terms, said where the push happens
    assert json.loads((parquet_copy / "source.json").read_text())["name"] == "ILSVRC-2012"


def test_train_runs_on_the_parquet_copy_with_its_human_names(parquet_copy, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "blocknet_tiny", "--dataset",
                           str(parquet_copy), "--output_dir", str(out), "--image_size", "32", "--batch_size", "8",
                           "--epochs", "1", "--max_train_steps", "1", "--num_workers", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = list(json.loads((out / "final" / "config.json").read_text())["id2label"].values())
    assert labels[:2] == ["astronaut", "chelsea"]


# a user on another machine: the pushed dataset by Hub id, through datasets and through train.py's loader
LOAD_DATASET = r"""
import hashlib, json, sys
import datasets
from imagenet_trainer.data import Rows, load_image_dataset
from imagenet_trainer.ilsvrc import class_descriptions
plain, ds = datasets.load_dataset(sys.argv[1]), load_image_dataset(sys.argv[1])
result = {"plain": {name: len(split) for name, split in plain.items()}, "names": class_descriptions(ds)}
for name, split in ds.items():
    rows = Rows(split)
    result[name] = [split.features["label"].names,
                    [[hashlib.sha256(bytes(rows[i][0])).hexdigest(), rows[i][1]] for i in range(len(rows))]]
print("RESULT " + json.dumps(result))
"""


def test_dataset_push_then_load_by_hub_id(preprocessed, parquet_copy, monkeypatch, tmp_path):
    """python -m imagenet_trainer.hub_dataset --push_to_hub, to tests/hub_server.py's local Hub: a private repo
    (ImageNet's terms) holding the folder's files, Parquet as LFS; then datasets.load_dataset and load_image_dataset
    by Hub id in a fresh interpreter give the preprocess.py output's rows, labels and human names. A wrong token and
    a refused commit end in one line without the token, the folder as it was."""
    import datasets

    from hub_server import LocalHub, point_this_process_at
    from imagenet_trainer import hub_dataset
    from imagenet_trainer.data import Rows

    home, out = tmp_path / "hf-home", tmp_path / "pq"
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, home)
        with pytest.raises(ValueError, match="no Hugging Face token"):
            hub_dataset.push_dataset(parquet_copy, "me/imagenet")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        hub_dataset.main(["--dataset", str(parquet_copy.parent / "imagenet"), "--output_dir", str(out),
                          "--push_to_hub", "me/imagenet"])
        repo = hub.repo("me/imagenet", "dataset")
        local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert repo.private and {"README.md", "class_descriptions.json", "source.json"} < set(local)
        assert {name: data for name, data in repo.files.items() if name != ".gitattributes"} == local
        assert repo.lfs == {name for name in local if name.endswith(".parquet")} and len(repo.lfs) > 2

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_TOKEN=hub.token, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", LOAD_DATASET, "me/imagenet"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not hub.unhandled

        head = repo.commit
        monkeypatch.setenv("HF_TOKEN", "hf_wrongsecret")
        with pytest.raises(SystemExit) as e:  # refused by the start-up check (whoami), before any export
            hub_dataset.main(["--dataset", str(parquet_copy.parent / "imagenet"), "--output_dir", str(out),
                              "--push_to_hub", "me/imagenet"])
        assert str(e.value.code).startswith("error: cannot push to 'me/imagenet': the Hub refuses the Hugging Face "
                                            "token (401: invalid or expired)"), e.value.code
        with pytest.raises(OSError) as e:
            hub_dataset.push_dataset(out, "me/imagenet", token="hf_wrongsecret")
        message = f"error: {e.value}"
        assert message.startswith(f"error: push of {out} to dataset 'me/imagenet' failed (HfHubHTTPError: "), message
        assert "'401 Unauthorized'" in message and "\n" not in message and "hf_wrongsecret" not in message
        assert "the Hub says: Invalid credentials in Authorization header" in message  # its reason, kept
        assert message.endswith("retry with the same python -m imagenet_trainer.hub_dataset command (it finds the "
                                "finished export and only pushes)")
        hub.refuse["commit"] = 500
        before = {p.relative_to(parquet_copy): p.read_bytes() for p in parquet_copy.rglob("*") if p.is_file()}
        with pytest.raises(OSError, match=r"'500 Internal Server Error'.*; the folder is unchanged") as e:
            hub_dataset.push_dataset(parquet_copy, "me/imagenet", token=hub.token)  # other shards: a new commit
        assert "\n" not in str(e.value) and hub.token not in str(e.value) and repo.commit == head
        assert {p.relative_to(parquet_copy): p.read_bytes() for p in parquet_copy.rglob("*") if p.is_file()} == before

    loaded = json.loads(proc.stdout.split("RESULT ", 1)[1])
    original = datasets.load_from_disk(str(preprocessed))
    assert loaded["plain"] == {name: len(split) for name, split in original.items()}
    assert loaded["names"][0] == "astronaut"  # class_descriptions.json came along, not the wnid's "tench"
    for name, split in original.items():
        rows = Rows(split)
        assert loaded[name] == [split.features["label"].names, [
            [hashlib.sha256(bytes(rows[i][0])).hexdigest(), rows[i][1]] for i in range(len(rows))]]


@pytest.mark.parametrize("remote, expected", [
    ("https://user:hf_secret@github.com/me/imagenet-trainer.git", "git+https://github.com/me/imagenet-trainer.git"),
    ("git@github.com:me/imagenet-trainer.git", "git+ssh://git@github.com/me/imagenet-trainer.git"),
    ("/srv/git/imagenet-trainer", None)])  # a local path installs nowhere else
def test_card_pip_line_names_the_code_that_trained_it_without_credentials(tmp_path, remote, expected):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "f.txt").write_text("x")
    git("add", "f.txt")
    git("-c", "user.name=u", "-c", "user.email=u@e", "commit", "-qm", "c")
    git("remote", "add", "origin", remote)
    sha = git("rev-parse", "HEAD").strip()
    runinfo.git_install_url.cache_clear()
    assert runinfo.git_install_url(tmp_path) is None  # committed, never pushed: nowhere to install it from
    git("update-ref", "refs/remotes/origin/main", sha)  # what a push (or a fetch of a pushed branch) records
    runinfo.git_install_url.cache_clear()
    url = runinfo.git_install_url(tmp_path)
    assert url == (f"{expected}@{sha}" if expected else None)
    assert url is None or "secret" not in url
    (tmp_path / "f.txt").write_text("changed")  # uncommitted code is nowhere to install from
    runinfo.git_install_url.cache_clear()
    assert runinfo.git_install_url(tmp_path) is None


def test_a_parquet_folder_exported_anew_is_not_read_from_a_stale_cache(tmp_path, monkeypatch):
    """datasets keys its Arrow cache of a local folder whose README lists configs (the Hub layout) by the folder's
    name and README alone; load_image_dataset must give the rows now on disk: after a re-export into the same
    folder, and for another folder of the same name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagenet_trainer.data import Rows, load_image_dataset

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    readme = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
              "    path: data/train-*.parquet\n---\n")

    def export(folder: Path, payload: bytes) -> Path:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"image": [payload, payload + b"!"], "label": [0, 1]}),
                       folder / "data" / "train-00000-of-00001.parquet")
        (folder / "README.md").write_text(readme)
        return folder

    def first_image(folder: Path) -> bytes:
        return bytes(Rows(load_image_dataset(str(folder))["train"])[0][0])

    first = export(tmp_path / "a" / "imagenet-parquet", b"old export")
    assert first_image(first) == b"old export"
    export(first, b"new export, same folder")
    assert first_image(first) == b"new export, same folder"
    other = export(tmp_path / "b" / "imagenet-parquet", b"another folder of that name")
    assert first_image(other) == b"another folder of that name"


def test_a_new_card_text_reuses_the_cached_copy_and_new_class_names_do_not(tmp_path, monkeypatch):
    """A rerun of the export after source.json changed rewrites README.md, source.json and class_descriptions.json
    only: the load reads the Arrow copy it made before (converting ImageNet again would take hours and another
    ~150 GB beside the first). Other ClassLabel names in the card's dataset_info are other rows: a new copy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagenet_trainer.data import load_image_dataset
    from imagenet_trainer.ilsvrc import class_descriptions

    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(cache))
    folder = tmp_path / "imagenet-parquet"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"image": [b"a", b"b"], "label": [0, 1]}), folder / "data" / "train-00000-of-00001.parquet")

    def card(name: str, wnids: list[str], descriptions: list[str]) -> None:
        labels = "".join(f"          '{i}': {w}\n" for i, w in enumerate(wnids))
        (folder / "README.md").write_text(
            f"---\npretty_name: {name}\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train-*.parquet\ndataset_info:\n  features:\n  - name: image\n    dtype: binary\n"
            f"  - name: label\n    dtype:\n      class_label:\n        names:\n{labels}---\n\n# {name}\n")
        (folder / "source.json").write_text(json.dumps({"name": name}))
        (folder / "class_descriptions.json").write_text(json.dumps(descriptions))

    def load() -> tuple[list[str], list[str], list[Path]]:
        train = load_image_dataset(str(folder))["train"]
        return train.features["label"].names, class_descriptions(train), sorted((cache / "local").iterdir())

    card("kaggle", ["n01440764", "n01443537"], ["tench", "goldfish"])
    names, described, copies = load()
    assert names == ["n01440764", "n01443537"] and described == ["tench", "goldfish"] and len(copies) == 1
    card("my ImageNet copy", ["n01440764", "n01443537"], ["tench fish", "goldfish"])
    assert load() == (names, ["tench fish", "goldfish"], copies)
    card("my ImageNet copy", ["n01484850", "n01491361"], ["great white shark", "tiger shark"])
    names, described, now = load()
    assert names == ["n01484850", "n01491361"] and len(now) == 2 and set(copies) < set(now)


def test_an_export_into_a_new_folder_leaves_a_users_old_folder_beside_it(tmp_path):
    """runinfo.replace_dir moves FOLDER aside as .FOLDER.old only when it replaces it: an export into a new folder
    (train.py's final/, hub_dataset's) leaves a folder of the user's of that name alone."""
    mine = tmp_path / ".final.old"
    mine.mkdir()
    (mine / "my_notes.txt").write_text("notes\n")
    model = modeling.create_model("blocknet_tiny", num_classes=3)
    modeling.save_pretrained(model, tmp_path / "final", label_names=["n01440764", "n01443537", "n01484850"])
    assert (mine / "my_notes.txt").read_text() == "notes\n" and (tmp_path / "final" / "model.safetensors").is_file()


def users_thing(path: Path, kind: str) -> dict:
    """A user's folder, link to a folder or file named like an export's leftover; returns what it holds."""
    if kind == "folder":
        (path / "data").mkdir(parents=True)  # the names an export's folder holds, and a file of theirs
        (path / "data" / "thesis.parquet").write_bytes(b"3 years of work")
        (path / "notes.txt").write_text("mine\n")
    elif kind == "link":
        target = path.parent / f"mine{path.name}"
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
        path.symlink_to(target)
    else:
        path.write_text("mine\n")
    return snapshot(path)


def snapshot(path: Path) -> dict:
    if path.is_symlink() or path.is_file():
        return {".": os.readlink(path) if path.is_symlink() else path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("kind", ["folder", "link", "file"])
def test_hub_dataset_deletes_only_the_old_export_it_left_itself(kind, preprocessed, tmp_path, monkeypatch, capsys):
    """.OUT.old is where an export moves the OUT it replaces (runinfo.replace_dir, marked with runinfo's note) until
    the new one is in: a user's folder, link or file of that name (and of an old version's .OUT.tmp-* name) survives
    every run, an export that must replace OUT refuses before any work in one line, and the tool's own leftover of a
    killed run is removed by the next one."""
    from imagenet_trainer import hub_dataset

    out, old = tmp_path / "imagenet-parquet", tmp_path / ".imagenet-parquet.old"
    theirs, their_tmp = users_thing(old, kind), users_thing(tmp_path / ".imagenet-parquet.tmp-mine", kind)
    stale = tmp_path / ".imagenet-parquet.tmp-k3x9q0a1"  # what a cut export of an earlier version left: goes
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "train-00000-of-00009.parquet.part").write_bytes(b"x" * 1000)
    args = ["--dataset", str(preprocessed), "--output_dir", str(out)]
    hub_dataset.main(args)  # OUT new: nothing to move aside
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and f"removed {stale} (0.0 GB)" in said and not stale.exists()
    assert "imagenet-parquet.old" not in said and "tmp-mine" not in said
    hub_dataset.main(args)  # done: nothing written
    assert "nothing to write" in capsys.readouterr().out

    # a shard grown by a byte: no longer this export, the rerun replaces OUT, which needs .OUT.old
    shard = next((out / "data").glob("train-*.parquet")).relative_to(out)
    damaged = (out / shard).read_bytes() + b"x"
    (out / shard).write_bytes(damaged)
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(args)
    assert str(e.value.code) == (
        f"error: --output_dir {out}: an export replaces it by moving it to {old} first, which holds something else (a "
        "file, link or folder of yours?); move it away or rename it, then run again")
    assert snapshot(old) == theirs and snapshot(tmp_path / ".imagenet-parquet.tmp-mine") == their_tmp
    assert (out / shard).read_bytes() == damaged and not (tmp_path / ".imagenet-parquet.tmp").exists()

    # the user moves theirs away; the rerun is killed after the new export went in, before deleting the old one
    shutil.move(old, tmp_path / "moved")
    monkeypatch.setattr(runinfo, "delete_replaced", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        hub_dataset.main(args)
    monkeypatch.undo()
    assert (old / shard).read_bytes() == damaged and (out / shard).read_bytes() != damaged
    hub_dataset.main(args)
    assert f"removed {old} (0.0 GB): an earlier export, replaced" in capsys.readouterr().out
    assert not old.exists() and not (out / runinfo.REPLACED_NOTE).parent.exists()
    assert snapshot(tmp_path / "moved") == theirs and snapshot(tmp_path / ".imagenet-parquet.tmp-mine") == their_tmp
