"""preprocess.py's contract on real JPEGs (imagenet_trainer/demo.py trees), plus the parsing in ilsvrc.py."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
import skimage.data
import torch
import torchvision.transforms.functional as TF
import turbojpeg
from PIL import Image, ImageDraw, ImageOps
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

import preprocess
from imagenet_trainer import bad_samples, ilsvrc, jpeg_markers, tile_writer
from imagenet_trainer import manifest as output_manifest
from imagenet_trainer.manifest import MANIFEST as MANIFEST_NAME
from imagenet_trainer.data import EvalSet, TrainSet, decode, random_resized_crop_params, sample_rng
from imagenet_trainer.demo import MANIFEST, ORIGINS, make_ilsvrc_tree

ROOT = Path(__file__).resolve().parents[1]
CONVERTED = ("cmyk", "png_named_jpeg", "exif_orientation_6", "val_cmyk")  # "grayscale" is kept as it is


def manifest(tree: Path) -> dict:
    return json.loads((tree / MANIFEST).read_text())


def raw_rows(path) -> dict:
    """split -> image_id -> row with the image as stored ({bytes, path}), nothing decoded."""
    dd = datasets.load_from_disk(str(path))
    return {split: {r["image_id"]: r for r in ds.cast_column("image", datasets.Image(decode=False))}
            for split, ds in dd.items()}


def size_of(data: bytes) -> tuple:
    return Image.open(io.BytesIO(data)).size


def run_script(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "preprocess.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kwargs)


# ---- the dataset ----

def test_preprocess_and_its_workers_start_without_torch():
    """Each of preprocess.py's --num_proc workers is a fresh interpreter that imports preprocess.py (spawn) and what a
    shard needs: torch and torchvision would add seconds to every one's start (BENCHMARKS.md, "Start-up")."""
    worker_imports = "import sys, preprocess, turbojpeg, imagenet_trainer.archive_layouts"
    proc = subprocess.run([sys.executable, "-c", f"{worker_imports}; print(sorted(set(sys.modules) & "
                           "{'torch', 'torchvision', 'timm', 'transformers'}))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_splits_counts_and_label_order(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    dd = datasets.load_from_disk(str(preprocessed))
    assert set(dd) == {"train", "validation", "test"}
    broken = Counter(m["planted"][kind]["split"] for kind in m["broken"])
    for split, ds in dd.items():
        assert ds.num_rows == m["files"][split] - broken[split], split
        assert list(ds.features) == ["image", "label", "image_id", "objects"]
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["label"].names == m["wnids"] == sorted(m["wnids"])
        assert ds.features["label"].str2int("n01440764") == 0
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    assert report["counts"] == {split: ds.num_rows for split, ds in dd.items()}


def test_labels_train_from_folder_val_from_csv_test_minus_one(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    rows = raw_rows(preprocessed)
    for stem, row in rows["train"].items():
        assert row["label"] == m["wnids"].index(stem.split("_")[0])
    expected_val = {s: label for s, label in m["val_labels"].items() if s != m["planted"]["empty"]["stem"]}
    assert {s: r["label"] for s, r in rows["validation"].items()} == expected_val
    assert {r["label"] for r in rows["test"].values()} == {-1}


def test_skip_report_lists_exactly_the_broken_files(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {m["planted"][kind]["path"] for kind in m["broken"]}
    assert "truncated" in skipped[m["planted"]["truncated"]["path"]]
    assert skipped[m["planted"]["empty"]["path"]] == "empty file"
    assert "not an image" in skipped[m["planted"]["garbage"]["path"]]
    rows = raw_rows(preprocessed)
    for kind in m["broken"]:
        assert m["planted"][kind]["stem"] not in rows[m["planted"][kind]["split"]]


def test_every_image_is_an_upright_rgb_or_grayscale_jpeg_for_every_reader(preprocessed, ilsvrc_tree):
    gray = manifest(ilsvrc_tree)["planted"]["grayscale"]["stem"]  # the only one-channel file
    dd = datasets.load_from_disk(str(preprocessed))
    for split, ds in dd.items():
        for i, row in enumerate(ds.cast_column("image", datasets.Image(decode=False))):
            data = row["image"]["bytes"]
            img = Image.open(io.BytesIO(data))
            mode = "L" if row["image_id"] == gray else "RGB"
            assert (img.format, img.mode) == ("JPEG", mode), row["image_id"]
            assert img.getexif().get(0x0112, 1) == 1, row["image_id"]
            tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            chw = decode_jpeg(tensor)
            assert chw.shape == (len(mode), img.height, img.width), row["image_id"]
            assert decode_image(tensor, mode=ImageReadMode.UNCHANGED).shape == chw.shape
            decoded = ds[i]["image"]  # datasets.Image, which applies EXIF orientation itself
            assert decoded.mode == mode and decoded.size == img.size
    assert gray in dd[manifest(ilsvrc_tree)["planted"]["grayscale"]["split"]]["image_id"]


def _plain(rows: dict, m: dict, tree: Path):
    """(split, stem, stored bytes, file bytes) of every image stored from a plain RGB JPEG."""
    converted = {m["planted"][kind]["stem"] for kind in CONVERTED}
    for split, by_id in rows.items():
        for stem, row in by_id.items():
            if stem not in converted:
                name = f"{stem.split('_')[0]}/{stem}.JPEG" if split == "train" else f"{stem}.JPEG"
                yield split, stem, row["image"]["bytes"], (tree / ilsvrc.SPLIT_DIRS[split] / name).read_bytes()


def test_odd_files_are_converted_and_plain_jpegs_keep_their_pixels_in_tiles(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    rows = raw_rows(preprocessed)
    for kind in CONVERTED:
        p = m["planted"][kind]
        data = rows[p["split"]][p["stem"]]["image"]["bytes"]
        assert data[:2] == b"\xff\xd8" and data != (ilsvrc_tree / p["path"]).read_bytes(), kind
    tiled = small = 0
    for split, stem, stored, original in _plain(rows, m, ilsvrc_tree):
        if len(original) < preprocess.TILE_MIN_BYTES:  # nothing to gain: stored byte for byte
            assert stored == original and decode.tile_grid(stored) is None, stem
            small += 1
            continue
        tiles = decode.tile_grid(stored)
        assert stored != original and tiles is not None and tiles.tile_w <= 64, stem  # default --restart_tile 64
        assert jpeg_markers.INDEX_ID in stored[:tiles.markers[0]], stem  # the tiles are indexed: no marker scan
        a, b = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(stored))
        assert np.array_equal(np.asarray(a), np.asarray(b)), stem  # the same coefficients: the same pixels
        assert a.info.get("icc_profile") == b.info.get("icc_profile") and a.getexif() == b.getexif(), stem
        tiled += 1
    assert tiled >= 3 and small >= 10
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    assert sum(sum(c.values()) for c in report["reencoded"].values()) == len(CONVERTED)
    with_tiles = sum(decode.tile_grid(r["image"]["bytes"]) is not None for by in rows.values() for r in by.values())
    assert sum(report["tiled"].values()) == with_tiles >= tiled
    assert sum(sum(c.values()) for c in report["untiled"].values()) == sum(report["counts"].values()) - with_tiles
    assert all(set(c) <= {"smaller than 24 KB"} for c in report["untiled"].values())


def test_restart_tile_0_stores_plain_jpegs_byte_for_byte(ilsvrc_tree, tmp_path):
    preprocess.main(["--data_dir", str(ilsvrc_tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1",
                     "--restart_tile", "0"])
    m = manifest(ilsvrc_tree)
    rows = raw_rows(tmp_path / "out")
    plain = list(_plain(rows, m, ilsvrc_tree))
    assert len(plain) > 20 and all(stored == original for _, _, stored, original in plain)
    assert all(decode.tile_grid(r["image"]["bytes"]) is None for by_id in rows.values() for r in by_id.values())
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert set(report["tiled"].values()) == {0}


def test_restart_tile_without_libjpeg_turbo_is_one_line(ilsvrc_tree, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "turbojpeg", None)  # as if the wheel were not installed
    monkeypatch.setattr(tile_writer.ctypes.util, "find_library", lambda name: None)
    tile_writer.turbojpeg_library.cache_clear()
    try:
        with pytest.raises(SystemExit, match=r"--restart_tile 64: .*pip install turbojpeg.*--restart_tile 0"):
            preprocess.main(["--data_dir", str(ilsvrc_tree), "--output_dir", str(tmp_path / "out")])
    finally:
        tile_writer.turbojpeg_library.cache_clear()
    assert not (tmp_path / "out.tmp").exists()


def test_exif_rotation_turns_pixels_and_box_together(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    stem = m["planted"]["exif_orientation_6"]["stem"]
    (_, *raw_box), = m["xml_objects"][stem]  # stored-pixel coordinates; painted pure red in the file
    w, h = m["image_sizes"][stem]
    row = raw_rows(preprocessed)["train"][stem]
    img = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert img.size == (h, w)  # turned a quarter
    x0, y0, x1, y1 = row["objects"][0]["bbox"]
    assert (x0, y0, x1, y1) == pytest.approx(ilsvrc.orient_box(raw_box, 6, w, h))
    pixels = np.asarray(img).astype(int)
    inside = pixels[int(y0) + 3:int(y1) - 3, int(x0) + 3:int(x1) - 3].mean(axis=(0, 1))
    assert inside[0] > 200 and inside[1] < 60 and inside[2] < 60  # the red rectangle is where the box says
    mask = np.ones(pixels.shape[:2], bool)
    mask[max(0, int(y0) - 3):int(y1) + 3, max(0, int(x0) - 3):int(x1) + 3] = False
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red[mask].mean() < 0.01  # and nowhere else


def test_box_faults_are_clipped_dropped_and_counted(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    rows = raw_rows(preprocessed)
    planted, xml = m["planted"], m["xml_objects"]

    def objects(kind):
        row = rows[planted[kind]["split"]][planted[kind]["stem"]]
        return [(o["label"], *o["bbox"]) for o in row["objects"]], row["label"]

    (label, *box), = objects("box_float")[0]
    assert box == pytest.approx(xml[planted["box_float"]["stem"]][0][1:]) and box[0] % 1 == 0.5
    (label, *box), = objects("box_past_edge")[0]
    name, x0, y0, x1, y1 = xml[planted["box_past_edge"]["stem"]][0]
    assert box == pytest.approx([x0, y0, m["image_sizes"][planted["box_past_edge"]["stem"]][0], y1])
    assert len(objects("box_inverted")[0]) == 1  # the good box stays, the xmin > xmax one goes
    (label, *box), = objects("box_filename_placeholder")[0]
    assert box == pytest.approx(xml[planted["box_filename_placeholder"]["stem"]][0][1:])
    human, image_label = objects("box_human_name")
    assert xml[planted["box_human_name"]["stem"]][0][0] == m["descriptions"][image_label]
    assert [o[0] for o in human] == [image_label]
    assert objects("box_unknown_name")[0] == []
    several, val_label = objects("box_several")
    assert len(several) == 3 and {o[0] for o in several} == {val_label}
    no_xml = [s for s in rows["train"] if s not in xml]
    assert no_xml and all(rows["train"][s]["objects"] == [] for s in no_xml)
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    boxes = report["boxes"]["train"]
    assert (boxes["clipped"], boxes["dropped_inverted"], boxes["dropped_unknown_name"], boxes["renamed"]) == (1,) * 4


def test_class_descriptions_travel_with_the_dataset(preprocessed, ilsvrc_tree):
    m = manifest(ilsvrc_tree)
    dd = datasets.load_from_disk(str(preprocessed))
    assert ilsvrc.class_descriptions(preprocessed) == m["descriptions"]
    assert ilsvrc.class_descriptions(dd) == m["descriptions"]
    assert ilsvrc.class_descriptions(dd["validation"]) == m["descriptions"]
    assert json.loads(dd["train"].info.description)[ilsvrc.DESCRIPTIONS_KEY] == m["descriptions"]
    # a copy without our metadata whose names are wnids (a Hub dataset): timm's lemma file
    hub = datasets.Dataset.from_dict({"label": [0]}, features=datasets.Features(
        {"label": datasets.ClassLabel(names=["n01440764", "n03126707"])}))
    assert ilsvrc.class_descriptions(hub) == ["tench, Tinca tinca", "crane"]
    named = datasets.Dataset.from_dict({"label": [0]}, features=datasets.Features(
        {"label": datasets.ClassLabel(names=["cat", "dog"])}))
    assert ilsvrc.class_descriptions(named) == ["cat", "dog"]


def test_shorter_side_shrinks_never_enlarges(preprocessed, ilsvrc_tree, tmp_path):
    side = 100
    preprocess.main(["--data_dir", str(ilsvrc_tree), "--output_dir", str(tmp_path / "small"), "--num_proc", "1",
                     "--shorter_side", str(side), "--quality", "80"])
    full, small = raw_rows(preprocessed), raw_rows(tmp_path / "small")
    m = manifest(ilsvrc_tree)
    converted = {m["planted"][kind]["stem"] for kind in CONVERTED}  # re-encoded anyway, at the other quality
    shrunk = kept = 0
    for split in full:
        assert full[split].keys() == small[split].keys()
        for stem, row in full[split].items():
            (w, h), (sw, sh) = size_of(row["image"]["bytes"]), size_of(small[split][stem]["image"]["bytes"])
            assert min(sw, sh) == min(side, w, h) and abs(sw / sh - w / h) < 0.02, stem
            if min(w, h) <= side and stem not in converted:
                kept += 1
                assert small[split][stem]["image"]["bytes"] == row["image"]["bytes"], stem  # not even re-encoded
            elif min(w, h) > side:
                shrunk += 1
            for a, b in zip(row["objects"], small[split][stem]["objects"]):
                assert b["bbox"] == pytest.approx([a["bbox"][0] * sw / w, a["bbox"][1] * sh / h,
                                                   a["bbox"][2] * sw / w, a["bbox"][3] * sh / h], rel=1e-4)
    assert shrunk and kept  # both cases happened


# ---- errors: one line naming the path, nothing written ----

@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory) -> Path:
    return make_ilsvrc_tree(tmp_path_factory.mktemp("clean") / "kaggle", num_classes=2, train_per_class=3,
                            val_per_class=2, num_test=2)


def break_tree(case: str, tree: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """Spoil a copy of a good tree; returns (the --data_dir to pass, the paths the error must name)."""
    train_dir, val_dir = tree / ilsvrc.SPLIT_DIRS["train"], tree / ilsvrc.SPLIT_DIRS["validation"]
    if case == "missing_data_dir":
        return tmp_path / "nowhere", [tmp_path / "nowhere"]
    if case == "missing_val_csv":
        (tree / ilsvrc.VAL_SOLUTION).unlink()
        return tree, [tree / ilsvrc.VAL_SOLUTION]
    if case == "unknown_val_wnid":
        text = (tree / ilsvrc.VAL_SOLUTION).read_text()
        first_wnid = text.splitlines()[1].split(",")[1].split()[0]
        (tree / ilsvrc.VAL_SOLUTION).write_text(text.replace(first_wnid, "n09999999", 1))
        return tree, [tree / ilsvrc.VAL_SOLUTION, "n09999999"]
    if case == "empty_val":
        for p in val_dir.iterdir():
            p.unlink()
        return tree, [val_dir]
    if case == "missing_train":
        shutil.rmtree(train_dir)
        return tree, [train_dir]
    if case == "unknown_train_folder":
        (train_dir / "n09999999").mkdir()
        return tree, [train_dir / "n09999999"]
    if case == "val_image_without_csv_row":
        extra = val_dir / "ILSVRC2012_val_00000009.JPEG"
        extra.write_bytes(next(val_dir.iterdir()).read_bytes())
        return tree, [extra, tree / ilsvrc.VAL_SOLUTION]
    if case == "mapping_is_a_folder":
        (tree / ilsvrc.SYNSET_MAPPING).unlink()
        (tree / ilsvrc.SYNSET_MAPPING).mkdir()
        return tree, [tree / ilsvrc.SYNSET_MAPPING]
    if case == "csv_not_utf8":
        csv_path = tree / ilsvrc.VAL_SOLUTION
        csv_path.write_bytes(csv_path.read_bytes() + b"ILSVRC2012_val_0000000\xe9,n0\n")
        return tree, [csv_path, "UTF-8"]
    if case == "conflicting_val_rows":
        csv_path = tree / ilsvrc.VAL_SOLUTION
        first = csv_path.read_text().splitlines()[1].split(",")[0]
        other = manifest(tree)["wnids"][-1]
        csv_path.write_text(csv_path.read_text() + f"{first},{other} 1 2 3 4\n")
        return tree, [csv_path, first]
    if case == "val_sorted_into_class_folders":
        for p in list(val_dir.iterdir()):
            (val_dir / "n01440764").mkdir(exist_ok=True)
            p.rename(val_dir / "n01440764" / p.name)
        return tree, [val_dir, "valprep"]
    if case == "two_files_one_image_id":
        first = sorted(val_dir.iterdir())[0]
        twin = first.with_suffix(".jpg")
        twin.write_bytes(first.read_bytes())
        return tree, [first, twin.name]
    if case == "file_name_not_utf8":
        odd = val_dir / "ILSVRC2012_val_\udcff.JPEG"  # a byte that is not UTF-8, as Linux hands it to Python
        odd.write_bytes(b"x")
        return tree, [repr(str(odd))]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_data_dir", "missing_val_csv", "unknown_val_wnid", "empty_val",
                                  "missing_train", "unknown_train_folder", "val_image_without_csv_row",
                                  "mapping_is_a_folder", "csv_not_utf8", "conflicting_val_rows",
                                  "val_sorted_into_class_folders", "two_files_one_image_id", "file_name_not_utf8"])
def test_bad_input_is_a_one_line_error_naming_the_path(case, clean_tree, tmp_path):
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    data_dir, named = break_tree(case, tree, tmp_path)
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "PosixPath" not in message
    assert all(str(n) in message for n in named), message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(clean_tree, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(SystemExit, match="is not a preprocess.py output"):
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(tmp_path / "photos"), "--num_proc", "1"])
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_full_label_space_warns_about_missing_images(clean_tree, tmp_path, capsys):
    """1000 classes (all of timm's wnids) but a handful of images: the counts must be flagged, not silently used."""
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    lemmas = ilsvrc.imagenet_lemmas()
    (tree / ilsvrc.SYNSET_MAPPING).write_text("".join(f"{w} {lemmas[w]}\n" for w in ilsvrc.imagenet_wnids()))
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    printed = capsys.readouterr().out
    assert "warning: train: 6 images, full ILSVRC-2012 has 1,281,167" in printed
    assert "warning: validation: 4 images, full ILSVRC-2012 has 50,000" in printed
    assert "warning: 998 classes of LOC_synset_mapping.txt have no train images" in printed
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].features["label"].num_classes == 1000


def test_script_error_exit_code_and_no_traceback(clean_tree, tmp_path):
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    (tree / ilsvrc.VAL_SOLUTION).unlink()
    proc = run_script("--data_dir", tree, "--output_dir", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tree / ilsvrc.VAL_SOLUTION}: not found "
        "(is --data_dir the folder Kaggle's imagenet-object-localization-challenge zip unzips to?)")
    proc = run_script("--data_dir", tree, "--output_dir", tmp_path / "out", "--quality", "0")
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --quality")
    proc = run_script("--data_dir", tree, "--output_dir", tmp_path / "out", "--num_proc", "two")
    assert proc.stderr.strip().splitlines()[-1] == "error: --num_proc must be an int, got 'two'"


# ---- resume ----

def kill_after_shards(args: list, work: Path, shards: int) -> None:
    """Run preprocess.py `args`; SIGKILL it, with no chance to clean up, once `shards` train shards are in `work`."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(work.glob("train/*.arrow"))) < shards and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkilled_run_resumes_without_redoing_shards_and_gives_the_same_dataset(tmp_path):
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=3, train_per_class=50, val_per_class=2, num_test=4)
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir", str(out),
            "--num_proc", "1", "--shard_size", "2", "--shorter_side", "64"]
    kill_after_shards(args, work, 4)
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in work.glob("train/*.arrow")}
    assert len(done) >= 4 and len(done) < 75, "the kill must land mid-run"
    assert not out.exists()

    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} of 80 shards already done" in rerun.stdout
    for name, (mtime, inode) in done.items():
        st = (out / "train" / name).stat()
        assert (st.st_mtime_ns, st.st_ino) == (mtime, inode), f"{name} was redone"
    assert not work.exists() and not (out / preprocess.WORK).exists()

    fresh = subprocess.run([*args[:5], str(tmp_path / "fresh"), "--num_proc", "2", *args[8:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    resumed, uninterrupted = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(tmp_path / "fresh"))
    for split in ("train", "validation", "test"):
        assert resumed[split].features == uninterrupted[split].features
        assert resumed[split].data.table.equals(uninterrupted[split].data.table), split
    assert "validation" in rerun.stdout
    assert f"wrote {out} in " in rerun.stdout  # the seconds are the rerun's alone, and said to be
    assert f" s (this run's time; {len(done)} shards were done by an earlier run)" in rerun.stdout


# ---- stops and deaths with --num_proc workers ----

@pytest.fixture(scope="module")
def stop_tree(tmp_path_factory) -> Path:
    """50 shards of 2 images: a run long enough (seconds) for a signal to land mid-run."""
    return make_ilsvrc_tree(tmp_path_factory.mktemp("stops") / "kaggle", num_classes=3, train_per_class=30,
                            val_per_class=2, num_test=4)


def stop_args(tree: Path, out: Path) -> list:
    return [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir", str(out),
            "--num_proc", "2", "--shard_size", "2", "--shorter_side", "64"]


def interactive():
    """A preexec_fn: SIGINT at its default, as in a terminal (pytest-xdist's workers may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(args: list, stdout=subprocess.PIPE, **kwargs) -> subprocess.Popen:
    """preprocess.py in a process group of its own (a Ctrl-C to the group reaches this run alone)."""
    return subprocess.Popen(args, cwd=ROOT, stdout=stdout, text=True, start_new_session=True, preexec_fn=interactive,
                            **kwargs)


def wait_for(condition, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {seconds} s: {what}"
        time.sleep(0.01)


def is_worker(process: psutil.Process) -> bool:
    """Whether ``process`` is a running --num_proc worker (spawned: `python -c 'from multiprocessing.spawn ...'`)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:  # gone
        return False


def workers_of(proc: subprocess.Popen) -> list:
    return [child for child in psutil.Process(proc.pid).children() if is_worker(child)]


def ended(proc: subprocess.Popen, seconds: float = 60) -> tuple[str, str]:
    """(stdout, stderr) of ``proc`` once it has ended; a failure, its process group killed, if it still runs after
    ``seconds``."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running {seconds} s later")


def test_a_worker_killed_from_outside_ends_the_run_in_one_line_and_a_rerun_resumes(stop_tree, tmp_path):
    """The kernel's out-of-memory killer SIGKILLs a worker: multiprocessing.Pool would start another and wait forever
    for the dead one's shard. The run ends within seconds, in one line saying what to do, status 1; the shards done
    are kept and the same command resumes."""
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = stop_args(stop_tree, out)
    proc = start_run(args, stderr=subprocess.PIPE)
    wait_for(lambda: len(list(work.glob("train/*.arrow"))) >= 2 or proc.poll() is not None, what="2 shards")
    workers = workers_of(proc)
    assert proc.poll() is None and len(workers) == 2, "the kill must land mid-run"
    workers[0].kill()
    killed_at = time.monotonic()
    _, err = ended(proc)
    assert time.monotonic() - killed_at < 10, "the run must end within seconds of the kill"
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == (
        f"error: worker process {workers[0].pid} was killed by SIGKILL, probably by the kernel's out-of-memory "
        f"killer: lower --num_proc; finished shards are kept in {work}: run the same command to resume")
    assert not psutil.wait_procs(workers, timeout=10)[1], "the other worker must be gone too"
    assert not (tmp_path / "out.lock").exists() and not out.exists()

    done = {p.name: p.stat().st_mtime_ns for p in work.glob("train/*.arrow")}
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming {work}: {len(done)} of 50 shards already done" in rerun.stdout
    assert all((out / "train" / n).stat().st_mtime_ns == t for n, t in done.items()), "finished shards redone"
    assert datasets.load_from_disk(str(out))["train"].num_rows == 90


def test_the_workers_of_a_killed_run_leave_at_once_without_a_word(stop_tree, tmp_path):
    """preprocess.py itself SIGKILLed: its workers end within a second, mid-shard or idle, with no traceback of a
    broken pipe (multiprocessing.Pool's workers printed one each) and no orphan left to write the shard a rerun
    writes."""
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    with open(tmp_path / "stderr", "w") as stderr:  # the workers' stderr too, written after the run's death
        proc = start_run(stop_args(stop_tree, out), stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for(lambda: len(list(work.glob("train/*.arrow"))) >= 2 or proc.poll() is not None, what="2 shards")
        workers = workers_of(proc)
        assert proc.poll() is None and len(workers) == 2, "the kill must land mid-run"
        proc.kill()
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=5)
    for p in alive:
        p.kill()
    assert not alive, "workers outlived the run"
    err = (tmp_path / "stderr").read_text()
    assert "Traceback" not in err and "Error" not in err and "leaked" not in err, err[-3000:]


# preprocess.py with a Ctrl-C to its process group (a terminal's) right after its first worker process started: the
# workers' pids a line each in $PIDS
CTRL_C_AT_WORKER_START = """
import os, signal, sys
import multiprocessing.context
import preprocess
real = multiprocessing.context.SpawnProcess.start
def start(self):
    real(self)
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{self.pid}\\n")
    if os.environ.pop("CTRL_C", None):
        os.killpg(0, signal.SIGINT)
multiprocessing.context.SpawnProcess.start = start
preprocess.main(sys.argv[1:])
"""


def test_ctrl_c_while_the_workers_start_ends_the_run_in_one_line(stop_tree, tmp_path):
    """The workers start with SIGINT blocked, and the run holds its own Ctrl-C until they have started: it was
    dropped (the run went on to the end), as the run ignored SIGINT while multiprocessing.Pool started."""
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    env = {**os.environ, "PIDS": str(tmp_path / "pids"), "CTRL_C": "1"}
    proc = start_run([sys.executable, "-c", CTRL_C_AT_WORKER_START, *stop_args(stop_tree, out)[2:]],
                     stderr=subprocess.PIPE, env=env)
    _, err = ended(proc)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == f"interrupted: finished shards are kept in {work}; run the same command to resume"
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    assert not any(psutil.pid_exists(pid) and is_worker(psutil.Process(pid)) for pid in pids), "workers left"
    assert not (tmp_path / "out.lock").exists() and not out.exists()


# preprocess.py run as a script, `import datasets` held (a file in $MARK says so) until a signal ends the process
CTRL_C_WHILE_IMPORTING = """
import os, runpy, sys, time
class Hold:
    def find_spec(self, name, path=None, target=None):
        if name == "datasets":
            open(os.environ["MARK"], "w").close()
            time.sleep(60)
        return None
sys.meta_path.insert(0, Hold())
sys.argv = ["preprocess.py", *sys.argv[1:]]
runpy.run_path("preprocess.py", run_name="__main__")
"""


def test_ctrl_c_while_importing_is_one_line_and_status_130(stop_tree, tmp_path):
    mark = tmp_path / "importing"
    proc = start_run([sys.executable, "-c", CTRL_C_WHILE_IMPORTING, *stop_args(stop_tree, tmp_path / "out")[2:]],
                     stderr=subprocess.PIPE, env={**os.environ, "MARK": str(mark)})
    wait_for(lambda: mark.exists() or proc.poll() is not None, what="the imports")
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = ended(proc)
    assert (proc.returncode, err, out) == (130, "interrupted while starting (nothing was written yet)\n", "")


def test_work_dir_of_another_job_is_discarded(clean_tree, tmp_path, capsys):
    out = tmp_path / "out"
    stale = tmp_path / "out.tmp" / "train" / "data-00000-of-00001.arrow"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a run with other settings")
    (tmp_path / "out.tmp" / preprocess.WORK).mkdir()
    (tmp_path / "out.tmp" / preprocess.WORK / "job.json").write_text('{"quality": 75}')
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"])
    assert "starting over" in capsys.readouterr().out
    assert datasets.load_from_disk(str(out))["train"].num_rows == 6


@pytest.mark.parametrize("how", ["deleted", "emptied", "readme_only"])
def test_test_split_is_optional(how, clean_tree, tmp_path, capsys):
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    test_dir = tree / ilsvrc.SPLIT_DIRS["test"]
    shutil.rmtree(test_dir)
    if how != "deleted":
        test_dir.mkdir()
    if how == "readme_only":  # what is left when the images are deleted and a note on why is kept
        (test_dir / "README.txt").write_text("test images deleted to save 13 GB")
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    printed = capsys.readouterr().out
    assert f"warning: {test_dir}: no images; the dataset has train and validation only" in printed
    assert (f"warning: 1 non-image files in {test_dir} left out, e.g. README.txt" in printed) == (how == "readme_only")
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(dd) == {"train", "validation"} and dd["train"].num_rows == 6 and dd["validation"].num_rows == 4


@pytest.mark.parametrize("kind", ["foreign_folder", "file"])
def test_never_deletes_a_work_dir_it_did_not_start(kind, clean_tree, tmp_path):
    work = tmp_path / "out.tmp"
    if kind == "file":
        work.write_bytes(b"precious")
    else:
        work.mkdir()
        (work / "thesis.tex").write_bytes(b"precious")
    with pytest.raises(SystemExit, match="is not a preprocess.py work folder"):
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    assert (work if kind == "file" else work / "thesis.tex").read_bytes() == b"precious"


def test_output_that_cannot_be_created_is_a_one_line_error(clean_tree, tmp_path):
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(tmp_path / "a_file" / "out"),
                         "--num_proc", "1"])
    assert str(e.value.code).startswith(f"error: --output_dir {tmp_path / 'a_file' / 'out'}: cannot create")


def test_a_file_system_root_as_output_is_a_one_line_error(clean_tree):
    with pytest.raises(SystemExit) as e:  # OUT.tmp and OUT.lock go beside OUT: a root has no name to add to
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", "/", "--num_proc", "1"])
    assert str(e.value.code) == "error: --output_dir / is a file system root; choose a folder below it"


@pytest.mark.parametrize("encoding", ["ISO-8859-1x", "utf-32"])  # Python's LookupError, expat's ValueError
def test_xml_declaring_an_encoding_expat_cannot_read_is_an_annotation_error(encoding, clean_tree, tmp_path):
    """A declared encoding expat cannot use (a flipped byte, a tool's typo) is one more unreadable XML file, reported
    with its path, its image kept without boxes, not an error that ends every rerun at the same shard."""
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    xml = sorted((tree / ilsvrc.ANNOTATION_DIRS["train"]).glob("n*/*.xml"))[0]
    xml.write_bytes(f'<?xml version="1.0" encoding="{encoding}"?>\n'.encode() + xml.read_bytes())
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    (error,) = report["annotation_errors"]
    assert error.startswith(f"{xml}: not valid XML (")
    assert raw_rows(tmp_path / "out")["train"][xml.stem]["objects"] == []
    assert manifest(tree)["xml_objects"][xml.stem]  # it had boxes


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 cores to pin the run to 1 of them")
def test_num_proc_0_uses_the_cores_this_process_may_run_on(clean_tree, tmp_path, monkeypatch):
    """Pinned to one core (taskset -c 0, SLURM's --cpus-per-task=1): one worker, not one per core of the machine,
    all taking turns on that core, each holding its own memory."""
    used, convert = [], preprocess.convert
    monkeypatch.setattr(preprocess, "convert", lambda *a: used.append(a[3]) or convert(*a))
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:  # 3 shards (train, validation, test): room for more workers than 1
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "0"])
    finally:
        os.sched_setaffinity(0, cores)
    assert used == [1]
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].num_rows == 6


