"""imagenet_trainer/data.py on real JPEGs (scikit-image's photos) in real memory-mapped Arrow files.

The fast path (header-only crop sampling, DCT-scaled decoding, crop-then-resize in uint8) is checked against
torchvision's own transforms on the same bytes; speed lives in benchmarks/loader.py."""
import io
import itertools
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
import skimage.data
import timm
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
import turbojpeg
from accelerate import Accelerator
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg

import train
import validate
from imagenet_trainer import bad_samples, demo_archives, eval_suite, ilsvrc
from imagenet_trainer.bad_samples import BadSamples, RecordingLoader
from imagenet_trainer.config import parse_config
from imagenet_trainer.data import (EvalSet, ResumableSampler, Rows, TrainSet, check_labels, collate, elastic_position,
                                   load_image_dataset, micro_batch_seed, mixup_cutmix, normalize, random_erasing,
                                   random_resized_crop_params, replacement_row, sample_rng)
from imagenet_trainer.data.samples import UnreplaceableRow
from imagenet_trainer.data.decode import dct_factor, exif_orientation, resize_uint8
from imagenet_trainer.robustness import RealLabels

WNIDS = ["n01440764", "n01443537", "n01484850"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _jpeg(pixels: np.ndarray, size=None, quality=90, **save) -> bytes:
    image = Image.fromarray(pixels)
    if size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def _rotated_exif_jpeg(pixels: np.ndarray) -> bytes:
    """Stored turned 90 degrees clockwise with EXIF orientation 6 ("rotate 90 CW to display"): displays upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _photos() -> dict[str, bytes]:
    """Real photos at ImageNet-like and larger sizes, plus ImageNet's odd files (a PNG named .JPEG, CMYK JPEGs,
    EXIF-rotated photos)."""
    png = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(png, "PNG")  # like n02105855_2933: a PNG named .JPEG
    cmyk = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).convert("CMYK").save(cmyk, "JPEG", quality=90)
    big = np.asarray(Image.fromarray(skimage.data.retina()).resize((1400, 1050), Image.Resampling.BICUBIC))
    return {
        "astronaut": _jpeg(skimage.data.astronaut()),  # 512x512
        "chelsea": _jpeg(skimage.data.chelsea(), (500, 333)),
        "coffee": _jpeg(skimage.data.coffee(), (375, 500)),
        "rocket_progressive": _jpeg(skimage.data.rocket(), progressive=True),  # 427x640
        "retina": _jpeg(skimage.data.retina(), (1400, 1050)),  # big: crops decode at 1/2..1/4
        "hubble_small": _jpeg(skimage.data.hubble_deep_field(), (200, 150)),  # smaller than the crop: upsampled
        "camera_gray": _jpeg(skimage.data.camera()),
        "cmyk": cmyk.getvalue(),
        "png_named_jpeg": png.getvalue(),
        "exif_rotated": _rotated_exif_jpeg(skimage.data.coffee()),
        "coffee_upright": _jpeg(skimage.data.coffee(), quality=95),
        # not in ImageNet, but in users' own images: a lossless JPEG (SOF3, no DCT) big enough that its crops and
        # its evaluation resize would be decoded at a reduced scale, which libjpeg cannot do for it (a crash)
        "retina_lossless": turbojpeg.compress(big, 100, turbojpeg.SAMP.Y444, lossless=True),
    }


FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=WNIDS)})


def _split(photos: dict[str, bytes]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": f"{name}.JPEG"} for name, b in photos.items()],
         "label": [k % len(WNIDS) for k in range(len(photos))]}, features=FEATURES)


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, photos):
    """preprocess.py's layout: a DatasetDict saved with save_to_disk; the validation split is named "val" here."""
    path = tmp_path_factory.mktemp("ds") / "imagenet"
    split = _split(photos)
    datasets.DatasetDict({"train": split, "val": split}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def ds(dataset_dir):
    return load_image_dataset(str(dataset_dir))


def _index(photos, name):
    return list(photos).index(name)


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# ---------------------------------------------------------------------------------------------------------------
# load_image_dataset


def test_load_from_disk_renames_val_and_memory_maps(ds, photos):
    assert set(ds) == {"train", "validation"}
    assert ds["validation"].features["label"].names == WNIDS
    assert len(ds["train"]) == len(photos)
    assert ds["train"].cache_files, "load_from_disk must give memory-mapped Arrow files, not an in-memory table"


def test_load_missing_path_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such folder") as info:
        load_image_dataset(str(tmp_path / "nope"))
    assert "\n" not in str(info.value) and str(tmp_path / "nope") in str(info.value)


@pytest.mark.parametrize("folder", ["foo", "other"])
def test_load_script_dataset_points_to_preprocess(tmp_path, folder, monkeypatch):
    """A Hub-style repo whose only content is a loading script (datasets 5.x no longer runs them)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / folder
    repo.mkdir()
    (repo / "foo.py").write_text("import datasets\nclass Foo(datasets.GeneratorBasedBuilder):\n    pass\n")
    with pytest.raises(ValueError, match="preprocess.py") as info:
        load_image_dataset(str(repo))
    assert "foo.py" in str(info.value) and "\n" not in str(info.value)


def test_load_parquet_folder_like_a_hub_clone(tmp_path, photos, monkeypatch):
    """The load_dataset branch, offline: a Parquet-backed image dataset laid out as on the Hub (data/<split>-*)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / "user__imagenet-mini"
    (repo / "data").mkdir(parents=True)
    split = _split(dict(list(photos.items())[:3]))
    split.to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    split.to_parquet(str(repo / "data" / "val-00000-of-00001.parquet"))
    ds = load_image_dataset(str(repo))
    assert set(ds) == {"train", "validation"} and len(ds["train"]) == 3
    image, label = EvalSet(ds["validation"], 64)[1]
    assert image.shape == (3, 64, 64) and label == 1


@pytest.fixture(scope="module")
def hub_imagenet(ilsvrc_tree, tmp_path_factory):
    """ILSVRC/imagenet-1k as `hf download` gives it today, on the demo tree's images: Parquet labelled by the Hub's
    1000 human names ("crane2" at 517), test labels -1, no classes.py."""
    return demo_archives.hub_parquet(ilsvrc_tree, tmp_path_factory.mktemp("hub") / "imagenet-1k",
                                     imagenet_names=True, classes_py=False)


def test_the_hubs_imagenet_loads_labelled_by_wnids_with_descriptions_and_image_ids(hub_imagenet, ilsvrc_tree,
                                                                                   tmp_path, monkeypatch):
    """The same label indices, named by the sorted wnids as preprocess.py names them; the human names as the
    descriptions ("crane" twice, as Kaggle's list has them); the image id ReaL's labels key on; the unlabelled test
    split not converted to Arrow. A subset with its classes.py is recognised by that file's names."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    ds = load_image_dataset(str(hub_imagenet))
    assert list(ds) == ["train", "validation"]
    arrow = sorted(p.name for p in (tmp_path / "cache").rglob("*.arrow"))
    assert len(arrow) == 2 and not any("test" in name for name in arrow)
    val, raw = ds["validation"], pq.read_table(hub_imagenet / "data" / "validation-00000-of-00001.parquet")
    assert check_labels(val) == ilsvrc.imagenet_wnids() and val["label"] == raw.column("label").to_pylist()
    names = ilsvrc.class_descriptions(ds)
    assert names[0] == "tench, Tinca tinca" and names[517] == names[134] == "crane"
    stems = sorted(json.loads((ilsvrc_tree / "demo_manifest.json").read_text())["val_labels"])
    assert val["image_id"] == stems and stems[0] == "ILSVRC2012_val_00000001"  # the file names end in _<wnid>
    assert RealLabels([[k] for k in range(len(stems))], val["image_id"]).sets[-1] == {len(stems) - 1}
    wnids = ilsvrc.imagenet_wnids()
    assert all(i.count("_") == 1 and i.split("_")[0] == wnids[label]  # n01440764_10026, as Kaggle's tree names it
               for i, label in zip(ds["train"]["image_id"], ds["train"]["label"]))

    subset = demo_archives.hub_parquet(ilsvrc_tree, tmp_path / "subset")  # the tree's 4 classes in its classes.py
    manifest = json.loads((ilsvrc_tree / "demo_manifest.json").read_text())
    ds = load_image_dataset(str(subset))
    assert check_labels(ds["validation"]) == manifest["wnids"]
    assert ilsvrc.class_descriptions(ds) == manifest["descriptions"]


@pytest.mark.parametrize("kept", [("train", "validation"), ("validation",)])
def test_the_hubs_imagenet_loads_without_the_splits_hf_download_left_out(kept, hub_imagenet, tmp_path, monkeypatch):
    """`hf download ILSVRC/imagenet-1k --include "data/validation-*"` (the card still lists all three splits)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    part = tmp_path / "part"
    shutil.copytree(hub_imagenet, part)
    for f in (part / "data").iterdir():
        if not f.name.startswith(kept):
            f.unlink()
    ds = load_image_dataset(str(part))
    assert list(ds) == list(kept) and check_labels(ds["validation"]) == ilsvrc.imagenet_wnids()
    assert ds["validation"][0]["image_id"] == "ILSVRC2012_val_00000001"


def test_hub_names_off_timms_say_so_and_classes_py_is_not_fetched_offline(hub_imagenet, tmp_path, monkeypatch,
                                                                          capsys):
    """Names a little off timm's and no classes.py: one line naming the file to add. With HF_DATASETS_OFFLINE=1
    alone (huggingface_hub still online) classes.py is looked up in the Hub cache only."""
    import huggingface_hub

    from imagenet_trainer.data import sources

    names = list(datasets.load_dataset(str(hub_imagenet), data_files=sources._splits_in_use(hub_imagenet),
                                       cache_dir=str(tmp_path / "c"))["validation"].features["label"].names)
    names[3] = names[3] + " "  # a rename timm does not have
    ds = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"label": [0]}, features=datasets.Features({"label": datasets.ClassLabel(names=names)}))})
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(k) or 1 / 0)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    sources._as_imagenet(ds, lambda: sources._classes_of("ILSVRC/imagenet-1k"))
    assert calls == [{"repo_type": "dataset", "local_files_only": True}]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "classes.py beside data/" in out and ds["validation"].features["label"].names[3] \
        == names[3]