def test_strays_empty_classes_and_unreadable_xml_are_reported_not_fatal(clean_tree, tmp_path, capsys):
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    val_dir, train_dir = tree / ilsvrc.SPLIT_DIRS["validation"], tree / ilsvrc.SPLIT_DIRS["train"]
    (val_dir / "readme.txt").write_text("not an image")
    wnid = sorted(os.listdir(train_dir))[0]
    nested = train_dir / wnid / wnid  # an extra folder level: the class's files are not where they belong
    nested.mkdir()
    for p in (train_dir / wnid).glob("*.JPEG"):
        p.rename(nested / p.name)
    xml = tree / ilsvrc.ANNOTATION_DIRS["validation"] / (sorted(val_dir.glob("*.JPEG"))[0].stem + ".xml")
    train_xml = sorted((tree / ilsvrc.ANNOTATION_DIRS["train"]).glob("n*/*.xml"))[-1]  # of the other class
    for path in (xml, train_xml):
        path.unlink(missing_ok=True)
        path.mkdir()  # unreadable as a file
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    printed = capsys.readouterr().out
    assert "warning: 1 non-image files in" in printed and "readme.txt" in printed
    assert "1 classes of LOC_synset_mapping.txt have no train images" in printed and wnid in printed
    assert ("2 annotation files could not be read: 1 train (those images have no boxes), 1 validation (those "
            "images keep their boxes from the CSV)") in printed
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert any(str(xml) in e for e in report["annotation_errors"])
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert dd["train"].num_rows == 3 and dd["validation"].num_rows == 4