def test_offline_hub_id_is_read_from_the_hub_cache_or_names_both_caches(hub_imagenet, tmp_path, monkeypatch):
    """`hf download ILSVRC/imagenet-1k --repo-type dataset` on a connected machine fills the Hub cache
    (datasets--OWNER--NAME/snapshots/<commit>/, refs/main), not datasets' own: offline, --dataset ILSVRC/imagenet-1k
    reads that snapshot. A repo in neither cache is one line naming the flag, the repo, both caches and the command
    that fetches it."""
    repo, commit = tmp_path / "hub" / "datasets--ILSVRC--imagenet-1k", "0d2e41ea6f66f65da49f86a668d06efa094374dd"
    shutil.copytree(hub_imagenet, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    offline_with_caches(monkeypatch, tmp_path / "hub", tmp_path / "datasets")
    ds = load_image_dataset("ILSVRC/imagenet-1k")
    assert list(ds) == ["train", "validation"] and check_labels(ds["validation"]) == ilsvrc.imagenet_wnids()
    with pytest.raises(ValueError) as e:
        load_image_dataset("someone/elsewhere")
    assert str(e.value) == (
        "HF_HUB_OFFLINE=1 is set and Hub dataset someone/elsewhere is in neither datasets' cache (HF_DATASETS_CACHE="
        f"{tmp_path / 'datasets'}) nor the Hub cache (HF_HUB_CACHE={tmp_path / 'hub'}): on a connected machine run "
        "`hf download someone/elsewhere --repo-type dataset` (with the same HF_HOME), or give --dataset the folder")


def offline_with_caches(monkeypatch, hub_cache: Path, datasets_cache: Path) -> None:
    """HF_HUB_OFFLINE=1, as datasets and huggingface_hub read it at import, with these cache folders."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module in (datasets.config, hf_constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(datasets_cache))


def test_offline_hub_id_downloaded_with_some_splits_loads_the_splits_it_has(hub_imagenet, tmp_path, monkeypatch):
    """`hf download OWNER/NAME --repo-type dataset --include "data/validation-*"` on a connected machine (here
    tests/hub_server.py's Hub) caches the repo's file list with the files: offline, huggingface_hub calls that
    snapshot incomplete (IncompleteSnapshotError), and the id loads the split it has, as the folder itself does."""
    from hub_server import LocalHub

    home = tmp_path / "hf-home"
    with LocalHub(datasets={"someone/imagenet-1k": hub_imagenet}) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1")
        proc = subprocess.run([str(Path(sys.executable).parent / "hf"), "download", "someone/imagenet-1k",
                               "--repo-type", "dataset", "--include", "data/validation-*"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not hub.unhandled, proc.stderr[-3000:]
    snapshot = next((home / "hub" / "datasets--someone--imagenet-1k" / "snapshots").iterdir())
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.*")) == [
        "data/validation-00000-of-00001.parquet"]
    offline_with_caches(monkeypatch, home / "hub", tmp_path / "datasets")
    ds = load_image_dataset("someone/imagenet-1k")
    assert list(ds) == ["validation"] and check_labels(ds["validation"]) == ilsvrc.imagenet_wnids()
    assert ds["validation"][0]["image_id"] == "ILSVRC2012_val_00000001"


# load_image_dataset(Hub id) in a fresh interpreter (huggingface_hub fixes its URL template at import): the rows per
# split, or the one-line error
HUB_LOAD = r"""
import json, sys
from imagenet_trainer.data import load_image_dataset
try:
    ds = load_image_dataset(sys.argv[1])
except ValueError as e:
    print("ERROR", e)
    sys.exit(1)
print("ROWS", json.dumps({name: len(split) for name, split in ds.items()}))
"""


def _parquet_repo(folder: Path, photos: dict[str, bytes]) -> dict[str, bytes]:
    """A Hub dataset repo's files ({path: bytes}) holding ``photos`` as its train and validation splits."""
    (folder / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        _split(photos).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _load_by_hub_id(hub, repo: str, home: Path, cwd: Path, token: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1",
               OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", HUB_LOAD, repo], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_hub_id_the_hub_refuses_is_one_line_not_an_older_cached_copy(photos, tmp_path):
    """datasets.load_dataset falls back to its cached copy on any Hub error: a run with an expired token, after the
    repo got a new commit, would train on the old rows with only a log line. Online, the Hub is asked first: a
    refused token is one line, and the commit loaded is printed; with the Hub out of reach the cached copy loads,
    in one line naming its revision and HF_HUB_OFFLINE=1."""
    from hub_server import LocalHub

    v1 = _parquet_repo(tmp_path / "v1", dict(list(photos.items())[:3]))
    v2 = _parquet_repo(tmp_path / "v2", dict(list(photos.items())[:2]))
    home = tmp_path / "hf-home"
    with LocalHub(datasets={"me/mini": tmp_path / "v1"}) as hub:
        repo = hub.repo("me/mini", "dataset")
        repo.private, first = True, repo.commit
        loaded = _load_by_hub_id(hub, "me/mini", home, tmp_path, hub.token)
        assert loaded.returncode == 0 and 'ROWS {"train": 3' in loaded.stdout, loaded.stderr[-3000:]
        repo.add_commit(v2, {p for p in v2 if p.endswith(".parquet")}, "fewer rows")
        proc = _load_by_hub_id(hub, "me/mini", home, tmp_path, "hf_expiredtoken")
        assert proc.returncode == 1 and "ROWS" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
        assert proc.stdout == ("ERROR me/mini: the Hub refuses the token in use (HTTP 401: invalid or expired); if it "
                               "is private or gated: `hf auth login` (or set HF_TOKEN) with an account that has "
                               "access\n")
        assert not hub.unhandled
    assert f"Hub dataset me/mini at revision {first}\n" in loaded.stdout
    proc = _load_by_hub_id(hub, "me/mini", home, tmp_path, hub.token)  # the Hub's port closed: out of reach
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == (
        f"Hub dataset me/mini: the Hub is out of reach (ConnectError); loaded datasets' cached copy, revision {first}, "
        "which may be older than the Hub's; HF_HUB_OFFLINE=1 makes this deliberate")
    assert 'ROWS {"train": 3' in proc.stdout


# HUB_LOAD in each process of a 2-process gloo group (as accelerate's launch forms one before train.py loads data)
HUB_LOAD_RANKS = r"""
import sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=int(sys.argv[3]), world_size=2)
""" + HUB_LOAD.replace("sys.exit(1)", "dist.destroy_process_group(); sys.exit(1)") + "dist.destroy_process_group()\n"


def test_the_ranks_of_a_job_load_the_revision_rank_0_was_given(photos, tmp_path):
    """Each rank asking the Hub on its own loads whatever the Hub serves at that moment: a push during start-up
    trains the ranks on different data. Rank 0 asks once and every rank loads its answer, said in one line; a
    refusal is every rank's one-line error."""
    from hub_server import LocalHub

    _parquet_repo(tmp_path / "repo", dict(list(photos.items())[:3]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    with LocalHub(datasets={"me/mini": tmp_path / "repo"}) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
                   NO_PROXY="127.0.0.1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        for token, case in ((hub.token, "ok"), ("hf_expiredtoken", "refused")):
            hub.requests.clear()
            procs = [subprocess.Popen([sys.executable, "-c", HUB_LOAD_RANKS, "me/mini", str(tmp_path / f"pg-{case}"),
                                       str(rank)], env={**env, "HF_TOKEN": token}, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
            outs = [p.communicate(timeout=300) for p in procs]
            asked = [r for r in hub.requests if r == ("GET", "/api/datasets/me/mini")]
            assert len(asked) == 1, (hub.requests, [o[1][-2000:] for o in outs])
            if case == "ok":
                assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
                said = [line for out, _ in outs for line in out.splitlines() if "at revision" in line]
                assert said == [f"Hub dataset me/mini at revision {hub.repo('me/mini', 'dataset').commit}"]
            else:
                assert [p.returncode for p in procs] == [1, 1]
                assert all(out.startswith("ERROR me/mini: the Hub refuses the token in use") for out, _ in outs)


def test_a_private_hub_id_without_a_token_says_to_log_in(photos, tmp_path):
    """A private repo (or one that does not exist) loaded without a token: one line saying how to get access, with
    "no such local folder" only where the id could be a path (its owner part is a folder here)."""
    from hub_server import LocalHub

    _parquet_repo(tmp_path / "repo", dict(list(photos.items())[:2]))
    (tmp_path / "run").mkdir()
    with LocalHub(datasets={"me/mini": tmp_path / "repo"}) as hub:
        hub.repo("me/mini", "dataset").private = True
        proc = _load_by_hub_id(hub, "me/mini", tmp_path / "hf-home", tmp_path / "run", None)
        hint = "; if it is private or gated: `hf auth login` (or set HF_TOKEN) with an account that has access\n"
        assert proc.returncode == 1 and proc.stdout == (
            "ERROR me/mini: no Hub dataset of that id without a token (HTTP 401)" + hint), proc.stderr[-3000:]
        (tmp_path / "run" / "me").mkdir()  # me/mini could be a mistyped path now
        proc = _load_by_hub_id(hub, "me/mini", tmp_path / "hf-home", tmp_path / "run", None)
        assert proc.returncode == 1 and proc.stdout == (
            "ERROR me/mini: no such local folder, and no Hub dataset of that id without a token (HTTP 401)" + hint)
        assert not hub.unhandled


def test_load_rejects_missing_label_column(tmp_path, photos):
    path = tmp_path / "nolabel"
    datasets.DatasetDict({"train": _split(photos).remove_columns("label")}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="label"):
        load_image_dataset(str(path))


# ---------------------------------------------------------------------------------------------------------------
# RandomResizedCrop parameters


@pytest.mark.parametrize("height,width", [(375, 500), (640, 427), (50, 400)])
def test_crop_distribution_matches_torchvision(height, width):
    """Same rules as T.RandomResizedCrop.get_params: compare area, aspect and position distributions (KS)."""
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 3000
    rng = random.Random(0)
    ours = np.array([random_resized_crop_params(height, width, scale, ratio, rng) for _ in range(n)], dtype=float)
    torch.manual_seed(0)
    dummy = torch.empty(1, height, width)
    ref = np.array([T.RandomResizedCrop.get_params(dummy, scale, ratio) for _ in range(n)], dtype=float)
    for name, stat in {"area": lambda p: p[:, 2] * p[:, 3] / (height * width),
                       "log aspect": lambda p: np.log(p[:, 3] / p[:, 2]),
                       "centre y": lambda p: (p[:, 0] + p[:, 2] / 2) / height,
                       "centre x": lambda p: (p[:, 1] + p[:, 3] / 2) / width}.items():
        assert scipy.stats.ks_2samp(stat(ours), stat(ref)).pvalue > 1e-3, name
    assert np.all(ours[:, 2] <= height) and np.all(ours[:, 3] <= width) and np.all(ours[:, :2] >= 0)
    assert np.all(ours[:, 0] + ours[:, 2] <= height) and np.all(ours[:, 1] + ours[:, 3] <= width)


@pytest.mark.parametrize("height,width", [(10, 1000), (1000, 10), (10, 12)])
def test_crop_fallback_is_torchvision_centre_crop(height, width):
    """Where no try can fit, both fall back to the same deterministic, ratio-clamped centre crop."""
    ref = T.RandomResizedCrop.get_params(torch.empty(1, height, width), (0.9, 1.0), (3 / 4, 4 / 3))
    ours = random_resized_crop_params(height, width, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(1))
    if (height, width) != (10, 12):  # there random tries can succeed; only check they stay inside
        assert tuple(ours) == tuple(ref)
    assert 0 <= ours[0] and ours[0] + ours[2] <= height and 0 <= ours[1] and ours[1] + ours[3] <= width


# ---------------------------------------------------------------------------------------------------------------
# TrainSet / EvalSet


def test_trainset_matches_torchvision_crop_of_the_same_params(ds, photos):
    """The DCT-scaled decode + crop-then-resize path gives torchvision's resized_crop of the full image, up to
    the fast-IDCT and kernel differences (a few grey levels on average)."""
    train = TrainSet(ds["train"], 224, seed=7)
    scaled = 0
    for name in ["astronaut", "chelsea", "coffee", "rocket_progressive", "retina", "hubble_small", "camera_gray",
                 "cmyk", "png_named_jpeg", "retina_lossless"]:
        k = _index(photos, name)
        for epoch in range(3):
            x, label = train[(epoch, k)]
            assert x.dtype == torch.uint8 and x.shape == (3, 224, 224) and label == k % len(WNIDS)
            full = _pil(photos[name])
            rng = sample_rng(7, epoch, k)  # the sample's own stream, drawn in the same order
            top, left, h, w = random_resized_crop_params(full.height, full.width, (0.08, 1.0), (3 / 4, 4 / 3), rng)
            scaled += dct_factor(min(h, w), 224) > 1
            ref = TF.pil_to_tensor(TF.resized_crop(full, top, left, h, w, [224, 224]))
            if rng.random() < 0.5:
                ref = ref.flip(-1)
            diff = (x.float() - ref.float()).abs().mean().item()
            assert diff < 4.0, (name, epoch, diff)
    assert scaled >= 2, "the test photos must exercise the reduced-size decoding"


def test_progressive_resizing_follows_ffcvs_ramp(ds):
    """FFCV rn18 88 epochs: 160 px to epoch 65, 32 px steps, 192 px from epoch 76; each sample has its epoch's size."""
    train = TrainSet(ds["train"], 192, seed=0, progressive=(160, 65, 76))
    sizes = [train.size_at(epoch) for epoch in range(88)]
    assert sizes[:66] == [160] * 66 and sizes[76:] == [192] * 12 and sorted(sizes) == sizes
    assert set(sizes) == {160, 192}
    assert train[(0, 0)][0].shape == (3, 160, 160) and train[(80, 0)][0].shape == (3, 192, 192)
    assert TrainSet(ds["train"], 32, seed=0, progressive=(16, 0, 1)).size_at(1) == 32  # reaches it whatever the step
    # FFCV rn18 16 epochs (start_ramp 11, end_ramp 13): epoch 12 interpolates to 176 px, which FFCV's
    # np.round(176 / 32) * 32 makes 192 (5.5 rounds to the even 6), not 160
    fast = TrainSet(ds["train"], 192, seed=0, progressive=(160, 11, 13))
    assert [fast.size_at(epoch) for epoch in range(16)] == [160] * 12 + [192] * 4
    with pytest.raises(ValueError, match="progressive"):
        TrainSet(ds["train"], 128, seed=0, progressive=(160, 0, 1))


def test_trainset_is_a_pure_function_of_the_key(ds):
    train = TrainSet(ds["train"], 96, seed=3)
    a, _ = train[(0, 4)]
    assert torch.equal(a, train[(0, 4)][0])
    assert not torch.equal(a, train[(1, 4)][0]), "another epoch must give another crop"
    assert not torch.equal(a, TrainSet(ds["train"], 96, seed=4)[(0, 4)][0]), "another seed, another crop"
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(a, train[(0, 4)][0]), "global RNG state must not matter"


@pytest.mark.parametrize("policy", ["ra", "ta"])
def test_auto_augment_is_deterministic_and_leaves_global_rng(ds, policy):
    train = TrainSet(ds["train"], 64, seed=0, auto_augment=policy)
    plain = TrainSet(ds["train"], 64, seed=0)
    state = torch.get_rng_state()
    outs = [train[(e, 2)][0] for e in range(4)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(outs[0], train[(0, 2)][0])
    assert any(not torch.equal(o, plain[(e, 2)][0]) for e, o in enumerate(outs)), "the policy changed nothing"


def test_trainset_same_samples_through_dataloader_workers(ds):
    train = TrainSet(ds["train"], 64, seed=1)
    sampler = ResumableSampler(len(train), 4, seed=1)
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    keys = list(ResumableSampler(len(train), 4, seed=1))
    batches = list(loader)
    assert len(batches) == len(keys) > 0  # every batch the sampler lists arrives, and there are some
    for (x, y), batch_keys in zip(batches, keys, strict=True):
        expected = collate([train[k] for k in batch_keys])
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])


def test_trainset_pickles_without_rows(ds, photos):
    """Workers get the dataset by reference to its memory-mapped files, never a copy of the rows, also after the
    row views were built in this process."""
    train = TrainSet(ds["train"], 224, seed=0)
    size = len(pickle.dumps(train))
    assert size < 64_000, size
    assert size < sum(len(b) for b in photos.values()) / 10
    train[(0, 0)]
    assert len(pickle.dumps(train)) == size


def test_rows_read_what_datasets_reads_through_select_and_shuffle(ds):
    """The zero-copy reader maps rows through select/shuffle indices like Dataset.__getitem__."""
    split = ds["train"].shuffle(seed=3).select(range(2, len(ds["train"]) - 1))
    rows, reference = Rows(split), split.with_format("arrow")
    assert len(rows) == len(split)
    for i in range(len(split)):
        data, label = rows[i]
        row = reference[i]
        assert bytes(data) == row.column("image")[0]["bytes"].as_py()
        assert label == row.column("label")[0].as_py()
    with pytest.raises(IndexError):
        rows[len(split)]
    with pytest.raises(ValueError, match="lacks the column"):
        Rows(split.remove_columns("label"))


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_rows_read_sliced_chunks_straight_from_the_buffers(photos, kind):
    """Rows reads the bytes from Arrow's offset and data buffers: chunks that are slices (a non-zero offset) of other
    arrays, chunked differently from the labels, 32- and 64-bit offsets, give each row's own bytes."""
    values = [photos[name] for name in sorted(photos)] * 2
    whole = pa.array(values, kind)
    images = pa.chunked_array([whole.slice(0, 3), whole.slice(3, 4), whole.slice(7)])
    labels = pa.chunked_array([pa.array(range(5)), pa.array(range(5, len(values)))])
    rows = Rows(datasets.Dataset(pa.table({"image": images, "label": labels})))
    assert [bytes(rows[i][0]) for i in range(len(values))] == values
    assert [rows[i][1] for i in range(len(values))] == list(range(len(values)))
    assert all(isinstance(rows[i][1], int) for i in range(len(values)))


def test_exif_orientation_applied_like_datasets_image(ds, photos):
    """EXIF orientation 6 is applied (as datasets.Image decoding does): same pixels as the upright photo."""
    evalset = EvalSet(ds["validation"], 224)
    rotated, _ = evalset[_index(photos, "exif_rotated")]
    upright, _ = evalset[_index(photos, "coffee_upright")]
    assert (rotated.float() - upright.float()).abs().mean() < 2.0
    train = TrainSet(ds["train"], 128, seed=0)
    assert train[(0, _index(photos, "exif_rotated"))][0].shape == (3, 128, 128)


@pytest.mark.parametrize("orientation,stored", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                                (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_oriented_crops_at_reduced_scale_are_the_upright_files_crops(orientation, stored):
    """The same key crops the same part of an EXIF-oriented file as of the same picture stored upright, at 1/4 and
    1/8 DCT scale too. 505x329 px: on a mirrored axis the partial DCT block (505 % 8 = 1 px, 329 % 8 = 1 px) would
    come first and shift the crop by 7 px at 1/8. Red and green are ramps along x and y (~0.5 and ~0.8 grey levels a
    px), blue a wave of 60 px: a shift shows in all three. The oriented file's crop is torchvision's of the upright
    picture; the upright file's differs from it by its box snapped to the DCT scale's grid (up to 4 px at 1/8)."""
    y, x = np.mgrid[0:329, 0:505]
    wave = 128 + 60 * np.sin(2 * np.pi * x / 60) * np.sin(2 * np.pi * y / 60)
    upright = Image.fromarray(np.stack([x * 255 / 504, y * 255 / 328, wave], -1).round().astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    files = []
    for image, extra in ((upright, {}), (upright.transpose(stored), {"exif": exif})):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=100, subsampling=0, **extra)
        files.append(buf.getvalue())
    split = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in files], "label": [0, 0]},
                                       features=FEATURES)
    train = TrainSet(split, 32, seed=0, scale=(0.5, 1.0), hflip=0.0)
    factors = set()
    for epoch in range(6):
        top, left, h, w = random_resized_crop_params(329, 505, (0.5, 1.0), (3 / 4, 4 / 3), sample_rng(0, epoch, 0))
        factors.add(dct_factor(min(h, w), 32))
        a, b = train._load(epoch, 0, 0)[0].float(), train._load(epoch, 1, 0)[0].float()  # the same random stream
        ref = TF.pil_to_tensor(TF.resized_crop(upright, top, left, h, w, [32, 32])).float()
        offset = (b - ref).mean((1, 2))  # grey levels; a shift of the box moves red (x) and green (y) by its slope
        assert (b - ref).abs().mean() < 2.0 and offset[:2].abs().max() < 0.5, (epoch, offset)
        assert (a - b).abs().mean() < 4.0, epoch  # the tolerance of the DCT-scaled crops against torchvision's
    assert {4, 8} <= factors, "the keys must exercise the reduced-scale decodes"


def test_exif_found_after_other_segments_like_pil():
    """PIL reads markers up to the image data: an Exif block after the quantisation tables still rotates."""
    data = _rotated_exif_jpeg(skimage.data.coffee())
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:  # split the header into its marker segments
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        segments.append(data[pos:end])
        pos = end
    exif = next(seg for seg in segments if seg[1] == 0xE1)
    moved = b"\xff\xd8" + b"".join(seg for seg in segments if seg is not exif) + exif + data[pos:]
    assert Image.open(io.BytesIO(moved)).getexif()[0x0112] == 6  # still a valid file, as PIL sees it
    assert exif_orientation(data) == exif_orientation(moved) == 6


def _broken(photos) -> dict[str, bytes]:
    png = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(png, "PNG")
    png = bytearray(png.getvalue())
    idat = png.index(b"IDAT")
    png[idat + 200] ^= 0xFF  # one flipped byte in the compressed pixels
    jpeg = photos["chelsea"]
    return {"png_bad_idat": bytes(png), "jpeg_truncated": jpeg[:len(jpeg) // 2]}


@pytest.mark.parametrize("kind", ["png_bad_idat", "jpeg_truncated"])
def test_broken_pixels_are_an_error_not_a_blank_or_grey_image(photos, kind):
    """PIL and datasets refuse these; decoding them as black (PNG) or half grey (JPEG) would train on garbage."""
    split = _split({kind: _broken(photos)[kind]})
    with pytest.raises(OSError):
        _pil(_broken(photos)[kind])
    with pytest.raises(ValueError, match="row 0: the image does not decode"):  # and no other row to take its place
        TrainSet(split, 64, seed=0)[(0, 0)]
    assert EvalSet(split, 64)[0][1] == -1, "left out of evaluation (metrics.evaluate), not scored as an image"


def test_a_split_that_mostly_does_not_decode_names_the_replacements_that_failed_too():
    """Past REPLACEMENT_TRIES stand-ins that fail too, one line names the row and them, also as the main process
    gets it from a DataLoader worker (torch rebuilds the error there from the worker's formatted traceback)."""
    garbage = {"image": [{"bytes": b"\xff\xd8garbage", "path": None}] * 12, "label": [0] * 12}
    train = TrainSet(datasets.Dataset.from_dict(garbage, features=FEATURES), 32, seed=0)
    with pytest.raises(ValueError, match=r"^row 3: the image does not decode .*; and 8 rows tried in its place do "
                                         r"not decode either$"):
        train.sample((0, 3))
    loader = torch.utils.data.DataLoader(train, sampler=[(0, 3)], batch_size=None, num_workers=1)
    with pytest.raises(ValueError, match="Caught UnreplaceableRow in DataLoader worker") as caught:
        next(iter(loader))
    row, line = caught.value.row_and_reason()
    assert row == 3 and line.startswith("row 3: the image does not decode (") and "\n" not in line
    assert line.endswith("; and 8 rows tried in its place do not decode either"), line


def test_an_unreplaceable_row_brings_the_rows_its_batch_replaced_and_says_what_cannot_be_read(tmp_path, photos):
    """Through a DataLoader worker, the batch that ends at a row no stand-in can be read for never arrives: the
    error carries the rows it replaced before, and the one line and the record have them all, each file named."""
    n, stopper = 12, 3
    missing = {0, stopper, *(replacement_row(0, stopper, a, n) for a in range(1, 9))}
    stand_in = next(other for a in range(1, 9) if (other := replacement_row(0, 0, a, n)) not in missing)
    images = []
    for i, data in zip(range(n), itertools.cycle(photos.values())):
        if i not in missing:
            (tmp_path / f"{i}.JPEG").write_bytes(data)
        images.append({"bytes": None, "path": str(tmp_path / f"{i}.JPEG")})
    split = datasets.Dataset.from_dict({"image": images, "label": [0] * n}, features=FEATURES)
    bad = BadSamples({"train": split}, limit=10, folder=tmp_path)
    loader = RecordingLoader(TrainSet(split, 32, seed=0), batch_sampler=[[(0, 0), (0, stopper)]], collate_fn=collate,
                             num_workers=1, bad=bad)
    with pytest.raises(UnreplaceableRow) as caught:
        next(iter(loader))
    line = bad.unreplaceable(caught.value)
    assert line.startswith(f"error: train row {stopper} ({tmp_path / f'{stopper}.JPEG'}): the image file cannot be "
                           "read (No such file or directory); and 8 rows tried in its place cannot be read either; "
                           f"listed in {tmp_path / 'bad_samples.json'}. The dataset is damaged: check or restore "
                           "the image files"), line
    record = {e["row"]: e for e in json.loads((tmp_path / "bad_samples.json").read_text())}
    assert sorted(record) == [0, stopper] and record[0]["replaced_by"] == stand_in
    assert [record[r]["image_file"] for r in (0, stopper)] == [str(tmp_path / f"{r}.JPEG") for r in (0, stopper)]
    said = BadSamples.line(record[0])
    assert said == f"train row 0 ({tmp_path / '0.JPEG'}) cannot be read: replaced by row {stand_in}", said


def test_a_train_row_no_row_could_stand_in_for_is_never_said_to_be_scored():
    """The record's entry for a train row whose stand-ins failed too (no replaced_by) is a train row's, not an
    evaluated row left out; an evaluated split named train (validate.py --split train) still is one."""
    entry = {"split": "train", "row": 9, "image_id": None, "arrow_file": "x",
             "error": "row 9: the image does not decode (x); and 8 rows tried in its place do not decode either"}
    said = BadSamples.line(entry), BadSamples.repaired_line(entry)
    assert not any("scored" in line or "image_id None" in line for line in said), said
    assert said[0] == "train row 9 (x) does not decode: no row could stand in for it, and the run stopped"
    assert said[1] == "train row 9 decodes now: no longer counted; it is sampled itself again"
    evaluated = {**entry, "error": "does not decode"}
    assert BadSamples.line(evaluated).endswith("left out of the scores")
    assert BadSamples.repaired_line(evaluated).endswith("it is scored again")


def test_the_remedy_for_a_damaged_dataset_fits_where_its_rows_live(tmp_path, photos):
    """Image files are restored; an Arrow copy without image files (a Parquet folder or Hub dataset in datasets'
    cache) is copied or loaded again, never told to restore image files it has none of."""
    folder = tmp_path / "parquet"
    (folder / "validation").mkdir(parents=True)
    split = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in photos.values()][:3],
                                        "label": [0, 1, 2]}, features=FEATURES)
    split.to_parquet(str(folder / "validation" / "0.parquet"))
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["validation"]
    for data, remedy in ((loaded, "copy "), (split, "build it again"),
                         (_image_file_rows(tmp_path, photos), "check or restore the image files")):
        bad = BadSamples({"validation": data}, 0)
        bad.add("validation", 1, "does not decode", warn=False)
        line = bad.error(bad.seen)
        assert line.split("The dataset is damaged: ")[1].startswith(remedy), line
        assert ("image files" in line) == (remedy == "check or restore the image files"), line
    assert str(Path(loaded.cache_files[0]["filename"]).parent) in BadSamples({"validation": loaded}, 0).damaged(
        {"split": "validation", "arrow_file": loaded.cache_files[0]["filename"]})


def test_a_record_write_goes_on_while_another_process_holds_the_run_folders_lock(tmp_path):
    """A wrapper's `flock $OUT accelerate launch ...` holds the folder's lock for the whole run: the record is
    written after LOCK_WAIT_S anyway, not never."""
    holder = subprocess.Popen(["flock", str(tmp_path), "sleep", "120"])
    try:
        time.sleep(1)  # the holder has the lock
        split = datasets.Dataset.from_dict({"image": [{"bytes": b"x", "path": None}], "label": [0]},
                                           features=FEATURES)
        bad = BadSamples({"validation": split}, 5, tmp_path)
        bad.add("validation", 0, "does not decode", warn=False)
        started = time.monotonic()
        bad.write(bad.seen.values())
        assert time.monotonic() - started < bad_samples.LOCK_WAIT_S + 5
        assert [e["row"] for e in json.loads((tmp_path / bad_samples.RECORD).read_text())] == [0]
    finally:
        holder.kill()


def _image_file_rows(tmp_path, photos) -> datasets.Dataset:
    """Rows that only reference their image files (an unembedded image folder): 4 photos, one file each."""
    images = []
    for i, data in enumerate(list(photos.values())[:4]):
        (tmp_path / f"{i}.JPEG").write_bytes(data)
        images.append({"bytes": None, "path": str(tmp_path / f"{i}.JPEG")})
    return datasets.Dataset.from_dict({"image": images, "label": [i % len(WNIDS) for i in range(len(images))]},
                                      features=FEATURES)


def test_an_eval_row_that_cannot_be_read_is_left_out_like_one_that_does_not_decode(tmp_path, photos):
    """A referenced file gone (moved, deleted mid-run, a stale NFS handle) is left out of evaluation and
    reported, not the end of it, with a null image struct's row (below); training replaces the same rows."""
    split = _image_file_rows(tmp_path, photos)
    (tmp_path / "1.JPEG").unlink()
    evalset = EvalSet(split, 32)
    assert evalset[1][1] == -2 and evalset[1][0].shape == (3, 32, 32)
    assert evalset[0][1] == 0 and evalset[2][1] == 2, "the other rows are read as before"
    with pytest.raises(ValueError, match=r"row 1: the image file .*1\.JPEG cannot be read \(No such file"):
        Rows(split)[1]
    assert TrainSet(split, 32, seed=0).sample((0, 1))[2][:2] == (1, replacement_row(0, 1, 1, len(split)))
    with pytest.raises(IndexError):  # past the end is still the end, not a left-out row
        evalset[len(split)]


def test_an_eval_row_with_a_null_image_is_left_out(photos):
    null = datasets.Dataset.from_dict({"image": [{"bytes": photos["chelsea"], "path": None}, None],
                                       "label": [1, 2]}, features=FEATURES)
    assert EvalSet(null, 32)[1][1] == -2 and EvalSet(null, 32)[0][1] == 1


def test_the_resume_recheck_counts_a_recorded_row_that_cannot_be_read_as_still_broken(tmp_path, photos):
    split = _image_file_rows(tmp_path, photos)
    (tmp_path / "1.JPEG").unlink()
    bad = BadSamples({"validation": split}, 5)
    bad.shared = {("validation", 1): {}, ("validation", 2): {}}  # a record from before: row 2 was repaired since
    assert bad.repaired() == [("validation", 2)]


def test_a_plain_binary_image_column_reads_like_an_image_column(ds, photos):
    table = pa.table({"image": pa.array(list(photos.values()), pa.binary()),
                      "label": pa.array([k % len(WNIDS) for k in range(len(photos))])})
    binary = datasets.Dataset(table).cast_column("label", datasets.ClassLabel(names=WNIDS))
    for a, b in ((TrainSet(binary, 64, seed=3), TrainSet(ds["train"], 64, seed=3)),):
        assert all(torch.equal(a[(0, i)][0], b[(0, i)][0]) for i in range(len(photos)))
    with pytest.raises(ValueError, match="expected encoded images"):
        Rows(datasets.Dataset.from_dict({"image": ["a.jpg"], "label": [0]}))


def test_check_labels_wants_every_row_labelled_with_the_same_classes():
    split = datasets.Dataset.from_dict({"image": [b"x"] * 3, "label": [0, 1, 2]},
                                       features=datasets.Features({"image": datasets.Value("binary"),
                                                                   "label": datasets.ClassLabel(names=WNIDS)}))
    assert check_labels(split) == WNIDS and check_labels(split, WNIDS) == WNIDS
    with pytest.raises(ValueError, match="differ from the train split's"):
        check_labels(split, WNIDS[::-1])
    with pytest.raises(ValueError, match="1 of 3 images have no label"):
        check_labels(split.cast_column("label", datasets.Value("int64")).map(
            lambda r, i: {"label": -1 if i == 1 else r["label"]}, with_indices=True).cast_column(
            "label", datasets.ClassLabel(names=WNIDS)))
    with pytest.raises(ValueError, match="not a ClassLabel"):
        check_labels(split.cast_column("label", datasets.Value("int64")))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_evalset_matches_classic_resize_centercrop(ds, photos, interpolation):
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    classic = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.PILToTensor()])
    evalset = EvalSet(ds["validation"], 224, crop_pct=0.875, interpolation=interpolation)
    for name in ["astronaut", "chelsea", "coffee", "rocket_progressive", "retina", "hubble_small", "camera_gray",
                 "cmyk", "png_named_jpeg", "retina_lossless"]:
        x, label = evalset[_index(photos, name)]
        ref = classic(_pil(photos[name]))
        assert x.dtype == torch.uint8 and x.shape == ref.shape == (3, 224, 224)
        diff = (x.float() - ref.float()).abs().mean().item()
        assert diff < 1.0, (name, diff)


@pytest.mark.parametrize("crop_pct,interpolation,crop_mode", [(0.875, "bilinear", "center"),
                                                              (0.95, "bicubic", "center"), (0.9, "bicubic", "border")])
def test_evalset_matches_timm_on_a_camera_sized_sharp_photo(crop_pct, interpolation, crop_mode):
    """A 2048x1365 px photo with film grain (short side >= 4x the resized one, where a DCT-reduced decode would
    differ from the antialiased resize by 1-2 grey levels on average): the eval tensor is timm's create_transform's."""
    big = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((2048, 1365), Image.Resampling.BICUBIC))
    grain = np.random.default_rng(0).normal(0, 12, big.shape)
    data = _jpeg(np.clip(big + grain, 0, 255).astype(np.uint8), quality=92)
    split = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None}], "label": [0]}, features=FEATURES)
    timms = create_transform(input_size=(3, 224, 224), crop_pct=crop_pct, interpolation=interpolation,
                             crop_mode=crop_mode, mean=MEAN, std=STD, is_training=False)
    x, _ = EvalSet(split, 224, crop_pct, interpolation, crop_mode=crop_mode, mean=MEAN)[0]
    grey_levels = (normalize(x[None], MEAN, STD)[0] - timms(_pil(data))).abs() * torch.tensor(STD).view(3, 1, 1) * 255
    assert grey_levels.mean() < 1.0 and grey_levels.max() < 2.0, (grey_levels.mean(), grey_levels.max())  # float32