# ---- the digits fixture and the demo CLI ----

def test_digits_dataset_is_stratified(digits_dataset):
    dd = datasets.load_from_disk(str(digits_dataset))
    assert Counter(dd["train"]["label"]) == {k: 100 for k in range(10)}
    assert Counter(dd["validation"]["label"]) == {k: 20 for k in range(10)}
    assert dd["test"].num_rows == 20
    img = dd["train"][0]["image"]
    assert img.mode == "RGB" and 32 <= min(img.size) and max(img.size) <= 64


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "ilsvrc" / "mine").mkdir(parents=True)
    (tmp_path / "ilsvrc" / "mine" / "thesis.tex").write_bytes(b"precious")
    with pytest.raises(ValueError, match="is not a demo tree"):
        make_ilsvrc_tree(tmp_path / "ilsvrc", source="digits", num_classes=1, train_per_class=1, val_per_class=1,
                         num_test=1)
    assert (tmp_path / "ilsvrc" / "mine" / "thesis.tex").read_bytes() == b"precious"
    for _ in range(2):  # its own tree is replaced
        tree = make_ilsvrc_tree(tmp_path / "demo", source="digits", num_classes=1, train_per_class=1,
                                val_per_class=1, num_test=1)
    assert manifest(tree)["files"]["train"] == 1


def test_demo_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagenet_trainer.demo", "--output", str(tmp_path / "d"),
                           "--source", "digits", "--num_classes", "3", "--train_per_class", "2",
                           "--val_per_class", "1", "--num_test", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert manifest(tmp_path / "d")["files"] == {"train": 6, "validation": 3, "test": 1}
    assert sorted(os.listdir(tmp_path / "d" / ilsvrc.SPLIT_DIRS["train"])) == ilsvrc.imagenet_wnids()[:3]
    proc = subprocess.run([sys.executable, "-m", "imagenet_trainer.demo", "--output", str(tmp_path / "e"),
                           "--source", "digits", "--num_classes", "11"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: num_classes=11")


# ---- ilsvrc.py parsing ----

@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_box_matches_pillow_exif_transpose(orientation):
    w, h, box = 40, 30, (5, 7, 17, 12)
    img = Image.new("L", (w, h))
    ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)  # pixels 5..16 x 7..11
    img.getexif()[0x0112] = orientation
    upright = ImageOps.exif_transpose(img)
    assert ilsvrc.orient_box(box, orientation, w, h) == upright.getbbox()


def test_clip_box():
    assert ilsvrc.clip_box((1.5, 2, 10, 20), 50, 40) == ((1.5, 2, 10, 20), "ok")
    assert ilsvrc.clip_box((-3, 2, 60, 20), 50, 40) == ((0, 2, 50, 20), "clipped")
    assert ilsvrc.clip_box((10, 2, 5, 20), 50, 40) == (None, "inverted")
    assert ilsvrc.clip_box((55, 2, 70, 20), 50, 40) == (None, "empty")
    assert ilsvrc.clip_box((float("nan"), 2, 10, 20), 50, 40) == (None, "nan")
    assert ilsvrc.clip_box((0, 2, float("inf"), 20), 50, 40) == ((0, 2, 50, 20), "clipped")


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_high_bit_depth_grayscale_is_rescaled_not_clipped(mode):
    ramp = np.tile(np.linspace(0, 1, 64), (16, 1))  # black to white, left to right
    if mode == "I;16":
        img, fmt = Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)), "PNG"  # a 16-bit grayscale PNG
    else:
        img, fmt = Image.fromarray(ramp.astype(np.float32), "F"), "TIFF"  # floats in 0..1
    buf = io.BytesIO()
    img.save(buf, fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode
    enc = preprocess.encode_image(buf.getvalue(), None, 95)
    assert enc.why == f"{fmt} file, mode {mode}"
    pixels = np.asarray(Image.open(io.BytesIO(enc.data)).convert("L"), dtype=float)
    assert np.abs(pixels - ramp * 255).mean() < 2  # Pillow's convert alone gives white (I;16) or black (F)


def test_a_lossless_jpeg_is_re_encoded_and_then_tiled_like_any_photo():
    """Lossless JPEGs (SOF3: not in ImageNet, but in users' own images) cannot be decoded at a reduced DCT scale and
    take several times the bytes: stored as a sequential JPEG at --quality, they decode like every other file."""
    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([x * 255 // 499, y * 255 // 374, (x + y) % 256], -1).astype(np.uint8)
    lossless = turbojpeg.compress(pixels, 100, turbojpeg.SAMP.Y444, lossless=True)
    assert jpeg_markers.lossless(jpeg_markers.header_segments(lossless))
    enc = preprocess.encode_image(lossless, None, 90)
    assert enc.why == "lossless JPEG" and enc.size == (500, 375)
    assert not jpeg_markers.lossless(jpeg_markers.header_segments(enc.data)) and len(enc.data) < len(lossless) / 2
    assert np.abs(np.asarray(Image.open(io.BytesIO(enc.data)), dtype=float) - pixels).mean() < 3
    tiled = preprocess.tile(enc.data, 64)
    assert tiled is not None and decode.tile_grid(tiled) is not None
    plain = io.BytesIO()
    Image.fromarray(pixels).save(plain, "JPEG", quality=90)
    assert preprocess.encode_image(plain.getvalue(), None, 90).why is None  # a lossy JPEG is stored as it is


@pytest.mark.parametrize("progressive", [False, True])
def test_a_multi_picture_jpeg_keeps_its_first_picture_losslessly(progressive):
    """A phone's photo with an MPF second picture (Pillow: format MPO) is a JPEG: its first picture is stored with
    its own coefficients, as a plain JPEG (no MPF offsets into bytes that are gone), not re-encoded at --quality."""
    photo = Image.fromarray(skimage.data.astronaut())
    buf = io.BytesIO()
    photo.save(buf, "MPO", save_all=True, append_images=[photo.resize((64, 64))], quality=92, progressive=progressive)
    original = Image.open(io.BytesIO(buf.getvalue()))
    assert (original.format, original.n_frames) == ("MPO", 2)
    enc = preprocess.encode_image(buf.getvalue(), None, 90)
    stored = Image.open(io.BytesIO(enc.data))
    assert enc.why is None and stored.format == "JPEG" and len(enc.data) < len(buf.getvalue())
    assert np.array_equal(np.asarray(stored), np.asarray(original.convert("RGB")))  # frame 0, to the last bit
    assert b"MPF\x00" not in enc.data and enc.data.endswith(b"\xff\xd9")
    tiled = preprocess.tile(enc.data, 64)
    assert tiled is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(tiled))), np.asarray(stored))


def _gray_jpeg(width: int, height: int, seed: int, **save) -> bytes:
    """A grayscale (mode L, one-component) JPEG: a gradient under noise, so every DCT block has detail to lose."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).normal(0, 25, (height, width))
    buf = io.BytesIO()
    Image.fromarray(np.clip(x * 150 / width + y * 80 / height + noise, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=90, **save)
    return buf.getvalue()


GRAY = {"large": lambda: _gray_jpeg(600, 450, 0),  # ~140 KB: tiled by default, decoded at 1/2-1/8 by training
        "large_progressive": lambda: _gray_jpeg(450, 600, 1, progressive=True),
        "small": lambda: _gray_jpeg(64, 48, 2)}  # under TILE_MIN_BYTES: never tiled


def _pil_rgb_at(data: bytes, factor: int) -> np.ndarray:
    """PIL's convert("RGB") of a JPEG decoded at 1/factor DCT scale (draft: libjpeg's scaled IDCT)."""
    image = Image.open(io.BytesIO(data))
    image.draft("L", (image.width // factor, image.height // factor))
    return np.asarray(image.convert("RGB"))


def _decodes_to_pils_rgb_at_every_scale(data: bytes, original: bytes) -> None:
    """The stored bytes' header probe, the train decode at each DCT scale (1: EvalSet's) and the bad-sample check
    give PIL's convert("RGB") of the original file at that scale."""
    height, width, fast_ok = decode.probe(data)
    assert (height, width, fast_ok) == (*Image.open(io.BytesIO(original)).size[::-1], True)
    for factor in (1, 2, 4, 8):
        pixels, _, _ = decode.decode_scaled(data, height, width, factor, fast_ok, fast_dct=False)
        expected = _pil_rgb_at(original, factor)
        assert expected.shape == (-(-height // factor), -(-width // factor), 3)
        assert np.array_equal(pixels, expected), factor
    assert bad_samples.decodes(data)


def _gray_tree(root: Path, files: dict) -> Path:
    for split in ("train", "val"):
        for k, (name, data) in enumerate(files.items()):
            (root / split / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
            (root / split / "ab"[k % 2] / f"{name}.JPEG").write_bytes(data)
    return root


@pytest.mark.parametrize("restart_tile", [0, 64])
def test_a_grayscale_jpeg_is_stored_as_it_is_and_every_reader_sees_pils_rgb_conversion(tmp_path, restart_tile):
    """ImageNet, -Sketch, -R and -V2 hold grayscale JPEGs, which timm and torchvision evaluate as
    Image.open(file).convert("RGB"). Stored as they are (a re-encode at --quality moves them ~1.7 grey levels on
    average) or tiled losslessly, they decode to exactly those pixels in EvalSet (validate.py), in the train decode
    at every DCT scale and in the bad-sample check; TrainSet's tiled crops are the untiled file's."""
    files = {name: make() for name, make in GRAY.items()}
    out = tmp_path / "out"
    preprocess.main(["--data_dir", str(_gray_tree(tmp_path / "sketch", files)), "--output_dir", str(out),
                     "--num_proc", "1", "--restart_tile", str(restart_tile)])
    report = json.loads((out / "preprocess_report.json").read_text())
    assert not any(report["reencoded"].values()), report["reencoded"]
    png = {}  # each file's RGB conversion, stored losslessly: the same pipeline's input for the reference
    for name, data in files.items():
        Image.open(io.BytesIO(data)).convert("RGB").save(png.setdefault(name, io.BytesIO()), "PNG")
    factors = set()
    for split, ds in datasets.load_from_disk(str(out)).items():
        names = [image_id.split("/")[1] for image_id in ds["image_id"]]
        stored = [row["image"]["bytes"] for row in ds.cast_column("image", datasets.Image(decode=False))]
        assert sorted(names) == sorted(files)
        for name, data in zip(names, stored):
            if restart_tile and len(files[name]) >= preprocess.TILE_MIN_BYTES:  # the same coefficients, in tiles
                assert decode.tile_grid(data) is not None and np.array_equal(
                    np.asarray(Image.open(io.BytesIO(data))), np.asarray(Image.open(io.BytesIO(files[name]))))
            else:
                assert data == files[name], (split, name)
            _decodes_to_pils_rgb_at_every_scale(data, files[name])
        features = datasets.Features({"image": datasets.Image(), "label": ds.features["label"]})
        reference = datasets.Dataset.from_dict({"image": [{"bytes": png[n].getvalue(), "path": None} for n in names],
                                                "label": ds["label"]}, features=features)
        for crop_mode in ("center", "border"):
            ours, theirs = EvalSet(ds, 224, crop_mode=crop_mode), EvalSet(reference, 224, crop_mode=crop_mode)
            for i, name in enumerate(names):
                (x, label), (ref, ref_label) = ours[i], theirs[i]
                assert torch.equal(x, ref) and label == ref_label >= 0, (split, name, crop_mode)
        untiled = datasets.Dataset.from_dict({"image": [{"bytes": files[n], "path": None} for n in names],
                                              "label": ds["label"]}, features=features)
        train, plain = TrainSet(ds, 64, seed=0), TrainSet(untiled, 64, seed=0)
        for i, name in enumerate(names):
            for epoch in range(4):
                (x, _, replaced), (y, _, _) = train.sample((epoch, i)), plain.sample((epoch, i))
                assert replaced is None and torch.equal(x, y) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
                top, left, h, w = random_resized_crop_params(*size_of(files[name])[::-1], (0.08, 1.0),
                                                             (3 / 4, 4 / 3), rng := sample_rng(0, epoch, i))
                factors.add(decode.dct_factor(min(h, w), 64))
                full = Image.open(io.BytesIO(files[name])).convert("RGB")
                ref = TF.pil_to_tensor(TF.resized_crop(full, top, left, h, w, [64, 64]))
                ref = ref.flip(-1) if rng.random() < 0.5 else ref
                assert (x.float() - ref.float()).abs().mean() < 4.0, (split, name, epoch)  # fast IDCT, DCT scale
    assert {1, 2} <= factors, "the keys must exercise full-scale and DCT-scaled crops"


def test_decompression_bomb_guard_is_its_own_skip_reason(monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(preprocess.BadImage, match="decompression-bomb guard.*larger --max_image_pixels"):
        preprocess.encode_image(buf.getvalue(), None, 90)


def test_solution_csv_parsing_and_errors(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\n"
                    "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n")
    assert ilsvrc.read_solution_csv(path, ["n02119789"]) == {
        "ILSVRC2012_val_00008726": [("n02119789", 255, 142, 454, 329), ("n02119789", 44, 21, 322, 295)]}
    with pytest.raises(ValueError, match=f"{path}:2: unknown wnid 'n02119789'"):
        ilsvrc.read_solution_csv(path, ["n01440764"])
    path.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n02119789 1 2 3\n")
    with pytest.raises(ValueError, match=f"{path}:2: PredictionString"):
        ilsvrc.read_solution_csv(path, ["n02119789"])
    path.write_text("id,label\n")
    with pytest.raises(ValueError, match=f"{path}:1: expected the header"):
        ilsvrc.read_solution_csv(path, ["n02119789"])
    path.write_text("\ufeffImageId,PredictionString\r\nA,n02119789 1 2 3 4\r\nA,n02119789 1 2 3 4\r\n")  # BOM, CRLF
    assert ilsvrc.read_solution_csv(path, ["n02119789"]) == {"A": [("n02119789", 1, 2, 3, 4)]}  # a repeat is fine
    path.write_text("ImageId,PredictionString\nA,n02119789 1 2 3 4\nA,n01440764 1 2 3 4\n")
    with pytest.raises(ValueError, match=f"{path}:3: A is listed twice with different boxes"):
        ilsvrc.read_solution_csv(path, ["n02119789", "n01440764"])


def test_synset_mapping_and_label_lookup(tmp_path):
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("n03126707 crane\nn01440764 tench, Tinca tinca\nn02012849 crane\n")
    wnids, descriptions = ilsvrc.read_synset_mapping(path)
    assert wnids == ["n01440764", "n02012849", "n03126707"]
    assert descriptions == ["tench, Tinca tinca", "crane", "crane"]
    lookup = ilsvrc.label_lookup(wnids, descriptions)
    assert lookup["n03126707"] == 2 and lookup["tench"] == 0 and lookup["tench, tinca tinca"] == 0
    assert "crane" not in lookup  # ambiguous: a box named "crane" is dropped, never guessed
    path.write_text("tench n01440764\n")
    with pytest.raises(ValueError, match=f"{path}:1"):
        ilsvrc.read_synset_mapping(path)
    path.write_text("n01440764\ttench, Tinca tinca\nn01440764 tench\n")
    with pytest.raises(ValueError, match=f"{path}: n01440764 is listed twice"):
        ilsvrc.read_synset_mapping(path)


def test_voc_xml_ignores_filename_and_keeps_floats(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("<annotation><filename>%s</filename><object><name>n01440764</name><bndbox><xmin>1.5</xmin>"
                    "<ymin>2</ymin><xmax>30.25</xmax><ymax>40</ymax></bndbox></object></annotation>")
    assert ilsvrc.read_voc_xml(path) == [("n01440764", 1.5, 2.0, 30.25, 40.0)]
    path.write_text("<annotation><object>")
    with pytest.raises(ValueError, match=str(path)):
        ilsvrc.read_voc_xml(path)
    for encoding in ("ISO-8859-1x", "rot13", "utf-32", "idna"):  # LookupError, LookupError, ValueError, UnicodeError
        path.write_text(f'<?xml version="1.0" encoding="{encoding}"?><annotation/>')
        with pytest.raises(ValueError, match=f"{path}: not valid XML"):
            ilsvrc.read_voc_xml(path)


def test_demo_grain_makes_imagenet_sized_files(tmp_path):
    """The benchmark trees: ImageNet's 500x375 shapes, and with grain the ~3x larger files real photos give (the
    entropy decoding both loader pipelines pay grows with them)."""
    def mean_train_bytes(grain):
        root = make_ilsvrc_tree(tmp_path / f"g{grain}", num_classes=2, train_per_class=4, val_per_class=1,
                                num_test=1, long_side=500, grain=grain)
        files = list((root / ilsvrc.SPLIT_DIRS["train"]).rglob("*.JPEG"))
        assert all(sorted(Image.open(f).size) == [375, 500] for f in files)
        return np.mean([f.stat().st_size for f in files])

    plain, grainy = mean_train_bytes(0), mean_train_bytes(32)
    assert grainy > 2 * plain and grainy > 60_000, (plain, grainy)
    with pytest.raises(ValueError, match="grain"):
        make_ilsvrc_tree(tmp_path / "bad", grain=-1)


def test_demo_quality_writes_re_encoded_photos(tmp_path):
    """--quality: every photo sequential at that JPEG quality (the re-encoded photo benchmark set), the same files
    for the same seed; without it, ImageNet's mix of qualities and progressive files."""
    def train_files(name, **kw):
        root = make_ilsvrc_tree(tmp_path / name, num_classes=2, train_per_class=4, val_per_class=1, num_test=1,
                                long_side=500, **kw)
        return sorted((root / ilsvrc.SPLIT_DIRS["train"]).rglob("*.JPEG"))

    files = train_files("q90", grain=11, quality=90)
    again = train_files("q90_again", grain=11, quality=90)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]
    reference = io.BytesIO()
    Image.new("RGB", (16, 16)).save(reference, "JPEG", quality=90)
    q90 = Image.open(reference).quantization
    for f in files:
        image = Image.open(f)
        assert not image.info.get("progressive") and sorted(image.size) == [375, 500]
        assert image.quantization == q90
    assert sum(Image.open(f).quantization == q90 for f in train_files("mix", grain=11)) < len(files)
    with pytest.raises(ValueError, match="quality"):
        make_ilsvrc_tree(tmp_path / "bad", quality=96)


# ---- a user's files are never lost: refuse, report done, --overwrite ----

def arrow_files(out: Path) -> dict:
    return {p.relative_to(out): (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*.arrow")}


@pytest.fixture
def finished(clean_tree, tmp_path) -> Path:
    out = tmp_path / "pp"
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"])
    return out


def test_rerun_keeps_a_users_file_and_is_reported_done(clean_tree, finished):
    """The issue's scenario: preprocess, `echo x > pp/notes.txt`, the same command again."""
    (finished / "notes.txt").write_text("x\n")
    before = arrow_files(finished)
    proc = run_script("--data_dir", clean_tree, "--output_dir", finished, "--num_proc", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"{finished}: already done (same file names, labels, settings" in proc.stdout and "wrote" not in proc.stdout
    assert (finished / "notes.txt").read_text() == "x\n"
    assert arrow_files(finished) == before  # not one shard rewritten
    assert not (finished.parent / "pp.tmp").exists()


def test_a_replaced_image_or_edited_box_is_not_noticed_and_the_rerun_says_so(clean_tree, tmp_path, capsys):
    """Inputs are compared by file name and label (a read of 1.3M files would be the price of more): a picture
    replaced under the same name, an XML box edited, leave the output as it was, and the rerun says that contents are
    not compared and that --overwrite rebuilds it, which then stores the new picture and box."""
    tree, out = tmp_path / "kaggle", tmp_path / "out"
    shutil.copytree(clean_tree, tree)
    args = ["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "1"]
    preprocess.main(args)
    train_dir = tree / ilsvrc.SPLIT_DIRS["train"]
    first, other = (sorted((train_dir / wnid).glob("*.JPEG"))[0] for wnid in manifest(clean_tree)["wnids"][:2])
    shutil.copy(other, first)  # another class's picture under the first one's name
    xml = sorted((tree / ilsvrc.ANNOTATION_DIRS["validation"]).glob("*.xml"))[0]
    text = xml.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    xml.write_text(text[:start] + "1" + text[text.index("<", start):])  # a box moved: xmin = 1
    capsys.readouterr()
    preprocess.main(args)
    said = capsys.readouterr().out
    assert (f"{out}: the input files' contents are not compared: after replacing an image or editing an annotation "
            "under the same name, add --overwrite to rebuild it") in said
    assert raw_rows(out)["train"][first.stem]["image"]["bytes"] != first.read_bytes()  # not noticed: kept as it was

    preprocess.main([*args, "--overwrite"])
    rows = raw_rows(out)
    assert size_of(rows["train"][first.stem]["image"]["bytes"]) == size_of(other.read_bytes())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rows["train"][first.stem]["image"]["bytes"]))),
                          np.asarray(Image.open(other)))
    assert rows["validation"][xml.stem]["objects"][0]["bbox"][0] == 1.0


def test_other_settings_need_overwrite_which_never_deletes_a_users_file(clean_tree, finished):
    (finished / "notes.txt").write_text("x\n")
    before = arrow_files(finished)
    args = ["--data_dir", str(clean_tree), "--output_dir", str(finished), "--num_proc", "1", "--quality", "75"]
    with pytest.raises(SystemExit) as e:
        preprocess.main(args)
    message = str(e.value.code)
    assert message == (f"error: --output_dir: {finished} holds a preprocess.py output of other inputs or settings "
                       "(quality 90 -> 75); add --overwrite to replace it, or choose another folder")
    with pytest.raises(SystemExit) as e:
        preprocess.main([*args, "--overwrite"])
    assert str(e.value.code) == (f"error: --overwrite: {finished / 'notes.txt'} is not preprocess.py's (1 such paths "
                                 f"in {finished}); move them out, then run again")
    assert (finished / "notes.txt").read_text() == "x\n" and arrow_files(finished) == before
    assert not (finished.parent / "pp.tmp").exists()  # refused before any work

    (finished / "notes.txt").unlink()
    preprocess.main([*args, "--overwrite"])
    assert json.loads((finished / "preprocess_manifest.json").read_text())["job"]["quality"] == 75
    assert set(arrow_files(finished)) == set(before) and arrow_files(finished) != before
    assert not (finished.parent / ".pp.old").exists() and not (finished.parent / "pp.tmp").exists()


def test_an_output_without_manifest_needs_overwrite(clean_tree, finished):
    """An interrupted copy without the manifest: never taken as done."""
    (finished / "preprocess_manifest.json").unlink()
    args = ["--data_dir", str(clean_tree), "--output_dir", str(finished), "--num_proc", "1"]
    with pytest.raises(SystemExit, match=r"without its preprocess_manifest.json \(an interrupted copy\?\); add "):
        preprocess.main(args)
    preprocess.main([*args, "--overwrite"])
    assert (finished / "preprocess_manifest.json").is_file()


def stop_after_shards(monkeypatch, shards: int = 1) -> None:
    """process_shard, as a Ctrl-C after the first ``shards`` shards finds it."""
    real, done = preprocess.process_shard, []

    def stop(shard, **kw):
        if len(done) == shards:
            raise KeyboardInterrupt
        done.append(real(shard, **kw))
        return done[-1]

    monkeypatch.setattr(preprocess, "process_shard", stop)


def rows_with_boxes(out: Path) -> int:
    return sum(bool(objects) for objects in datasets.load_from_disk(str(out))["train"]["objects"])


def test_annotations_unpacked_or_changed_since_are_other_inputs(clean_tree, tmp_path, monkeypatch, capsys):
    """ILSVRC/Annotations unpacked after a run without it: an interrupted run starts over (no mix of shards with and
    without boxes), a finished one is refused as other inputs, as is an edited LOC_val_solution.csv."""
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    annotations, aside = tree / "ILSVRC" / "Annotations", tmp_path / "Annotations"
    xml_files = len(list((annotations / "CLS-LOC" / "train").rglob("*.xml")))
    out = tmp_path / "out"
    args = ["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "1", "--shard_size", "2"]
    annotations.rename(aside)
    stop_after_shards(monkeypatch)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main(args)
    monkeypatch.undo()
    aside.rename(annotations)
    preprocess.main(args)
    assert "left by a run with other inputs or settings; starting over" in capsys.readouterr().out
    assert xml_files and rows_with_boxes(out) == xml_files

    annotations.rename(aside)  # a finished output made without them, then they are unpacked
    preprocess.main([*args, "--overwrite"])
    assert rows_with_boxes(out) == 0
    aside.rename(annotations)
    with pytest.raises(SystemExit) as e:
        preprocess.main(args)
    assert str(e.value.code) == (
        f"error: --output_dir: {out} holds a preprocess.py output of other inputs or settings (the annotations in "
        "ILSVRC/Annotations/CLS-LOC and LOC_val_solution.csv); add --overwrite to replace it, or choose another folder")
    preprocess.main([*args, "--overwrite"])
    assert rows_with_boxes(out) == xml_files

    csv = tree / ilsvrc.VAL_SOLUTION
    lines = csv.read_text().splitlines()
    label, *box = lines[1].split(",")[1].split()[:5]
    lines[1] = f"{lines[1].split(',')[0]},{label} {' '.join(str(int(v) + 1) for v in box)}"
    csv.write_text("\n".join(lines) + "\n")  # one val box moved by a pixel: the same labels, other boxes
    with pytest.raises(SystemExit, match=r"other inputs or settings \(the annotations in "):
        preprocess.main(args)


def test_outputs_whose_job_does_not_record_the_annotations_are_kept_with_a_note(clean_tree, finished, tmp_path,
                                                                                  monkeypatch, capsys):
    """A finished output whose job record has no "annotations": taken as made with the present ones (reported
    done), with one line saying so, not rebuilt. An interrupted run's work folder of that version (no "encoder"
    either) starts over, saying why: its shards were stored otherwise."""
    recorded = output_manifest.read(finished)
    old_job = {k: v for k, v in recorded["job"].items() if k != "annotations"}
    assert old_job != recorded["job"]
    (finished / MANIFEST_NAME).write_text(json.dumps(output_manifest.sealed(
        {"format": recorded["format"], "job": old_job, "files": recorded["files"]}), indent=1))
    before = arrow_files(finished)
    capsys.readouterr()
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(finished), "--num_proc", "1"])
    said = capsys.readouterr().out
    assert (f"{finished}: its job record does not say which annotations (ILSVRC/Annotations/CLS-LOC and "
            "LOC_val_solution.csv) it was made with; taken as made with the present ones: if they changed since, "
            "add --overwrite to rebuild it\n") in said and f"{finished}: already done" in said
    assert arrow_files(finished) == before
    assert output_manifest.read(finished)["job"] == recorded["job"]  # recorded from now on: the note once
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(finished), "--num_proc", "1"])
    said = capsys.readouterr().out
    assert f"{finished}: already done" in said and "does not say which annotations" not in said

    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = ["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1", "--shard_size", "2"]
    stop_after_shards(monkeypatch)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main(args)
    monkeypatch.undo()
    job_file = work / preprocess.WORK / "job.json"
    job_file.write_text(json.dumps({k: v for k, v in json.loads(job_file.read_text()).items()
                                    if k not in ("annotations", "encoder")}))
    capsys.readouterr()
    preprocess.main(args)
    said = capsys.readouterr().out
    assert f"{work}: left by an older preprocess.py, which stores images otherwise; starting over" in said
    assert "shards already done" not in said and "does not say which annotations" not in said
    assert output_manifest.read(out)["job"] == recorded["job"] | {"shard_size": 2}


# preprocess.py SIGKILLed inside --overwrite's swap ($KILL_AT): "noted" with the output it replaces marked, not yet
# moved aside; "between" the two renames (that output moved aside, the new one not yet in); "deleting" midway through
# deleting the output it replaced (after its first entry); "emptied" with all of it deleted but its note's empty folder
KILLED_IN_SWAP = """
import os, shutil, signal, sys
from pathlib import Path
import preprocess

rename, rmtree = os.replace, shutil.rmtree

def replace(src, dst):
    if str(dst).endswith(".old") and os.environ["KILL_AT"] == "noted":
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)
    if str(dst).endswith(".old") and os.environ["KILL_AT"] == "between":
        os.kill(os.getpid(), signal.SIGKILL)

def delete(path, *args, **kwargs):
    rmtree(path, *args, **kwargs)
    if Path(path).parent.name.endswith(".old") and os.environ["KILL_AT"] == "deleting":
        os.kill(os.getpid(), signal.SIGKILL)

remove_folder = os.rmdir

def rmdir(path, *args, **kwargs):
    if Path(path).parent.name.endswith(".old") and Path(path).name == ".work" and os.environ["KILL_AT"] == "emptied":
        os.kill(os.getpid(), signal.SIGKILL)
    remove_folder(path, *args, **kwargs)

os.replace, shutil.rmtree, os.rmdir = replace, delete, rmdir
preprocess.main(sys.argv[1:])
"""


@pytest.mark.parametrize("kill_at", ["noted", "between", "deleting", "emptied"])
def test_a_kill_inside_an_overwrites_swap_leaves_nothing_after_the_next_run(kill_at, clean_tree, finished):
    """--overwrite marks the output it replaces, moves it aside (.OUT.old, hidden, as large as the dataset), renames
    the new one into place, deletes the old one, then OUT/.work. Killed in between, the next run removes what is
    left, in one line, whether it finds the new output done or finishes it."""
    old = finished.with_name(f".{finished.name}.old")
    args = ["--data_dir", clean_tree, "--output_dir", finished, "--num_proc", "1", "--quality", "80"]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SWAP, *map(str, args), "--overwrite"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "KILL_AT": kill_at})
    assert killed.returncode == -9 and old.is_dir() == (kill_at != "noted"), killed.stderr
    assert (finished / preprocess.WORK).is_dir() == (kill_at != "between")

    rerun = run_script(*args, *(["--overwrite"] if kill_at == "noted" else []))
    assert rerun.returncode == 0, rerun.stderr
    assert (f"removed {old} (0.0 GB): the output an --overwrite replaced, left by a run killed before deleting it"
            in rerun.stdout) == (kill_at != "noted")
    assert (f"{finished}: already done" in rerun.stdout) == (kill_at in ("deleting", "emptied"))
    assert sorted(os.listdir(finished.parent)) == [finished.name] and not (finished / preprocess.WORK).exists()
    assert output_manifest.read(finished)["job"]["quality"] == 80 and output_manifest.verify(finished)[0] == []