def _resized(height: int, width: int, side: int, crop_mode: str) -> tuple[int, int]:
    """(height, width) px timm resizes an image to before its crop, with s = floor(size / crop_pct) = ``side``:
    Resize(s) scales the shorter side to s, squash both, border (ResizeKeepRatio longest=1) the longer."""
    short, long = sorted((height, width))
    if crop_mode == "squash":
        return side, side
    pair = (side, int(side * long / short)) if crop_mode == "center" else (round(short * side / long), side)
    return pair if height <= width else pair[::-1]


@pytest.mark.parametrize("tag,crop_mode", [("volo_d5_512.sail_in1k", "center"), ("volo_d4_448.sail_in1k", "center"),
                                           ("volo_d4_448.sail_in1k", "squash"), ("volo_d4_448.sail_in1k", "border")])
def test_evalset_crop_pct_above_1_pads_as_timms_create_transform(ds, photos, tag, crop_mode):
    """timm's volo_d4_448/volo_d5_448/volo_d5_512 weights have crop_pct 1.15: the image is resized to
    floor(size / 1.15) px and CenterCrop pads it to the crop with black (CenterCropOrPad with the mean colour in
    border mode), the smaller half top/left. Compared, normalised, with create_transform of the weights' own
    pretrained_cfg on landscape, portrait, square, big and small photos: the same pixels and the same band of
    padding, exactly the fill."""
    data_cfg = {**resolve_data_config(pretrained_cfg=get_pretrained_cfg(tag).to_dict()), "crop_mode": crop_mode}
    size, mean, std = data_cfg["input_size"][-1], torch.tensor(data_cfg["mean"]), torch.tensor(data_cfg["std"])
    timms = create_transform(**data_cfg, is_training=False)
    evalset = EvalSet(ds["validation"], size, data_cfg["crop_pct"], data_cfg["interpolation"], crop_mode=crop_mode,
                      mean=data_cfg["mean"])
    fill = (mean * 255).round().to(torch.uint8) if crop_mode == "border" else torch.zeros(3, dtype=torch.uint8)
    for name in ["chelsea", "coffee", "astronaut", "retina", "hubble_small"]:  # landscape, portrait, square, ...
        x, _ = evalset[_index(photos, name)]
        image = _pil(photos[name])
        ref = timms(image)
        assert x.dtype == torch.uint8 and x.shape == ref.shape == (3, size, size)
        ours = normalize(x[None], data_cfg["mean"], data_cfg["std"])[0]
        grey_levels = (ours - ref).abs() * std.view(3, 1, 1) * 255
        # squash scales coffee up one way and down the other: 4-5 grey levels off at crop_pct 1 as well
        worst = 5 if crop_mode == "squash" else 2
        assert grey_levels.mean() < 1.0 and grey_levels.max().round() <= worst, (name, grey_levels.max())  # float32
        # the rows (cols) all of the fill colour: the padding, (crop - side) // 2 before and the rest after
        # (torchvision's split), in both; these photos have no such rows of their own
        ref_u8 = ((ref * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255).round().to(torch.uint8)
        shape = _resized(image.height, image.width, math.floor(size / data_cfg["crop_pct"]), crop_mode)
        for axis, side in zip((1, 0), shape):
            pad = max(size - side, 0)
            expected = torch.zeros(size, dtype=torch.bool)
            expected[:pad // 2] = expected[size - (pad - pad // 2):] = True
            for image_u8 in (x, ref_u8):
                assert torch.equal((image_u8 == fill.view(3, 1, 1)).all(0).all(axis), expected), (name, axis)


def test_train_names_the_models_eval_transform_not_the_batch_flags(ds):
    """A bad crop_pct in the model's pretrained_cfg is the model's line; only the sampler's batching gets the
    --batch_size/--grad_accum_steps hint."""
    def loaders(crop_pct, *flags):
        cfg = parse_config(train.TrainConfig, ["--model", "resnet10t", "--dataset", "unused", "--image_size", "32",
                                               "--num_workers", "0", *flags])
        data_cfg = {"crop_pct": crop_pct, "interpolation": "bicubic", "mean": MEAN}
        bad = BadSamples({"train": ds["train"], "validation": ds["validation"]}, cfg.max_bad_samples)
        return train.build_loaders(cfg, ds, data_cfg, Accelerator(cpu=True), bad)

    assert loaders(1.15, "--batch_size", "4")[1].dataset.resize_size == 27  # volo_d5_512's crop_pct: floor(32 / 1.15)
    with pytest.raises(SystemExit) as bad_crop:
        loaders(-1.0, "--batch_size", "4")
    assert str(bad_crop.value).startswith("error: --model resnet10t: its pretrained_cfg eval transform: crop_pct=-1.0")
    assert "--batch_size" not in str(bad_crop.value) and "\n" not in str(bad_crop.value)
    with pytest.raises(SystemExit, match=r"\(check --batch_size, --grad_accum_steps\)$"):
        loaders(0.875, "--batch_size", "64")  # more than the 12 train images


def test_validate_takes_the_models_crop_pct_above_1_and_refuses_one_below_0_in_one_line():
    """validate.py's eval transform: volo_d5_512's crop_pct 1.15 is the model's own; a hand-edited config.json's
    negative one is a line naming the model (timm's resolve_data_config already reads 0 as its default, 0.875)."""
    cfg = parse_config(validate.ValidateConfig, ["--model", "local-dir:volo", "--dataset", "unused"])
    model = timm.create_model("resnet10t", num_classes=3)
    data_cfg = resolve_data_config(pretrained_cfg=get_pretrained_cfg("volo_d5_512.sail_in1k").to_dict())
    assert eval_suite.eval_transform(cfg, data_cfg, model)["crop_pct"] == 1.15
    with pytest.raises(SystemExit, match=r"^error: --model local-dir:volo: its pretrained_cfg crop_pct -1.0 is not > 0 "
                                         r"\(0.875 typical\); correct its config.json or give --crop_pct$"):
        eval_suite.eval_transform(cfg, {**data_cfg, "crop_pct": -1.0}, model)


def test_bad_arguments_are_one_line_errors(ds):
    with pytest.raises(ValueError, match="auto_augment"):
        TrainSet(ds["train"], 224, 0, auto_augment="aa")
    with pytest.raises(ValueError, match="interpolation"):
        EvalSet(ds["validation"], 224, interpolation="lanczos")
    for crop_pct in (0.0, -0.875, float("nan"), 225.0):  # above the image size: a 0 px resized side
        with pytest.raises(ValueError, match=r"^crop_pct=\S+: must be > 0 [^\n]*$"):
            EvalSet(ds["validation"], 224, crop_pct=crop_pct)
    with pytest.raises(ValueError, match="label"):
        EvalSet(ds["validation"].remove_columns("label"), 224)
    garbage = _split({"garbage": b"\xff\xd8 not a jpeg at all", "empty": b"x"})
    for index in range(2):  # no row to train on in its place; evaluation leaves it out (metrics.evaluate)
        with pytest.raises(ValueError, match=f"row {index}: the image does not decode"):
            TrainSet(garbage, 32, 0)[(0, index)]
        image, label = EvalSet(garbage, 32)[index]
        assert label == -(index + 1) and image.shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# ResumableSampler


def test_sampler_ranks_are_disjoint_and_cover_full_global_batches():
    n, b, r = 103, 4, 3
    per_rank = [list(ResumableSampler(n, b, seed=5, num_replicas=r, rank=k)) for k in range(r)]
    assert all(len(batches) == len(ResumableSampler(n, b, 5, r, k)) == n // (b * r) for k, batches in
               enumerate(per_rank))
    assert all(len(batch) == b for batches in per_rank for batch in batches)
    keys = [key for batches in per_rank for batch in batches for key in batch]
    assert len(set(keys)) == len(keys) == (n // (b * r)) * b * r, "ranks must not overlap"
    order = ResumableSampler(n, b, seed=5).order(0).tolist()
    assert {i for _, i in keys} == set(order[:len(keys)]), "the dropped tail is the end of the permutation"
    assert all(epoch == 0 for epoch, _ in keys)


def test_sampler_epochs_differ_and_repeat_from_seed():
    sampler = ResumableSampler(50, 5, seed=0)
    first, second = list(sampler), list(sampler)  # finishing an epoch moves to the next one
    assert first[0][0][0] == 0 and second[0][0][0] == 1
    assert [i for batch in first for _, i in batch] != [i for batch in second for _, i in batch]
    again = ResumableSampler(50, 5, seed=0)
    again.set_epoch(1)
    assert list(again) == second
    unshuffled = ResumableSampler(10, 5, seed=0, shuffle=False)
    assert list(unshuffled) == [[(0, i) for i in range(5)], [(0, i) for i in range(5, 10)]]


class CountingDataset(torch.utils.data.Dataset):
    """Records every key it is asked for (the sampler is the only thing under test)."""

    def __init__(self):
        self.seen = []

    def __getitem__(self, key):
        self.seen.append(key)
        return torch.zeros(3, 2, 2, dtype=torch.uint8), key[1]


def test_set_position_skips_without_reading_and_matches_uninterrupted_run():
    n, b, r = 64, 4, 2
    uninterrupted = [list(ResumableSampler(n, b, seed=9, num_replicas=r, rank=1)) for _ in range(1)][0]
    sampler = ResumableSampler(n, b, seed=9, num_replicas=r, rank=1)
    sampler.set_epoch(0)
    data = CountingDataset()
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    sampler.set_position(0, 5)
    resumed = [y.tolist() for _, y in loader]
    assert resumed == [[i for _, i in batch] for batch in uninterrupted[5:]]
    assert data.seen == [key for batch in uninterrupted[5:] for key in batch], "skipped keys must never be read"
    # the skip applied to that epoch only: the next one starts at its first batch (accelerate #1451)
    data.seen.clear()
    epoch1 = [y.tolist() for _, y in loader]
    reference = ResumableSampler(n, b, seed=9, num_replicas=r, rank=1)
    reference.set_epoch(1)
    assert epoch1 == [[i for _, i in batch] for batch in reference] and len(epoch1) == len(sampler)
    assert all(epoch == 1 for epoch, _ in data.seen)


def test_sampler_rejects_bad_positions():
    sampler = ResumableSampler(20, 5, seed=0)
    with pytest.raises(ValueError):
        sampler.set_position(0, 5)
    with pytest.raises(ValueError):
        ResumableSampler(7, 4, seed=0, num_replicas=2)
    with pytest.raises(ValueError):
        ResumableSampler(20, 4, seed=0, num_replicas=2, rank=2)


def global_batches(n, b, seed, replicas, accum, epoch=0):
    """{step: [global micro-batch keys, in global micro-batch order]} as ``replicas`` ranks x ``accum`` see them."""
    steps = {}
    for rank in range(replicas):
        sampler = ResumableSampler(n, b, seed, num_replicas=replicas, rank=rank, grad_accum_steps=accum)
        sampler.set_epoch(epoch)
        for k, batch in enumerate(sampler):
            steps.setdefault(k // accum, {})[sampler.global_micro_batch(k)] = batch
    return {s: [mb[g] for g in sorted(mb)] for s, mb in steps.items()}


def test_global_batches_do_not_depend_on_how_they_are_split():
    """4 processes x 1, 2 x 2 and 1 x 4 accumulation: the same steps of the same micro-batches, in the same order."""
    n, b = 103, 3
    splits = [global_batches(n, b, 4, replicas, accum, epoch=2) for replicas, accum in ((4, 1), (2, 2), (1, 4))]
    assert splits[0] == splits[1] == splits[2]
    assert len(splits[0]) == n // (b * 4) and all(len(step) == 4 for step in splits[0].values())
    order = ResumableSampler(n, b, 4).order(2).tolist()
    assert [i for step in splits[0].values() for batch in step for _, i in batch] == order[:len(splits[0]) * 4 * b]
    # the tail that fills no whole step is dropped on every layout alike: len counts whole steps x accumulation
    assert len(ResumableSampler(25, 3, 0, num_replicas=1, grad_accum_steps=4)) == 8  # 2 steps of 12, not 25 // 3
    assert len(ResumableSampler(25, 3, 0, num_replicas=2, grad_accum_steps=2, rank=1)) == 4


def test_micro_batch_seed_is_keyed_by_place_not_rank():
    seeds = {micro_batch_seed(seed, epoch, g) for seed in (-1, 0, 1) for epoch in (0, 1) for g in range(50)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    two_ranks = [ResumableSampler(64, 4, 0, num_replicas=2, rank=r) for r in (0, 1)]
    one_rank = ResumableSampler(64, 4, 0, grad_accum_steps=2)
    # step 3 on 2 ranks (batch 3 of each) and on 1 rank with accumulation 2 (batches 6 and 7): the same two seeds
    assert [micro_batch_seed(0, 1, s.global_micro_batch(3)) for s in two_ranks] == \
        [micro_batch_seed(0, 1, one_rank.global_micro_batch(b)) for b in (6, 7)]


def test_elastic_position_keeps_the_global_batch_or_refuses_with_the_arithmetic():
    batching = lambda n, b, a: {"num_processes": n, "batch_size": b, "grad_accum_steps": a}  # noqa: E731
    assert elastic_position(10, batching(16, 32, 1), batching(8, 32, 2)) == 20  # 10 steps: 10 batches -> 20 per rank
    assert elastic_position(20, batching(8, 32, 2), batching(16, 32, 1)) == 10
    assert elastic_position(6, batching(2, 8, 3), batching(3, 8, 2)) == 4
    with pytest.raises(ValueError) as err:
        elastic_position(10, batching(2, 8, 1), batching(1, 8, 1))
    assert str(err.value) == ("it was saved with 2 processes x --batch_size 8 x --grad_accum_steps 1 = 16 images per "
                              "step, this launch has 1 x 8 x 1 = 8; resume with --batch_size 8 --grad_accum_steps 2 "
                              "(the same 8-image micro-batches, processes x accumulation = 2)")
    with pytest.raises(ValueError, match=r"2 x 16 x 1 = 32; resume with --batch_size 8 --grad_accum_steps 2"):
        elastic_position(0, batching(4, 8, 1), batching(2, 16, 1))  # same global batch, other micro-batches
    with pytest.raises(ValueError, match="--batch_size 8 on a process count that divides 4"):
        elastic_position(0, batching(4, 8, 1), batching(3, 8, 1))


# ---------------------------------------------------------------------------------------------------------------
# collate, normalize, batch augmentations


def test_rows_that_only_reference_a_file(tmp_path, photos):
    """An unembedded copy (image bytes null, a path set) reads the file; neither bytes nor a path is a clear error."""
    (tmp_path / "chelsea.JPEG").write_bytes(photos["chelsea"])
    split = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(tmp_path / "chelsea.JPEG")},
                                                  {"bytes": None, "path": ""}], "label": [1, 2]}, features=FEATURES)
    assert bytes(Rows(split)[0][0]) == photos["chelsea"] and Rows(split)[0][1] == 1
    assert EvalSet(split, 32)[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        Rows(split)[1]


def test_collate_dtype_shape_and_layout(ds):
    evalset = EvalSet(ds["validation"], 32)
    x, y = collate([evalset[i] for i in range(5)])
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last), "NHWC: what the resize writes and train.py wants"
    assert y.dtype == torch.int64 and y.tolist() == [i % len(WNIDS) for i in range(5)]
    assert torch.equal(x[3], evalset[3][0])
    mixed = [(torch.arange(24, dtype=torch.uint8).view(3, 2, 4), 0), (torch.zeros(2, 4, 3, dtype=torch.uint8)
                                                                      .permute(2, 0, 1), 1)]
    assert torch.equal(collate(mixed)[0], torch.stack([m[0] for m in mixed])), "any input layout gives the same values"


def test_collate_refuses_what_it_would_broadcast_or_cast():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 CHW images of one shape"):
        collate([(image, 0), (image[:1], 1)])
    with pytest.raises(ValueError, match="uint8 CHW images of one shape"):
        collate([(image.float(), 0)])


def test_sample_rng_keys_are_distinct_for_negative_seeds():
    draws = {sample_rng(seed, epoch, index).random() for seed in (-1, 0, 1) for epoch in (0, 1) for index in (0, 1)}
    assert len(draws) == 12


def test_rows_null_image_struct_is_an_error_not_stale_bytes():
    """A null image entry can hide bytes under its fields; Rows must not hand them out as the image."""
    image = pa.StructArray.from_arrays([pa.array([b"real", b"hidden"]), pa.array(["a.JPEG", "b.JPEG"])],
                                       names=["bytes", "path"], mask=pa.array([False, True]))
    rows = Rows(datasets.Dataset(pa.table({"image": image, "label": pa.array([0, 1])})))
    assert bytes(rows[0][0]) == b"real"
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        rows[1]


def _batch_is_shared(batch):
    x, y = collate(batch)
    return x, y, x.is_shared()


def test_collate_in_a_worker_writes_shared_memory(ds):
    """In a worker the batch is allocated in shared memory (sent by handle, not copied) and arrives intact."""
    train = TrainSet(ds["train"], 48, seed=2)
    keys = [[(0, i) for i in range(4)], [(0, i) for i in range(4, 8)]]
    loader = torch.utils.data.DataLoader(train, batch_sampler=keys, collate_fn=_batch_is_shared, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(keys)
    for (x, y, shared), batch_keys in zip(batches, keys, strict=True):
        assert shared
        assert torch.equal(x, torch.stack([train[k][0] for k in batch_keys]))


def test_resize_layout_does_not_change_values():
    """The channels_last-contiguous input (for the AVX2 kernel) gives the same pixels as the plain NCHW resize."""
    pixels = torch.randint(0, 256, (61, 83, 3), dtype=torch.uint8)
    for crop in (pixels, pixels[5:50, 7:70]):
        ours = resize_uint8(crop, (40, 52), "bilinear")
        ref = torch.nn.functional.interpolate(crop.permute(2, 0, 1).contiguous()[None].float(), size=(40, 52),
                                              mode="bilinear", antialias=True)[0]
        assert ours.shape == (3, 40, 52)
        assert (ours.float() - ref.round().clamp(0, 255)).abs().max() <= 1


def test_resize_is_f_interpolate_bit_for_bit():
    """resize_uint8 calls F.interpolate's antialiased kernels directly: the same uint8 pixels, for crop views too; an
    image already at the size is returned as it is."""
    pixels = torch.randint(0, 256, (61, 83, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for crop in (pixels, pixels[5:50, 7:70]):
        for mode in ("bilinear", "bicubic"):
            for size in ((40, 52), (90, 30)):
                ref = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None].contiguous(
                    memory_format=torch.channels_last), size=size, mode=mode, antialias=True)[0]
                assert torch.equal(resize_uint8(crop, size, mode), ref), (mode, size)
    same = resize_uint8(pixels[:40, :52], (40, 52), "bilinear")
    assert torch.equal(same, pixels[:40, :52].permute(2, 0, 1))


def test_normalize_matches_torchvision_and_keeps_channels_last():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = T.Normalize(MEAN, STD)(x.float() / 255)
    out = normalize(x, MEAN, STD)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    cl = normalize(x.contiguous(memory_format=torch.channels_last), MEAN, STD, dtype=torch.bfloat16)
    assert cl.dtype == torch.bfloat16 and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(cl.float(), ref, atol=0.03)
    with pytest.raises(ValueError, match="0..1"):
        normalize(x, [123.7, 116.3, 103.5], [58.4, 57.1, 57.4])


def test_a_one_channel_network_gets_pils_luminance_of_each_image():
    """One mean and std value (in_chans=1): each RGB image becomes PIL's convert("L") of it, to the grey level, as
    timm's validate.py feeds a one-channel network; three keep the RGB batch."""
    x = torch.randint(0, 256, (3, 3, 9, 11), dtype=torch.uint8)
    luma = [np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")) for image in x]
    expected = (torch.from_numpy(np.stack(luma))[:, None].float() / 255 - 0.5) / 0.25
    assert torch.allclose(normalize(x, [0.5], [0.25]), expected, atol=1e-5)
    assert normalize(x, MEAN, STD).shape == (3, 3, 9, 11)


def test_the_one_channel_path_builds_no_tensor_from_host_values_per_batch(monkeypatch):
    """On CUDA a tensor built from Python values is a blocking copy, the host waiting for the GPU: after the first
    batch (whose mean/std are cached per device) the luminance path builds none, as the RGB path."""
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for mean, std in (([0.5], [0.25]), (MEAN, STD)):
        normalize(x, mean, std)
        built, tensor = [], torch.tensor
        monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: built.append(args) or tensor(*args, **kwargs))
        for _ in range(3):
            normalize(x, mean, std)
        monkeypatch.setattr(torch, "tensor", tensor)
        assert built == [], (mean, built)


def _generator(seed):
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_and_determinism(mixup_alpha, cutmix_alpha):
    x = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    args = (y, 5, mixup_alpha, cutmix_alpha)
    for seed in range(6):
        xm, t = mixup_cutmix(x, *args, generator=_generator(seed))
        assert torch.allclose(t.sum(1), torch.ones(6))
        xm2, t2 = mixup_cutmix(x, *args, generator=_generator(seed))
        assert torch.equal(xm, xm2) and torch.equal(t, t2)
        assert xm.is_contiguous(memory_format=torch.channels_last)
        # lam is the weight of each sample's own label (y[1] = 1 and its partner y[4] = 4 differ)
        lam = t[1, 1]
        assert torch.equal(t[1].nonzero().flatten(), torch.tensor([1, 4]) if lam < 1 else torch.tensor([1]))
        mixed = x * lam + x.flip(0) * (1 - lam)
        pasted = (xm == x) | (xm == x.flip(0))
        if torch.allclose(xm, mixed, atol=1e-5):
            assert mixup_alpha > 0
        else:  # cutmix: every pixel comes from x or x.flip(0), and the pasted area fraction is 1 - lam
            assert cutmix_alpha > 0 and pasted.all()
            assert math.isclose((xm != x)[1].any(0).float().mean().item(), 1 - lam.item(), abs_tol=1e-5) or \
                torch.equal(x[1], x.flip(0)[1])
    assert not torch.equal(mixup_cutmix(x, *args, generator=_generator(0))[1],
                           mixup_cutmix(x, *args, generator=_generator(1))[1])
    xs, ts = mixup_cutmix(x, y, 5, 0.0, 0.0, generator=_generator(0))
    assert xs is x and torch.equal(ts, torch.nn.functional.one_hot(y, 5).float())


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.0, 0.0), (0.2, 0.0), (0.0, 1.0)])
def test_label_smoothing_in_the_loss_equals_smoothing_the_targets_before_mixing(mixup_alpha, cutmix_alpha):
    """The loss smooths mixup_cutmix's mixed one-hot targets; the numbers are those of mixing smoothed targets
    (off = eps / C, on = 1 - eps + off; timm's Mixup) up to float rounding."""
    x, y, eps, classes = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0]), 0.1, 5
    logits = torch.randn(6, classes, generator=_generator(7))
    _, mixed = mixup_cutmix(x, y, classes, mixup_alpha, cutmix_alpha, generator=_generator(3))
    lam = mixed[1, 1].item()
    smoothed = torch.full((6, classes), eps / classes).scatter_(1, y[:, None], 1 - eps + eps / classes)
    expected = torch.nn.functional.cross_entropy(logits, smoothed * lam + smoothed.flip(0) * (1 - lam))
    loss = torch.nn.functional.cross_entropy(logits, mixed, label_smoothing=eps)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(logits, mixed))  # smoothing counts


def test_random_erasing_rectangles_and_determinism():
    x = torch.zeros(16, 3, 32, 24).contiguous(memory_format=torch.channels_last)
    assert torch.equal(random_erasing(x, 0.0, _generator(0)), x)
    out = random_erasing(x, 1.0, _generator(0))
    assert torch.equal(out, random_erasing(x, 1.0, _generator(0)))
    assert not torch.equal(out, random_erasing(x, 1.0, _generator(1)))
    assert out.is_contiguous(memory_format=torch.channels_last)
    for image in out:
        erased = image != 0
        assert torch.equal(erased[0], erased[1]) and torch.equal(erased[0], erased[2]), "same box on all channels"
        rows, cols = erased[0].any(1).nonzero().flatten(), erased[0].any(0).nonzero().flatten()
        assert len(rows) and len(cols), "prob 1 must erase every image"
        box = erased[0][rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all(), "the erased region is one rectangle"
        assert 0.02 * 32 * 24 * 0.8 <= box.numel() <= 32 * 24 / 3 * 1.2
    some = random_erasing(x, 0.5, _generator(3))
    erased_images = (some != 0).flatten(1).any(1).sum().item()
    assert 2 <= erased_images <= 14


def test_auto_augment_fills_uncovered_borders_with_the_models_mean(ds):
    """A rotation/shear/translation leaves part of the crop uncovered: timm fills it with the model's mean (128 for
    a ViT's 0.5, 124/116/104 for the ImageNet mean), not the ImageNet mean whatever the model."""
    def corner_colours(train):
        return {tuple(train[(e, i)][0][:, 0, 0].tolist()) for e in range(10) for i in range(len(train))}

    vit = corner_colours(TrainSet(ds["train"], 64, seed=0, auto_augment="ta", mean=(0.5, 0.5, 0.5)))
    imagenet = corner_colours(TrainSet(ds["train"], 64, seed=0, auto_augment="ta"))
    assert (128, 128, 128) in vit and (128, 128, 128) not in imagenet
    assert (124, 116, 104) in imagenet and (124, 116, 104) not in vit