# preprocess.py SIGKILLed in an atomic write of a path ending in $KILL_AT: its temp file (.NAME.XXXXXXXX.tmp) written,
# not yet renamed
KILLED_BEFORE_RENAME = """
import os, signal, sys
import preprocess

rename = os.replace

def replace(src, dst):
    if str(dst).endswith(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)

os.replace = replace
preprocess.main(sys.argv[1:])
"""


@pytest.mark.parametrize("kill_at", ["train/state.json", "preprocess_report.json", MANIFEST_NAME])
def test_a_kill_inside_an_atomic_write_leaves_no_temp_file_in_the_output(kill_at, clean_tree, tmp_path):
    """Killed while assembling the output, between an atomic write's temp file and its rename: the resumed run
    removes the temp file, so the output holds only its manifest's files (--verify passes, --overwrite is not
    refused as if a file were the user's)."""
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = ["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"]
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "KILL_AT": f"/{kill_at}"})
    assert killed.returncode == -9, killed.stderr
    folder, name = (work / kill_at).parent, Path(kill_at).name
    assert len(list(folder.glob(f".{name}.*.tmp"))) == 1  # what the kill left

    rerun = run_script(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stdout and not work.exists()
    assert output_manifest.verify(out)[0] == [] and not list(out.rglob("*.tmp"))
    preprocess.main([*args, "--quality", "80", "--overwrite"])
    assert output_manifest.read(out)["job"]["quality"] == 80


def users_folder(old: Path, kind: str) -> None:
    """Something of a user's named .OUT.old: a folder only the names of its entries tell from an output cut short
    while it was deleted, an empty one, a link to a folder of theirs, a file."""
    if kind == "work_notes":
        (old / preprocess.WORK / "thesis").mkdir(parents=True)
        (old / preprocess.WORK / "thesis" / "chapter1.tex").write_text("3 years of work\n")
        (old / "config.yaml").write_text("my: config\n")
    elif kind == "save_to_disk":
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1, 2]})}).save_to_disk(str(old))
    elif kind == "empty":
        old.mkdir()
    elif kind == "link":
        (old.parent / "mine").mkdir()
        (old.parent / "mine" / "notes.txt").write_text("x\n")
        old.symlink_to(old.parent / "mine")
    else:
        old.write_text("mine\n")


def snapshot(path: Path) -> dict:
    if path.is_symlink() or path.is_file():
        return {".": os.readlink(path) if path.is_symlink() else path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("kind", ["work_notes", "save_to_disk", "empty", "link", "file"])
def test_a_users_thing_named_like_the_replaced_output_is_never_deleted(kind, clean_tree, finished, tmp_path):
    """Only an output an --overwrite of this script moved aside is deleted as .OUT.old; a user's folder, link or file
    of that name is left alone by every run, and refused before any work by an --overwrite that needs the name."""
    old = finished.with_name(f".{finished.name}.old")
    users_folder(old, kind)
    before, output = snapshot(old), arrow_files(finished)
    args = ["--data_dir", str(clean_tree), "--output_dir", str(finished), "--num_proc", "1"]
    with pytest.raises(SystemExit, match="no such file or folder"):
        preprocess.main(["--data_dir", str(tmp_path / "does_not_exist"), "--output_dir", str(finished)])
    preprocess.main(args)  # found done: no swap
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(tmp_path / "new"), "--num_proc", "1",
                     "--overwrite"])  # nothing to replace
    with pytest.raises(SystemExit) as e:
        preprocess.main([*args, "--quality", "80", "--overwrite"])
    assert str(e.value.code) == (
        f"error: --output_dir {finished}: --overwrite moves the output it replaces to {old}, which holds something "
        "else (a file, link or folder of yours?); move it away or rename it, then run again")
    assert snapshot(old) == before and arrow_files(finished) == output
    assert not (finished.parent / "pp.tmp").exists()  # refused before any work


def test_a_users_file_named_like_the_lock_is_refused_not_overwritten(clean_tree, tmp_path):
    """OUT's lock file sits beside OUT, in a folder of the user's: a file of theirs there is no stale lock."""
    notes, out = tmp_path / "out.lock", tmp_path / "out"
    notes.write_text("my notes\n")
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"])
    assert str(e.value.code) == (f"error: --output_dir {out}: {notes} is not a lock record of a run (a file of "
                                 "yours?), and the run's lock would overwrite it: move it away or give another "
                                 "--output_dir")
    assert notes.read_text() == "my notes\n" and not out.exists()


@pytest.mark.parametrize("record", [b'{"host": "vm", "pid": 12', b'{"ho', b"\0" * 40, b'{"host": "vm"}\n',
                                    b'{"host": "vm", "pid": 1\0\0\0\0'])
def test_a_damaged_lock_record_is_taken_over(record, clean_tree, tmp_path):
    """A lock record cut short while written, or NUL bytes where a host crash lost it, is a run's, not a user's."""
    lock, out = tmp_path / "out.lock", tmp_path / "out"
    lock.write_bytes(record)
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"])
    assert output_manifest.verify(out)[0] == [] and not lock.exists()


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="root reads any file without "
                    "setpriv(1) to drop that capability")
def test_files_skipped_as_unreadable_are_named_when_the_output_is_found_done(clean_tree, tmp_path):
    """A file skipped for its permissions (not for its bytes) may read later: a finished output says how many, and
    that --overwrite reads them again."""
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    locked = sorted((tree / ilsvrc.SPLIT_DIRS["train"]).glob("n*/*.JPEG"))[0]
    locked.chmod(0)
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    args = [*as_user, sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir",
            str(tmp_path / "out"), "--num_proc", "1"]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and f"[Errno 13] Permission denied: '{locked}'" in first.stdout, first.stderr
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.stdout.splitlines()[-1] == (
        f"{tmp_path / 'out'}: 1 files were skipped as unreadable (e.g. [Errno 13] Permission denied: '{locked}'); if "
        "they read now, add --overwrite to rebuild the output with them")


@pytest.mark.parametrize("layout", ["ilsvrc", "own"])
def test_broken_and_looping_links_are_warned_about_not_fatal(layout, clean_tree, tmp_path, capsys):
    """A link whose target is gone, and one that points at itself (ELOOP on every read), in a class folder: each is
    left out with a warning saying why, on Kaggle's tree and on a user's."""
    if layout == "ilsvrc":
        root = tmp_path / "kaggle"
        shutil.copytree(clean_tree, root)
        rel, extra = f"{ilsvrc.SPLIT_DIRS['train']}/{manifest(clean_tree)['wnids'][0]}", []
    else:
        root = class_tree(clean_tree, tmp_path / "photos", NAMES[:2], "one_tree")
        rel, extra = sorted(NAMES[:2])[0], ["--val_fraction", "0.2"]
    (root / rel / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    (root / rel / "loop.JPEG").symlink_to(root / rel / "loop.JPEG")
    preprocess.main(["--data_dir", str(root), "--output_dir", str(tmp_path / "out"), "--num_proc", "1", *extra])
    printed = capsys.readouterr().out
    assert f"warning: 1 broken links (their target is gone) in {root} left out, e.g. {rel}/gone.JPEG" in printed
    assert (f"warning: 1 broken links (too many levels of symbolic links) in {root} left out, e.g. {rel}/loop.JPEG"
            in printed)
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert sum(ds.num_rows for ds in dd.values()) == len([p for p in root.rglob("*.JPEG") if p.is_file()])
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["left_out"] == [{"path": f"{rel}/gone.JPEG", "reason": "a broken link: its target is gone"},
                                  {"path": f"{rel}/loop.JPEG", "reason": "a broken link: too many levels of "
                                                                         "symbolic links"}]


@pytest.mark.parametrize("layout", ["ilsvrc", "own"])
def test_folders_among_the_images_are_warned_about_and_reported(layout, clean_tree, tmp_path, capsys):
    """A folder named like an image, in a class folder and in test/, and a subfolder of JPEGs in a class folder are
    not read: one warning with their count and an example, printed and in preprocess_report.json."""
    if layout == "ilsvrc":
        root = tmp_path / "kaggle"
        shutil.copytree(clean_tree, root)
        rel, held = f"{ilsvrc.SPLIT_DIRS['train']}/{manifest(clean_tree)['wnids'][0]}", ilsvrc.SPLIT_DIRS["test"]
    else:  # a user's test/ of folders is one of class folders: the folder goes in a validation class instead
        root = class_tree(clean_tree, tmp_path / "photos", NAMES[:2], "train_val")
        rel, held = "train/zebra", "validation/zebra"
    (root / rel / "more").mkdir()
    for i, image in enumerate(sorted((root / rel).glob("*.JPEG"))[:2]):
        shutil.copy(image, root / rel / "more" / f"more_{i}.JPEG")
    (root / rel / "x_99.JPEG").mkdir()
    (root / held / "ILSVRC2012_test_00000099.JPEG").mkdir()
    if layout == "ilsvrc":  # an image directly in train/: no class folder names its label
        shutil.copy(next(p for p in (root / rel).glob("*.JPEG") if p.is_file()), root / "ILSVRC/Data/CLS-LOC/train/loose_1.JPEG")
    out = tmp_path / "out"
    preprocess.main(["--data_dir", str(root), "--output_dir", str(out), "--num_proc", "1"])
    said = capsys.readouterr().out.splitlines()
    warnings = [line for line in said if "folders among the images" in line]
    report = json.loads((out / "preprocess_report.json").read_text())
    if layout == "ilsvrc":
        train = root / "ILSVRC/Data/CLS-LOC/train"
        assert (f"warning: 1 files directly in {train} left out (train images go in ILSVRC/Data/CLS-LOC/train/<wnid>/), "
                "e.g. loose_1.JPEG") in said
        assert warnings == [f"warning: 3 folders among the images of {root} left out (images are read only as files "
                            f"directly in train/<wnid>/, val/ or test/), e.g. {rel}/more"]
    else:  # train/ and validation/ are listed apart
        assert warnings == [f"warning: 2 folders among the images of {root / 'train'} left out (images are read only "
                            "as files directly in a class folder), e.g. zebra/more",
                            f"warning: 1 folders among the images of {root / 'validation'} left out (images are "
                            "read only as files directly in a class folder), e.g. zebra/ILSVRC2012_test_00000099.JPEG"]
    assert [w for w in report["warnings"] if "folders among the images" in w] == [w[len("warning: "):]
                                                                                 for w in warnings]
    dd = datasets.load_from_disk(str(out))
    left_out = 2 + (layout == "ilsvrc")  # the two in more/, the loose one
    assert sum(ds.num_rows for ds in dd.values()) == len([p for p in root.rglob("*.JPEG") if p.is_file()]) - left_out


def test_empty_folders_are_fine_and_a_failed_start_blocks_nothing(clean_tree, tmp_path):
    out = tmp_path / "made_with_mkdir"
    out.mkdir()
    (tmp_path / "made_with_mkdir.tmp").mkdir()  # what a start that failed before its first file leaves
    args = ["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"]
    preprocess.main(args)
    assert datasets.load_from_disk(str(out))["train"].num_rows == 6

    broken = tmp_path / "kaggle"
    shutil.copytree(clean_tree, broken)
    (broken / ilsvrc.VAL_SOLUTION).unlink()
    with pytest.raises(SystemExit):
        preprocess.main(["--data_dir", str(broken), "--output_dir", str(tmp_path / "again"), "--num_proc", "1"])
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.tmp").exists()
    shutil.copy(clean_tree / ilsvrc.VAL_SOLUTION, broken / ilsvrc.VAL_SOLUTION)
    preprocess.main(["--data_dir", str(broken), "--output_dir", str(tmp_path / "again"), "--num_proc", "1"])
    assert (tmp_path / "again" / "preprocess_manifest.json").is_file()


@pytest.mark.parametrize("moved", [1, 5])
def test_a_kill_while_the_finished_dataset_moves_up_is_finished_by_the_next_run(clean_tree, tmp_path, monkeypatch,
                                                                                 moved):
    """Built inside an OUT made beforehand (mkdir, a mount point), the dataset's entries move up one by one at the
    end, the manifest last. Killed after some of them, the same command finishes the move: OUT is then whole, and
    neither "not a preprocess.py output" nor, with --overwrite, a work folder that is not its own."""
    out = tmp_path / "out"
    out.mkdir()
    args = ["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"]
    real, count = os.replace, [0]

    def killed_after(src, dst):
        if Path(src).parent.name == preprocess.INSIDE and Path(dst).parent == out:
            if count[0] == moved:
                raise KeyboardInterrupt  # the process ends here, as a SIGKILL would end it
            count[0] += 1
        return real(src, dst)

    monkeypatch.setattr(preprocess.os, "replace", killed_after)
    with pytest.raises(KeyboardInterrupt):
        preprocess.main(args)
    monkeypatch.setattr(preprocess.os, "replace", real)
    assert (out / preprocess.INSIDE / MANIFEST_NAME).is_file() and len(list(out.iterdir())) == moved + 1
    preprocess.main(args)
    assert not (out / preprocess.INSIDE).exists() and output_manifest.verify(out)[0] == []
    assert datasets.load_from_disk(str(out))["train"].num_rows == 6
    (out / preprocess.INSIDE).mkdir()  # a kill after the last entry moved, before the folder's removal
    preprocess.main(args)
    assert not (out / preprocess.INSIDE).exists() and output_manifest.verify(out)[0] == []


def test_overwrite_of_an_output_on_its_own_mount_point_builds_inside_it(clean_tree, tmp_path, monkeypatch):
    """A mount point cannot be renamed (EBUSY): an --overwrite of the dataset on it is built inside it and moved up,
    as a first run into it is, not beside it (on the parent's filesystem) and renamed over it at the end."""
    out = tmp_path / "volume"
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1"])
    monkeypatch.setattr(preprocess.os.path, "ismount", lambda path: Path(path) == out)

    def busy(*args):
        raise OSError(16, "Device or resource busy")  # os.replace of a mount point

    monkeypatch.setattr(preprocess, "swap_in", busy)
    preprocess.main(["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1", "--quality", "80",
                     "--overwrite"])
    assert output_manifest.read(out)["job"]["quality"] == 80 and output_manifest.verify(out)[0] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]  # nothing built beside it
    assert not (out / preprocess.INSIDE).exists()


# ---- damaged copies: sizes checked at load, checksums with --verify ----

def test_manifest_lists_every_file_with_size_and_sha256(preprocessed):
    import hashlib
    m = json.loads((preprocessed / "preprocess_manifest.json").read_text())
    on_disk = {str(p.relative_to(preprocessed)) for p in preprocessed.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"preprocess_manifest.json"}
    for rel, entry in m["files"].items():
        data = (preprocessed / rel).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, rel


@pytest.fixture
def damaged(preprocessed, tmp_path) -> tuple[Path, Path]:
    """A copy of the dataset with one Arrow file cut short, as an interrupted copy to a node's disk leaves it."""
    copy = tmp_path / "copy"
    shutil.copytree(preprocessed, copy)
    victim = sorted(copy.glob("train/*.arrow"))[1]
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
    return copy, victim


def test_truncated_arrow_file_is_named_at_load_and_by_verify(damaged):
    from imagenet_trainer.data import load_image_dataset
    copy, victim = damaged
    with pytest.raises(ValueError) as e:
        load_image_dataset(str(copy))
    message = str(e.value)
    assert message.startswith(f"{victim} has ") and "\n" not in message
    assert f"preprocess.py --verify {copy}" in message

    proc = run_script("--verify", copy)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    listed = json.loads((copy / "preprocess_manifest.json").read_text())["files"]
    assert [line for line in proc.stdout.splitlines() if line.startswith("BAD")] == [
        f"BAD {victim}: {victim.stat().st_size:,} bytes, expected {listed[str(victim.relative_to(copy))]['bytes']:,}"
        " (truncated or damaged)"]
    assert proc.stderr.strip().splitlines() == [f"error: --verify {copy}: 1 of {len(listed)} files damaged or "
                                                "missing; copy them again from where the dataset was made"]


def test_verify_catches_a_flipped_byte_and_passes_a_good_copy(preprocessed, tmp_path):
    proc = run_script("--verify", preprocessed)
    assert proc.returncode == 0 and proc.stdout.strip().startswith(f"ok: {preprocessed}: all ")
    copy = tmp_path / "copy"
    shutil.copytree(preprocessed, copy)
    victim = sorted(copy.glob("validation/*.arrow"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    victim.write_bytes(bytes(data))
    (copy / "notes.txt").write_text("a user's file is not the dataset's business")
    proc = run_script("--verify", copy)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"BAD {victim}: SHA-256 differs from preprocess_manifest.json (damaged)"]
    proc = run_script("--verify", tmp_path)
    assert proc.returncode == 1 and "preprocess_manifest.json: not found" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("edit", [('"sha256": "', '"sha356": "'), ('"quality": 90', '"quality": 91')],
                         ids=["a file entry's key", "the job record"])
def test_a_flipped_byte_in_the_manifest_itself_is_named_by_verify(preprocessed, tmp_path, edit):
    """A flipped byte in a file entry's key or in the job record: the manifest's own SHA-256 tells either from a
    real output, so --verify names the manifest in one line (not a KeyError, and not "ok" for an output the same
    command would then refuse as another job's)."""
    copy = tmp_path / "copy"
    shutil.copytree(preprocessed, copy)
    listed = copy / output_manifest.MANIFEST
    text = listed.read_text()
    assert edit[0] in text
    listed.write_text(text.replace(edit[0], edit[1], 1))
    assert output_manifest.read(copy) is None
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--verify", str(copy)])
    assert str(e.value.code) == (f"error: --verify {listed}: damaged (not the JSON preprocess.py writes, or not "
                                 "matching its own SHA-256): nothing to verify against; copy it again from where the "
                                 "dataset was made")


def test_missing_file_and_no_manifest_are_one_line_at_load(damaged, preprocessed):
    from imagenet_trainer.data import load_image_dataset
    copy, victim = damaged
    names = copy / ilsvrc.DESCRIPTIONS_FILE
    names.unlink()
    with pytest.raises(ValueError, match=f"^{names} is missing .listed in preprocess_manifest.json.; copy it again"):
        load_image_dataset(str(copy))
    shutil.copy(preprocessed / ilsvrc.DESCRIPTIONS_FILE, names)
    (copy / "preprocess_manifest.json").unlink()  # an older output: pyarrow's error turned into the file's name
    with pytest.raises(ValueError) as e:
        load_image_dataset(str(copy))
    assert str(e.value) == f"{victim}: damaged or truncated Arrow file; copy it again, or rerun preprocess.py"


def test_train_and_validate_scripts_name_the_damaged_file_in_one_line(damaged, tmp_path):
    copy, victim = damaged
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "blocknet_tiny", "--dataset", str(copy),
                            "--output_dir", str(tmp_path / "run"), "--image_size", "32", "--batch_size", "8",
                            "--num_workers", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode != 0 and "Traceback" not in train.stderr, train.stderr[-3000:]
    last = train.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --dataset {copy}: {victim} has ") and "preprocess.py --verify" in last
    validate = subprocess.run([sys.executable, str(ROOT / "validate.py"), "--model", "blocknet_tiny", "--dataset",
                               str(copy), "--num_workers", "0"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert validate.returncode != 0 and "Traceback" not in validate.stderr, validate.stderr[-3000:]
    assert validate.stderr.strip().splitlines()[-1].startswith(f"error: --dataset {copy}: {victim} has ")


# ---- a user's own tree: class folders ----

def class_tree(kaggle: Path, root: Path, names: list[str], layout: str) -> Path:
    """The images of a demo Kaggle tree, faults included, re-sorted as a user's tree: folders named ``names``
    (the i-th sorted wnid's images go to names[i]), as train/ + validation/ + test/ or as one tree (<class>/)."""
    m = manifest(kaggle)
    wnids = m["wnids"]
    for wnid in wnids:
        dest = root / ("train" if layout == "train_val" else "") / names[wnids.index(wnid)]
        shutil.copytree(kaggle / ilsvrc.SPLIT_DIRS["train"] / wnid, dest, dirs_exist_ok=True)
    for p in (kaggle / ilsvrc.SPLIT_DIRS["validation"]).iterdir():
        folder = root / ("validation" if layout == "train_val" else "") / names[m["val_labels"][p.stem]]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    if layout == "train_val":
        shutil.copytree(kaggle / ilsvrc.SPLIT_DIRS["test"], root / "test")  # loose files: unlabelled
    return root


NAMES = ["zebra", "apple", "mango", "kiwi"]  # the 1st..4th wnid's images: label order is the sorted names


def test_class_folder_tree_gets_the_same_contract(ilsvrc_tree, tmp_path):
    tree = class_tree(ilsvrc_tree, tmp_path / "my photos", NAMES, "train_val")
    out = tmp_path / "mine"
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "2", "--shard_size", "5"])
    m = manifest(ilsvrc_tree)
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "validation", "test"}
    broken = Counter(m["planted"][kind]["split"] for kind in m["broken"])
    names = sorted(NAMES)
    for split, ds in dd.items():
        assert list(ds.features) == ["image", "label", "image_id", "objects"]
        assert ds.features["label"].names == names and ds.num_rows == m["files"][split] - broken[split]
    rows = raw_rows(out)
    for image_id, row in rows["train"].items():
        folder, stem = image_id.split("/")
        assert row["label"] == names.index(folder) and NAMES.index(folder) == m["wnids"].index(stem.split("_")[0])
        assert row["objects"] == []
    for image_id, row in rows["validation"].items():
        assert NAMES[m["val_labels"][image_id.split("/")[1]]] == names[row["label"]]
    assert {r["label"] for r in rows["test"].values()} == {-1}
    assert ilsvrc.class_descriptions(out) == names == ilsvrc.class_descriptions(dd)

    report = json.loads((out / "preprocess_report.json").read_text())  # the same quirk handling and tiles
    skipped = {s["path"] for s in report["skipped"]}
    assert len(skipped) == sum(broken.values()) and all(p.split("/")[0] in ("train", "validation", "test")
                                                        for p in skipped)
    assert sum(sum(c.values()) for c in report["reencoded"].values()) == len(CONVERTED)
    assert sum(report["tiled"].values()) >= 3
    for p in (m["planted"][kind] for kind in CONVERTED if m["planted"][kind]["split"] == "train"):
        data = rows["train"][f"{NAMES[m['wnids'].index(p['stem'].split('_')[0])]}/{p['stem']}"]["image"]["bytes"]
        assert Image.open(io.BytesIO(data)).mode == "RGB"
    assert json.loads((out / "source.json").read_text()) == {
        "layout": "class-folders", "name": "my photos", "ilsvrc2012_full": False, "num_classes": 4,
        "counts": report["counts"], "val_fraction": None, "split_seed": None}


def test_one_tree_with_val_fraction_is_a_seeded_stratified_split(ilsvrc_tree, tmp_path):
    tree = class_tree(ilsvrc_tree, tmp_path / "flat", NAMES, "one_tree")
    files = Counter(p.parent.name for p in tree.rglob("*") if p.is_file())

    def split_of(seed, name):
        out = tmp_path / name
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "1",
                         "--val_fraction", "0.25", "--split_seed", str(seed), "--restart_tile", "0"])
        report = json.loads((out / "preprocess_report.json").read_text())
        ids = {split: set(ds["image_id"]) for split, ds in datasets.load_from_disk(str(out)).items()}
        for s in report["skipped"]:  # undecodable files count in the split they were drawn into
            ids[s["split"]].add(os.path.splitext(s["path"])[0])
        return ids, json.loads((out / "source.json").read_text())

    ids, source = split_of(0, "a")
    assert set(ids) == {"train", "validation"} and not ids["train"] & ids["validation"]
    assert ids["train"] | ids["validation"] == {f"{p.parent.name}/{p.stem}" for p in tree.rglob("*") if p.is_file()}
    for name, n in files.items():  # stratified: 25% of each class rounded half up, at least one, never all
        assert sum(i.startswith(f"{name}/") for i in ids["validation"]) == min(n - 1, max(1, int(n / 4 + 0.5))), name
    dd = datasets.load_from_disk(str(tmp_path / "a"))
    assert source == {"layout": "class-folders-split", "name": "flat", "ilsvrc2012_full": False, "num_classes": 4,
                      "counts": {split: ds.num_rows for split, ds in dd.items()}, "val_fraction": 0.25,
                      "split_seed": 0}
    assert split_of(0, "b")[0] == ids  # seeded: the same split again
    assert split_of(1, "c")[0]["validation"] != ids["validation"]


def spoil_class_tree(case: str, tree: Path) -> tuple[list[str], list]:
    """A user's train/validation/test tree spoiled; returns (extra flags, what the one-line error must say)."""
    if case == "flat_without_val_fraction":
        for split in ("validation", "test"):
            shutil.rmtree(tree / split)
        for cls in (tree / "train").iterdir():
            cls.rename(tree / cls.name)
        (tree / "train").rmdir()
        return [], [tree, "add --val_fraction 0.1"]
    if case == "train_only":
        for split in ("validation", "test"):
            shutil.rmtree(tree / split)
        return [], [tree / "train", "no val/, validation/ or test/", "--val_fraction"]
    if case == "unrecognised":
        for p in list(tree.iterdir()):
            shutil.rmtree(p)
        (tree / "photo.jpg").write_bytes(b"loose")
        return [], [tree, ilsvrc.SYNSET_MAPPING, "train/ and val/", "--val_fraction"]
    if case == "val_fraction_beside_validation":
        return ["--val_fraction", "0.1"], [tree, "already has validation/", "drop --val_fraction"]
    if case == "val_class_not_in_train":
        (tree / "validation" / "pear").mkdir()
        return [], [tree / "validation" / "pear", "not in train/"]
    if case == "loose_val_images":
        shutil.copy(next((tree / "validation" / "zebra").iterdir()), tree / "validation" / "loose.JPEG")
        return [], [tree / "validation", "have no label"]
    if case == "val_and_validation":
        shutil.copytree(tree / "validation", tree / "val")
        return [], [tree, "both val/ and validation/"]
    if case == "val_fraction_out_of_range":
        return ["--val_fraction", "1.5"], ["--val_fraction must be between 0 and 1"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["flat_without_val_fraction", "train_only", "unrecognised",
                                  "val_fraction_beside_validation", "val_class_not_in_train", "loose_val_images",
                                  "val_and_validation", "val_fraction_out_of_range"])
def test_class_tree_errors_say_what_to_do(case, clean_tree, tmp_path):
    tree = class_tree(clean_tree, tmp_path / "mine", NAMES[:2], "train_val")
    extra, named = spoil_class_tree(case, tree)
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1", *extra])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert all(str(n) in message for n in named), message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_output_inside_the_input_tree_is_refused(clean_tree, tmp_path):
    tree = class_tree(clean_tree, tmp_path / "mine", NAMES[:2], "train_val")
    with pytest.raises(SystemExit, match=f"^error: --output_dir {tree / 'pp'} is inside --data_dir {tree}; "):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tree / "pp"), "--num_proc", "1"])
    assert not (tree / "pp").exists() and not (tree / "pp.tmp").exists()


def test_val_folder_is_the_validation_split(clean_tree, tmp_path):
    tree = class_tree(clean_tree, tmp_path / "mine", NAMES[:2], "train_val")
    (tree / "validation").rename(tree / "val")
    shutil.rmtree(tree / "test")
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: ds.num_rows for s, ds in dd.items()} == {"train": 6, "validation": 4}
    assert sorted(dd["validation"]["image_id"])[0].split("/")[0] in NAMES[:2]


def test_train_folder_alone_splits_with_val_fraction(clean_tree, tmp_path, capsys):
    tree = class_tree(clean_tree, tmp_path / "mine", NAMES[:2], "train_val")
    for split in ("validation", "test"):
        shutil.rmtree(tree / split)
    (tree / "train" / "zebra" / "notes.txt").write_text("not an image")
    photo = sorted((tree / "train" / "zebra").glob("*.*[Gg]"))[0]  # a phone's edit file beside its photo: a stray
    (photo.parent / f"{photo.stem}.AAE").write_text("<plist/>")
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1",
                     "--val_fraction", "0.5"])
    assert "2 files without an image extension" in capsys.readouterr().out
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: ds.num_rows for s, ds in dd.items()} == {"train": 2, "validation": 4}  # 3 per class: 1.5 -> 2
    assert json.loads((tmp_path / "out" / "source.json").read_text())["layout"] == "class-folders-split"


# ---- provenance ----

def test_source_json_of_the_demo_tree(preprocessed):
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    assert json.loads((preprocessed / "source.json").read_text()) == {
        "layout": "ilsvrc-kaggle", "name": "kaggle", "ilsvrc2012_full": False, "num_classes": 4,
        "counts": report["counts"], "val_fraction": None, "split_seed": None,
        "generated": ORIGINS["photos"]}  # ILSVRC's layout, not its images


@pytest.mark.parametrize("train_files, full", [(1_281_167, True), (1_281_166, False)])
def test_ilsvrc2012_full_needs_all_classes_and_every_file(train_files, full):
    """Counted on the files found (a skipped undecodable one does not matter), never on a subset."""
    wnids = ilsvrc.imagenet_wnids()
    listing = preprocess.Listing("ilsvrc-kaggle", wnids, wnids, {
        "train": preprocess.Split("t", None, [None] * train_files, {}),
        "validation": preprocess.Split("v", None, [None] * 50_000, {})}, [])
    cfg = preprocess.PreprocessConfig("d", "o")
    info = preprocess.source_info(listing, Path("kaggle"), cfg, {"train": train_files - 1, "validation": 50_000})
    assert info["ilsvrc2012_full"] is full and info["num_classes"] == 1000
    assert info["name"] == ("ILSVRC-2012" if full else "kaggle")  # a subset never borrows the release's name
    few = listing._replace(names=wnids[:999])
    assert preprocess.source_info(few, Path("kaggle"), cfg, {})["ilsvrc2012_full"] is False


def interrupted_own_tree(clean_tree, tmp_path, monkeypatch) -> list[str]:
    """The arguments of a run on a two-class tree of its own, Ctrl-C'd after 2 of its 5 shards (OUT.tmp kept)."""
    tree = class_tree(clean_tree, tmp_path / "flat", NAMES[:2], "one_tree")
    args = ["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--num_proc", "1", "--shard_size", "2",
            "--val_fraction", "0.2"]
    stop_after_shards(monkeypatch, 2)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main(args)
    monkeypatch.undo()
    return args


def test_own_tree_run_interrupted_resumes_its_shards(clean_tree, tmp_path, monkeypatch, capsys):
    args = interrupted_own_tree(clean_tree, tmp_path, monkeypatch)
    preprocess.main(args)
    assert "2 of 5 shards already done" in capsys.readouterr().out
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: ds.num_rows for s, ds in dd.items()} == {"train": 8, "validation": 2}


def test_shards_of_an_older_encoder_are_not_resumed_and_a_finished_output_stays_done(clean_tree, tmp_path,
                                                                                     monkeypatch, capsys):
    """An OUT.tmp interrupted under a preprocess.py that stored images otherwise (grayscale JPEGs re-encoded) starts
    over rather than mixing two encodings in a split; a finished output of that version is still "already done"."""
    args = interrupted_own_tree(clean_tree, tmp_path, monkeypatch)
    monkeypatch.setattr(preprocess, "ENCODER", preprocess.ENCODER + 1)  # the next version
    capsys.readouterr()
    preprocess.main(args)
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'out.tmp'}: left by an older preprocess.py, which stores images otherwise; starting over" \
        in printed and "already done" not in printed and "resuming" not in printed
    monkeypatch.setattr(preprocess, "ENCODER", preprocess.ENCODER + 1)
    preprocess.main(args)  # a finished output's record holds no encoder
    assert f"{tmp_path / 'out'}: already done" in capsys.readouterr().out
    assert {s: ds.num_rows for s, ds in datasets.load_from_disk(str(tmp_path / "out")).items()} == {
        "train": 8, "validation": 2}


def test_a_full_disk_while_assembling_is_the_one_line_of_the_shard_stage(clean_tree, tmp_path, monkeypatch):
    """The disk fills up after the last shard, as the manifest is written: the same one line as a full disk
    mid-shards (tests/test_faults.py), and the same command then only assembles."""
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = ["--data_dir", str(clean_tree), "--output_dir", str(out), "--num_proc", "1", "--shard_size", "2"]
    write = preprocess.atomic_write_text

    def full(path, text):
        if Path(path).name == MANIFEST_NAME:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, text)

    monkeypatch.setattr(preprocess, "atomic_write_text", full)
    with pytest.raises(SystemExit) as e:
        preprocess.main(args)
    line = str(e.value.code)
    assert line.startswith(f"error: no space left on the disk of {work} (") and line.endswith(
        " GB free); finished shards are kept there: free space (or --output_dir on a larger disk), then run the same "
        "command to resume"), line
    assert not out.exists() and len(list(work.glob("*/*.arrow"))) == 6
    monkeypatch.undo()
    before = {p.name: p.stat().st_ino for p in work.glob("*/*.arrow")}
    preprocess.main(args)
    assert {p.name: p.stat().st_ino for p in out.glob("*/*.arrow")} == before  # no shard made again
    assert output_manifest.verify(out)[0] == []


# ---- Kaggle's tree: a linked class folder, the report's file lists, --data_dir one level too deep ----

def test_a_link_to_a_class_folder_of_kaggles_tree_is_read_once_with_a_warning(clean_tree, tmp_path, capsys):
    """`ln -s n01440764 train/n01443537`: the same folder under two wnids would store each image twice, under two
    labels; it is read once, under the first name, with the warning a class-per-folder tree gets."""
    tree = tmp_path / "kaggle"
    shutil.copytree(clean_tree, tree)
    train_dir = tree / ilsvrc.SPLIT_DIRS["train"]
    first, second = manifest(clean_tree)["wnids"]
    shutil.rmtree(train_dir / second)
    (train_dir / second).symlink_to(first)
    out = tmp_path / "out"
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "1"])
    assert (f"warning: 1 folders in {train_dir} are the same folder as a class listed already, not listed twice: "
            f"{second} -> {first}") in capsys.readouterr().out.splitlines()
    train = datasets.load_from_disk(str(out))["train"]
    assert len(set(train["image_id"])) == train.num_rows == 3 and set(train["label"]) == {0}
    report = json.loads((out / "preprocess_report.json").read_text())
    assert {"path": f"{ilsvrc.SPLIT_DIRS['train']}/{second}", "reason": f"the same folder as {first}, listed "
            "already: its images would be stored twice, under two labels"} in report["left_out"]


def quirky_tree(ilsvrc_tree: Path, root: Path) -> tuple[Path, list[dict]]:
    """The faults tree (CMYK, a PNG named .JPEG...) with 3 broken links, 2 non-image files in val/, a file directly
    in train/ and a folder in test/; returns (the tree, the left_out entries its report must hold)."""
    tree = root / "kaggle"
    shutil.copytree(ilsvrc_tree, tree, symlinks=True)
    train, val, test = (ilsvrc.SPLIT_DIRS[s] for s in ("train", "validation", "test"))
    wnid = manifest(ilsvrc_tree)["wnids"][1]
    shutil.copy(next((tree / train / wnid).glob("*.JPEG")), tree / train / "loose.JPEG")
    (tree / train / wnid / "gone_1.JPEG").symlink_to(root / "nowhere_1.JPEG")
    (tree / train / wnid / "gone_2.JPEG").symlink_to(root / "nowhere_2.JPEG")
    (tree / val / "loop.JPEG").symlink_to(tree / val / "loop.JPEG")
    (tree / val / "readme.txt").write_text("not an image")
    (tree / val / "notes.md").write_text("nor this")
    (tree / test / "more").mkdir()
    stray = f"no image file extension and no row in {ilsvrc.VAL_SOLUTION}"
    return tree, sorted([
        {"path": f"{train}/{wnid}/gone_1.JPEG", "reason": "a broken link: its target is gone"},
        {"path": f"{train}/{wnid}/gone_2.JPEG", "reason": "a broken link: its target is gone"},
        {"path": f"{val}/loop.JPEG", "reason": "a broken link: too many levels of symbolic links"},
        {"path": f"{val}/notes.md", "reason": stray}, {"path": f"{val}/readme.txt", "reason": stray},
        {"path": f"{train}/loose.JPEG", "reason": "outside the class folders: no folder names its label"},
        {"path": f"{test}/more", "reason": "a folder among the images (images are read only as files directly in "
                                           "train/<wnid>/, val/ or test/)"}], key=lambda e: e["path"])


def test_the_report_names_each_file_left_out_or_re_encoded_alike_after_a_resume(ilsvrc_tree, tmp_path,
                                                                                monkeypatch, capsys):
    """The warnings give a count and one name; preprocess_report.json lists every file left out and every file
    stored re-encoded (which of ImageNet's 22 CMYK files were converted), the same whether the run was resumed and
    whatever --num_proc; a shard finished by an older preprocess.py, whose report has no such list, is kept (its
    re-encodes counted, not named) and said."""
    tree, left_out = quirky_tree(ilsvrc_tree, tmp_path)
    args = ["--data_dir", str(tree), "--shard_size", "5"]
    preprocess.main([*args, "--output_dir", str(tmp_path / "whole"), "--num_proc", "2"])
    printed = capsys.readouterr().out
    assert f"warning: 2 non-image files in {tree / ilsvrc.SPLIT_DIRS['validation']} left out, e.g. notes.md" \
        in printed.splitlines()
    stop_after_shards(monkeypatch, 2)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    monkeypatch.undo()
    older = tmp_path / "resumed.tmp" / preprocess.WORK / "train-00000.json"  # as a preprocess.py before the lists
    older_files = json.loads(older.read_text())["reencoded_files"]
    assert older_files, "the older shard re-encoded files, which its report then no longer names"
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "reencoded_files"}))
    preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    assert "2 of 8 shards already done" in capsys.readouterr().out  # the older one too: hours of work on ImageNet

    whole, resumed = (json.loads((tmp_path / name / "preprocess_report.json").read_text())
                      for name in ("whole", "resumed"))
    assert whole["left_out"] == left_out
    m = manifest(ilsvrc_tree)
    reasons = {"cmyk": "mode CMYK", "val_cmyk": "mode CMYK", "png_named_jpeg": "PNG file",
               "exif_orientation_6": "EXIF orientation 6"}
    assert sorted(whole["reencoded_files"], key=lambda e: e["path"]) == sorted(
        ({"split": m["planted"][kind]["split"], "path": m["planted"][kind]["path"], "reason": reason}
         for kind, reason in reasons.items()), key=lambda e: e["path"])
    assert {split: sum(c.values()) for split, c in whole["reencoded"].items()} == {
        split: sum(e["split"] == split for e in whole["reencoded_files"]) for split in whole["reencoded"]}
    for report in (whole, resumed):
        del report["seconds"], report["config"]["num_proc"], report["config"]["output_dir"]
    assert resumed.pop("warnings") == [*whole.pop("warnings"), "1 shards were written by an earlier preprocess.py: "
                                       "their re-encoded files are counted in reencoded, not named in reencoded_files"]
    # the older shard's re-encodes are counted in both, named only in the whole run's report
    assert [e for e in whole["reencoded_files"] if e not in resumed["reencoded_files"]] == [
        {"split": "train", **e} for e in older_files]
    assert {**resumed, "reencoded_files": whole["reencoded_files"]} == whole


HIDDEN = 'hidden: its name starts with "." (macOS\'s .DS_Store and ._* files, Jupyter\'s .ipynb_checkpoints/)'


def plant_hidden(root: Path, folders: list[str], image: Path) -> list[dict]:
    """What a Mac and Jupyter leave in each of ``folders`` (relative to ``root``): a .DS_Store, the AppleDouble file
    of an image (._<name>.JPEG, an image's name but no image), a .ipynb_checkpoints/ holding a copy of ``image``;
    returns their left_out entries, sorted as the report sorts them."""
    entries = []
    for rel in folders:
        (root / rel / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / rel / f"._{image.name}").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
        (root / rel / ".ipynb_checkpoints").mkdir()
        shutil.copy(image, root / rel / ".ipynb_checkpoints" / image.name)
        entries += [{"path": f"{rel}/{name}", "reason": HIDDEN} for name in (".DS_Store", f"._{image.name}",
                                                                              ".ipynb_checkpoints")]
    return sorted(entries, key=lambda e: e["path"])


@pytest.mark.parametrize("layout", ["ilsvrc", "own"])
def test_hidden_files_are_listed_in_the_report_and_counted_in_one_line(layout, clean_tree, tmp_path, monkeypatch,
                                                                       capsys):
    """.DS_Store, AppleDouble ._* files and .ipynb_checkpoints/ in the folders read are still not read, and each is
    now in preprocess_report.json's left_out with its reason, the same after a resume and for any --num_proc; the
    console gives them one line with their count (a few per class folder are usual), not a line each."""
    if layout == "ilsvrc":
        root = tmp_path / "kaggle"
        shutil.copytree(clean_tree, root)
        train = ilsvrc.SPLIT_DIRS["train"]
        folders = [train, *(f"{train}/{w}" for w in manifest(clean_tree)["wnids"]),
                   ilsvrc.SPLIT_DIRS["validation"], ilsvrc.SPLIT_DIRS["test"]]
    else:
        root = class_tree(clean_tree, tmp_path / "photos", NAMES[:2], "train_val")
        folders = [f"{split}{name}" for split in ("train/", "validation/") for name in ("", *NAMES[:2])] + ["test"]
        folders = [f.rstrip("/") for f in folders]
    files = {split: len(s.items) for split, s in preprocess.list_splits(root, None, 0).splits.items()}
    left_out = plant_hidden(root, folders, next(clean_tree.rglob("*.JPEG")))
    args = ["--data_dir", str(root), "--shard_size", "2"]
    preprocess.main([*args, "--output_dir", str(tmp_path / "whole"), "--num_proc", "2"])
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "hidden files" in line] == [
        f'warning: {len(left_out)} hidden files and folders (names starting with ".": .DS_Store, ._*, '
        f".ipynb_checkpoints) in {root} left out, e.g. {left_out[0]['path']}"]
    stop_after_shards(monkeypatch, 2)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    monkeypatch.undo()
    preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    assert "2 of 6 shards already done" in capsys.readouterr().out
    whole, resumed = (json.loads((tmp_path / name / "preprocess_report.json").read_text())
                      for name in ("whole", "resumed"))
    assert whole["left_out"] == resumed["left_out"] == left_out
    assert whole["files"] == resumed["files"] == files and not whole["skipped"]  # none of them was read


def test_help_names_every_input_data_dir_takes():
    """--data_dir reads Kaggle's zip (README's first command passes it), image-net.org's tars, the Hub's snapshots,
    WebDataset shards and the robustness sets as well as Kaggle's folder and a class-per-folder tree: --help names
    them all."""
    proc = run_script("--help", env={**os.environ, "COLUMNS": "1000"})  # one line per flag: no words cut at a "-"
    assert proc.returncode == 0, proc.stderr
    help_text = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("--data_dir "))
    for named in ("Kaggle's ILSVRC folder", "its .zip", "image-net.org's tars and devkit", "ILSVRC/imagenet-1k",
                  "data/*.parquet", "data/*.tar.gz", "WebDataset shards", "ImageNet-V2, -Sketch, -R, -A or -C",
                  "class-per-folder image tree", "imagenet_object_localization_patched2019.tar.gz"):
        assert named in help_text, named


@pytest.mark.parametrize("flags", [[], ["--layout", "folders", "--val_fraction", "0.1"], ["--layout", "ilsvrc"],
                                   ["--eval_set", "imagenet-r"]])
def test_a_mistyped_data_dir_is_no_such_file_or_folder_on_every_route(flags, tmp_path):
    """--data_dir /tmp/nonexistent.zip: a mistyped path may be meant as a file (Kaggle's zip) or a folder, so the one
    line says neither is there, whichever route --layout or --eval_set picks, before any work."""
    missing = tmp_path / "nonexistent.zip"
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(missing), "--output_dir", str(tmp_path / "out"), *flags])
    assert e.value.code == f"error: --data_dir {missing}: no such file or folder"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.parametrize("flags", [["--layout", "folders", "--val_fraction", "0.1"], ["--layout", "ilsvrc"]])
@pytest.mark.parametrize("name", ["notes.txt", "X.ZIP"])
def test_a_forced_layout_on_a_file_says_it_reads_a_folder(name, flags, tmp_path):
    """--layout reads a folder: a file given with it (notes, Kaggle's zip) is one line saying so, not a path
    inside the file or an OS error; the zip's says it is read without --layout."""
    given = tmp_path / name
    given.write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(given), "--output_dir", str(tmp_path / "out"), *flags])
    zipped = "; drop --layout: Kaggle's zip is read without it" if name == "X.ZIP" else ""
    assert e.value.code == f"error: --layout {flags[1]}: --data_dir {given} is a file; --layout reads a folder{zipped}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.parametrize("split", [[], ["--val_fraction", "0.1"]])
@pytest.mark.parametrize("where", ["ILSVRC/Data/CLS-LOC", "ILSVRC", "copy", "ILSVRC/Data/CLS-LOC/train",
                                   "ILSVRC/Data/CLS-LOC/val"])
def test_data_dir_inside_kaggles_tree_is_refused_naming_its_root(where, split, clean_tree, tmp_path):
    """--data_dir .../ILSVRC/Data/CLS-LOC, where timm's and torchvision's guides point: its val/ is flat (the labels
    are in LOC_val_solution.csv, above it), so the error names the root to pass, not a sort of val/ by hand. "copy":
    CLS-LOC alone, copied to a path that still ends in ILSVRC/Data/CLS-LOC. Its train/ alone, a tree of class
    folders, is refused too, with --val_fraction as well: that would swap the labelled val for a share of train,
    without boxes or names; nothing is written."""
    root = clean_tree
    if where == "copy":
        root = tmp_path / "mine"
        shutil.copytree(clean_tree / "ILSVRC/Data/CLS-LOC", root / "ILSVRC/Data/CLS-LOC")
    data_dir = root / ("ILSVRC/Data/CLS-LOC" if where == "copy" else where)
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"), "--num_proc", "1",
                         *split])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    if where == "copy":  # no root above to name
        assert e.value.code == (f"error: --data_dir {data_dir} is Kaggle's ILSVRC/Data/CLS-LOC, whose flat val/ is "
                                "labelled by LOC_val_solution.csv beside ILSVRC/, not found above it: pass --data_dir "
                                "the folder that holds LOC_synset_mapping.txt, LOC_val_solution.csv and ILSVRC/")
    else:
        assert e.value.code == (f"error: --data_dir {data_dir} is inside Kaggle's ILSVRC tree, which is read whole "
                                f"(val labels from LOC_val_solution.csv, boxes from ILSVRC/Annotations): pass "
                                f"--data_dir {root}")


def test_layout_folders_on_kaggles_train_is_read_saying_what_it_leaves(clean_tree, tmp_path, capsys):
    """--layout folders insists on reading Kaggle's CLS-LOC/train as one tree of class folders: it is read, and the
    warning (printed and in the report) says the labelled val, boxes and names are not used, and what to pass."""
    data_dir, out = clean_tree / "ILSVRC/Data/CLS-LOC/train", tmp_path / "out"
    preprocess.main(["--data_dir", str(data_dir), "--output_dir", str(out), "--num_proc", "1", "--layout", "folders",
                     "--val_fraction", "0.5"])
    line = (f"--layout folders: --data_dir {data_dir} is inside Kaggle's ILSVRC tree, read as one class-per-folder "
            "tree: its labelled val (LOC_val_solution.csv), boxes (ILSVRC/Annotations) and class descriptions "
            "(LOC_synset_mapping.txt) are not used, validation is --val_fraction of these images; --data_dir "
            f"{clean_tree} reads them")
    assert f"warning: {line}" in capsys.readouterr().out
    assert line in json.loads((out / "preprocess_report.json").read_text())["warnings"]
    assert datasets.load_from_disk(str(out))["validation"].num_rows == 4  # half of each class's 3, rounded up


def test_kaggles_cls_loc_with_val_sorted_into_class_folders_is_a_tree_of_class_folders(clean_tree, tmp_path):
    """valprep.sh sorts CLS-LOC/val into val/<wnid>/, as timm's and torchvision's ImageFolder guides have it: that
    CLS-LOC is train/ and val/ of class folders, read as such (not refused as part of Kaggle's tree)."""
    root = tmp_path / "sorted"
    shutil.copytree(clean_tree, root)
    cls_loc = root / "ILSVRC/Data/CLS-LOC"
    shutil.rmtree(cls_loc / "test")
    for line in (root / "LOC_val_solution.csv").read_text().splitlines()[1:]:
        image_id, boxes = line.split(",", 1)
        (cls_loc / "val" / boxes.split()[0]).mkdir(exist_ok=True)
        (cls_loc / "val" / f"{image_id}.JPEG").rename(cls_loc / "val" / boxes.split()[0] / f"{image_id}.JPEG")
    preprocess.main(["--data_dir", str(cls_loc), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert sorted(ds) == ["train", "validation"] and ds["validation"].num_rows == len(list(cls_loc.glob("val/*/*")))


def test_a_tree_of_ppm_and_pgm_files_is_read_as_torchvisions_imagefolder_reads_it(tmp_path):
    """GTSRB-style <class>/*.ppm (and .pgm, grayscale): image files for torchvision's ImageFolder, so images here
    too, re-encoded as JPEGs, none left out as "no image file extension"."""
    import torchvision.datasets

    photo = skimage.data.astronaut()
    tree = tmp_path / "signs"
    for c, name in enumerate(("00000", "00001", "00002")):
        (tree / name).mkdir(parents=True)
        for i in range(4):
            crop = Image.fromarray(photo[40 * c + 8 * i:][:48, 16 * i:][:, :40])
            crop.save(tree / name / f"{i:05d}_{c}.ppm")
        crop.convert("L").save(tree / name / f"gray_{c}.pgm")
    out = tmp_path / "out"
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", "1", "--val_fraction", "0.2"])
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["left_out"] == [] and report["skipped"] == []
    dd = datasets.load_from_disk(str(out))
    assert sum(ds.num_rows for ds in dd.values()) == len(torchvision.datasets.ImageFolder(str(tree))) == 15
    assert Counter(e["reason"] for e in report["reencoded_files"]) == {"PPM file": 12, "PPM file, mode L": 3}
    assert {Image.open(io.BytesIO(row["image"]["bytes"])).format for rows in raw_rows(out).values()
            for row in rows.values()} == {"JPEG"}


def half_jpegs(photo: np.ndarray) -> dict:
    """name -> JPEG bytes: whole ones, the two ways a download ends early (its second half zero-filled, as a
    pre-allocated file keeps it; or cut with an EOI marker after it), and two with stray bytes before a marker (a
    libjpeg warning that leaves the picture whole), one large enough to be tiled, one small."""
    def jpeg(a, **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", **kw)
        return buf.getvalue()

    good = jpeg(photo, quality=95)  # baseline: the zeros decode as coefficients, so Pillow reads to the end
    n = len(good)
    small = jpeg(photo[::8, ::8], quality=90)
    extra = {name: data[:data.index(b"\xff\xdb")] + b"\x00\x00" + data[data.index(b"\xff\xdb"):]
             for name, data in (("extra_bytes_big", good), ("extra_bytes_small", small))}
    return {"whole_big": good, "whole_small": small, "zero_filled": good[:n // 2] + b"\0" * (n - n // 2),
            "cut_at_eoi": good[:n // 2] + b"\xff\xd9", **extra}


@pytest.mark.parametrize("how", [["--restart_tile", "64"], ["--restart_tile", "0"], ["--shorter_side", "48"]])
def test_a_jpeg_whose_data_ends_early_is_skipped_and_other_libjpeg_warnings_are_named(how, tmp_path, monkeypatch):
    """Pillow decodes a JPEG whose second half is missing without a word (libjpeg fills the rest in): it is skipped
    with the reason, stored as it is (tiled or not) or re-encoded. A file with stray bytes before a marker (a libjpeg
    warning, the picture whole) is stored and named in decode_warnings. An interrupted run, resumed, gives the same
    report."""
    files = half_jpegs(skimage.data.astronaut())
    for name in ("zero_filled", "cut_at_eoi", "extra_bytes_big", "extra_bytes_small"):
        Image.open(io.BytesIO(files[name])).load()  # what lets them through: Pillow's decode raises nothing
    tree = tmp_path / "photos"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for name, data in files.items():
            (tree / cls / f"{name}.jpg").write_bytes(data)
    args = ["--data_dir", str(tree), "--num_proc", "1", "--val_fraction", "0.2", *how, "--shard_size", "3"]
    preprocess.main([*args, "--output_dir", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    ended = {f"{c}/{n}.jpg" for c in "ab" for n in ("zero_filled", "cut_at_eoi")}
    assert {s["path"] for s in report["skipped"]} == ended
    assert all(s["reason"].startswith("the JPEG data ends early, part of the picture is missing (libjpeg-turbo: ")
               for s in report["skipped"])
    stored = {i for ds in datasets.load_from_disk(str(tmp_path / "out")).values() for i in ds["image_id"]}
    assert stored == {f"{c}/{n}" for c in "ab" for n in ("whole_big", "whole_small", "extra_bytes_big",
                                                          "extra_bytes_small")}
    assert {(e["path"], e["warning"]) for e in report["decode_warnings"]} == {
        (f"{c}/extra_bytes_{size}.jpg", "Corrupt JPEG data: 2 extraneous bytes before marker 0xdb")
        for c in "ab" for size in ("big", "small")}
    assert any(w.startswith("4 stored JPEG files draw a warning from libjpeg-turbo's decoder") for w in
               report["warnings"])
    if how == ["--restart_tile", "64"]:
        assert sum(report["tiled"].values()) == 2  # the whole big ones; files with a warning stay untiled
    if how[0] == "--shorter_side":
        assert len(report["reencoded_files"]) == 8  # every file stored: decoded by Pillow too, then resized

    stop_after_shards(monkeypatch, 1)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main([*args, "--output_dir", str(tmp_path / "resumed")])
    monkeypatch.undo()
    preprocess.main([*args, "--output_dir", str(tmp_path / "resumed")])
    again = json.loads((tmp_path / "resumed" / "preprocess_report.json").read_text())
    for key in ("skipped", "decode_warnings", "large_images", "counts", "tiled", "untiled", "reencoded_files",
                "warnings"):
        assert again[key] == report[key], key


def test_a_jpeg_simplejpeg_cannot_name_is_judged_by_pillow_and_stored(tmp_path):
    """simplejpeg 1.9 raises KeyError on a subsampling it has no name for (4:4:1, libjpeg-turbo's -sample 1x4): the
    strict check has no verdict there, so Pillow's decode judges the file, which is stored as it is (the KeyError
    ended the whole run)."""
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    odd = turbojpeg.compress(rgb, 90, turbojpeg.SAMP.Y441)
    enc = preprocess.encode_image(odd, None, 90)
    assert enc.data == odd and enc.why is None and not enc.warning
    tree = tmp_path / "tree"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for i in range(3):
            (tree / cls / f"x{i}.jpg").write_bytes(turbojpeg.compress(rgb, 90, turbojpeg.SAMP.Y420))
    (tree / "b" / "odd.jpg").write_bytes(odd)
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "out"), "--val_fraction", "0.3",
                     "--num_proc", "1", "--restart_tile", "0"])
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["skipped"] == [] and report["decode_warnings"] == []
    rows = [r for ds in datasets.load_from_disk(str(tmp_path / "out")).values()
            for r in ds.cast_column("image", datasets.Image(decode=False))]
    assert [r["image"]["bytes"] for r in rows if r["image_id"] == "b/odd"] == [odd]


def test_images_between_once_and_twice_max_image_pixels_are_named_in_the_report(tmp_path, capsys):
    """Pillow's decompression-bomb warning names no file and shows once a process: each image over
    --max_image_pixels (and under twice it, so stored) is named in the report with its pixel count, and one warning
    line counts them, with one worker process or several."""
    tree = tmp_path / "photos"
    big = set()
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (30, 30), (40 * i, 80, 160)).save(tree / cls / f"small_{i}.jpg", quality=90)
        for i in range(2):
            Image.new("RGB", (40, 40), (40 * i, 160, 80)).save(tree / cls / f"big_{i}.jpg", quality=90)
            big.add(f"{cls}/big_{i}.jpg")
    for num_proc in ("1", "2"):
        out = tmp_path / f"out{num_proc}"
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(out), "--num_proc", num_proc, "--val_fraction",
                         "0.2", "--max_image_pixels", "1000", "--shard_size", "4"])
        report = json.loads((out / "preprocess_report.json").read_text())
        assert {e["path"]: e["pixels"] for e in report["large_images"]} == dict.fromkeys(big, 1600), num_proc
        assert report["skipped"] == [] and sum(report["counts"].values()) == 14
        line = next(w for w in report["warnings"] if "--max_image_pixels" in w)
        assert line.startswith("4 images are over --max_image_pixels 1,000 px but under twice it, so stored")
        assert f"warning: {line}" in capsys.readouterr().out


def big_and_small_tree(root: Path) -> Path:
    """train/ and val/ of two classes of 30x30 JPEGs (900 px) and one 64x64 (4,096 px) in train/a/."""
    for rel in ("train/a/small_0", "train/a/small_1", "train/b/small_2", "train/b/small_3", "val/a/small_4",
                "val/b/small_5", "train/a/big"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = (64, 64) if rel.endswith("big") else (30, 30)
        Image.new("RGB", size, (len(rel) * 9, 80, 160)).save(root / f"{rel}.jpg", quality=90)
    return root


def test_max_image_pixels_is_the_bomb_guard_of_every_process(tmp_path, capsys):
    """--max_image_pixels sets PIL.Image.MAX_IMAGE_PIXELS in each worker and in the main process alike (a wrapper's
    setting reaches no spawned worker): Pillow refuses a decode over twice it, and the skip names the flag. A changed
    value is another job, as any setting; the caller's own setting is left as it was."""
    tree = big_and_small_tree(tmp_path / "photos")
    assert preprocess.PreprocessConfig.max_image_pixels == Image.MAX_IMAGE_PIXELS  # Pillow's own default
    before = Image.MAX_IMAGE_PIXELS
    for num_proc in (1, 2):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / f"tiny{num_proc}"),
                         "--num_proc", str(num_proc), "--max_image_pixels", "1000"])
        assert Image.MAX_IMAGE_PIXELS == before
        report = json.loads((tmp_path / f"tiny{num_proc}" / "preprocess_report.json").read_text())
        assert [s["path"] for s in report["skipped"]] == ["train/a/big.jpg"]
        assert "decompression-bomb guard" in report["skipped"][0]["reason"]
        assert report["skipped"][0]["reason"].endswith("run with a larger --max_image_pixels (0 = no limit)")
        assert report["config"]["max_image_pixels"] == 1000
    one, two = (datasets.load_from_disk(str(tmp_path / f"tiny{n}")) for n in (1, 2))
    for split in ("train", "validation"):
        assert one[split].num_rows == (4 if split == "train" else 2)
        assert one[split].data.table.equals(two[split].data.table), split
    with pytest.raises(SystemExit, match=r"other inputs or settings \(max_image_pixels 1000 -> 5000\); add "):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "tiny2"), "--num_proc", "2",
                         "--max_image_pixels", "5000"])
    for limit in ("5000", "0"):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / f"limit{limit}"), "--num_proc", "2",
                         "--max_image_pixels", limit])
        assert "a/big" in datasets.load_from_disk(str(tmp_path / f"limit{limit}"))["train"]["image_id"]
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "default"), "--num_proc", "1"])
    capsys.readouterr()
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "default"), "--num_proc", "1",
                     "--max_image_pixels", str(Image.MAX_IMAGE_PIXELS)])  # the default, said: the same job
    assert "already done" in capsys.readouterr().out
