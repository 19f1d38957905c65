"""preprocess.py on ImageNet as it is distributed: Kaggle's zip, image-net.org's tars + devkit, WebDataset shards,
the Hub's ILSVRC/imagenet-1k (its older tar.gz snapshot and today's Parquet).

One generated set (the ``ilsvrc_tree`` fixture, with its broken and odd files) is packaged each way by
imagenet_trainer/demo_archives.py; each packaging must give the unpacked tree's output (``preprocessed``) row for
row, with the same report, and fail in one line, before any work, when incomplete or damaged.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types
import zipfile
import zlib
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import preprocess
from imagenet_trainer import archive_layouts, archives, demo_archives, ilsvrc, image_tree
from imagenet_trainer.demo import make_ilsvrc_tree
from test_preprocess import HIDDEN, kill_after_shards, plant_hidden, stop_after_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packaged(ilsvrc_tree, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("packaged")
    return {"kaggle-zip": demo_archives.kaggle_zip(ilsvrc_tree, base / "kaggle.zip"),
            "kaggle-zip-of-tgz": demo_archives.kaggle_zip_of_tgz(ilsvrc_tree, base / "kaggle-2019.zip"),
            "kaggle-tar-gz": demo_archives.kaggle_unzipped_tgz(ilsvrc_tree, base / "kaggle-2019-unzipped"),
            "hub-imagenet-1k": demo_archives.hub(ilsvrc_tree, base / "hub"),
            "hub-imagenet-1k-parquet": demo_archives.hub_parquet(ilsvrc_tree, base / "hub-parquet"),
            "image-net.org": demo_archives.imagenet_org(ilsvrc_tree, base / "imagenet-org"),
            "webdataset": demo_archives.webdataset(ilsvrc_tree, base / "wds")}


def run(data_dir: Path, out: Path, *extra: str) -> Path:
    preprocess.main(["--data_dir", str(data_dir), "--output_dir", str(out), "--num_proc", "1", "--shard_size", "5",
                     *extra])
    return out


def skipped(out: Path) -> list:
    """(image file name, reason) of each skipped file: the folder part names where it was read from."""
    report = json.loads((out / "preprocess_report.json").read_text())
    return sorted((Path(s["path"]).name, s["split"], s["reason"]) for s in report["skipped"])


def report_counts(out: Path, keys=("counts", "files", "reencoded", "tiled", "untiled", "boxes")) -> dict:
    report = json.loads((out / "preprocess_report.json").read_text())
    return {k: report[k] for k in keys}


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-zip-of-tgz", "kaggle-tar-gz", "image-net.org"])
def test_archives_give_the_trees_output_row_for_row(packaging, packaged, preprocessed, tmp_path, capsys):
    out = run(packaged[packaging], tmp_path / "out")
    said = capsys.readouterr().out
    assert ("image-net.org" if packaging == "image-net.org" else "Kaggle") in said.splitlines()[0]
    mine, tree = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(preprocessed))
    assert list(mine) == list(tree) == ["train", "validation", "test"]
    for split in tree:
        assert mine[split].features == tree[split].features
        assert mine[split].data.table.equals(tree[split].data.table), split  # images, labels, ids and boxes
    assert skipped(out) == skipped(preprocessed) and len(skipped(out)) == 3
    assert report_counts(out) == report_counts(preprocessed)
    for name in ("class_descriptions.json", "dataset_dict.json"):
        assert (out / name).read_text() == (preprocessed / name).read_text()
    for split in tree:
        assert (out / split / "dataset_info.json").read_text() == (preprocessed / split / "dataset_info.json"
                                                                   ).read_text()
    source, tree_source = (json.loads((p / "source.json").read_text()) for p in (out, preprocessed))
    assert source.pop("packaging") == packaging.removesuffix("-of-tgz") and source.pop("archives")
    assert source.pop("name") == {"kaggle-zip": "kaggle", "kaggle-zip-of-tgz": "kaggle-2019",
                                  "kaggle-tar-gz": "kaggle-2019-unzipped",
                                  "image-net.org": "imagenet-org"}[packaging]  # a subset
    # goes by its file's or folder's name; the tree's demo manifest (what its images really are) is not packed
    assert "generated" in tree_source and "generated" not in source
    assert source == {k: v for k, v in tree_source.items() if k not in ("name", "generated")}


def test_image_net_org_labels_go_through_meta_mat_not_its_id_order(packaged, ilsvrc_tree):
    from imagenet_trainer import archive_layouts

    wnids, descriptions, id_to_wnid, truth = archive_layouts.read_devkit(
        str(packaged["image-net.org"] / archive_layouts.DEVKIT))
    m = json.loads((ilsvrc_tree / "demo_manifest.json").read_text())
    assert wnids == m["wnids"] and descriptions == m["descriptions"]  # the non-leaf synset is not a class
    assert [id_to_wnid[i] for i in range(1, 5)] == wnids[::-1]  # ILSVRC2012_ID 1 is the last wnid here
    assert [wnids.index(id_to_wnid[t]) for t in truth] == [m["val_labels"][s] for s in sorted(m["val_labels"])]


@pytest.mark.parametrize("packaging", ["webdataset", "hub-imagenet-1k", "hub-imagenet-1k-parquet"])
def test_webdataset_and_hub_archives_give_the_trees_rows(packaging, packaged, preprocessed, tmp_path):
    """The Parquet snapshot's train rows are shuffled across its files, so its train shards come through the spool;
    its validation and test rows are in order and are read in place."""
    out = run(packaged[packaging], tmp_path / "out")
    mine, tree = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(preprocessed))
    assert list(mine) == (["train", "validation"] if packaging == "webdataset"  # timm's shards: no test split
                          else ["train", "validation", "test"])
    for split in mine:
        assert mine[split].num_rows == tree[split].num_rows
        for column in ("image", "label", "image_id"):  # no boxes in WebDataset shards
            assert mine[split].data.table[column].equals(tree[split].data.table[column]), (split, column)
        assert all(o == [] for o in mine[split]["objects"])
    assert skipped(out) == [s for s in skipped(preprocessed) if s[1] in mine]
    assert json.loads((out / "source.json").read_text())["packaging"] == packaging
    if packaging.startswith("hub-"):  # classes.py names the classes; WebDataset shards leave that to timm's list
        assert mine["train"].features == tree["train"].features
        assert (out / "class_descriptions.json").read_text() == (preprocessed / "class_descriptions.json").read_text()
        assert not (out / preprocess.WORK).exists() and not list(tmp_path.rglob("*.bin"))  # the spool is gone


def test_hub_parquet_reads_rows_in_order_in_place_and_spools_shuffled_ones(packaged, tmp_path, monkeypatch):
    """Rows in their file's order cost a shard at most two row groups more than its images; the shuffled train
    rows would cost a row group per image, so they are spooled from one read of each row group. In place, a row
    group is read once, in whatever order its rows come. A row group that no longer reads leaves its rows in place,
    where the worker reports each image with the reason."""
    folder = tmp_path / "set"
    shutil.copytree(packaged["hub-imagenet-1k-parquet"], folder)
    listing = preprocess.list_splits(folder, None, 0)
    shards = preprocess.plan_shards(folder, listing.splits, tmp_path / "work", 5)
    spooled = {(s.split, archives._spooled_read(s)) for s in shards}
    assert ("train", True) in spooled and not {("validation", True), ("test", True)} & spooled

    val = next(s.source["members"] for s in shards if s.split == "validation")  # 5 rows: row groups 0 and 1
    real, reads = archives.parquet_rows, []
    monkeypatch.setattr(archives, "parquet_rows", lambda path, group, rows, opened=None: reads.append(group) or
                        real(path, group, rows, opened))
    read = archives.MemberReader(str(folder), {"archives": listing.archives["archives"], "members": val})
    for path in sorted(val, key=lambda p: val[p][1][::-1]):  # row 0 of each group, then row 1, ...: alternating
        read(path)
    assert sorted(reads) == [0, 1]

    damaged = folder / "data" / "train-00001-of-00002.parquet"
    data = damaged.read_bytes()
    damaged.unlink()
    damaged.write_bytes(data[:len(data) // 2])  # cut after the listing: no footer, no row group reads
    ready = [s for s in archives.spool(shards, tmp_path / "spool", 100) if s.split == "train"]
    lost = {(s.index, p): archives.MemberReader(str(folder), s.source) for s in ready
            for p, loc in s.source["members"].items() if s.source["archives"][loc[0]] == str(damaged)}
    assert any(s.source.get("spool") and (s.index, p) in lost for s in ready for p in s.source["members"])
    assert all(archives.MemberReader(str(folder), s.source)(p) for s in ready for p in s.source["members"]
               if (s.index, p) not in lost)
    for (_, path), read in lost.items():
        with pytest.raises(OSError, match=f"row group .* of {damaged.name} does not read"):
            read(path)


def test_the_hubs_1000_names_give_wnid_labels_and_kaggles_descriptions(packaged, ilsvrc_tree, tmp_path):
    """The Hub's own label names (its 1000 human names in sorted-wnid order, "crane2" for the machine), no
    classes.py: labels are the Hub's indices, classes the sorted wnids, the descriptions LOC_synset_mapping.txt's
    ("crane" twice); the older tar.gz snapshot's classes.py says "crane2" too and gives "crane" as well."""
    parquet = demo_archives.hub_parquet(ilsvrc_tree, tmp_path / "parquet", imagenet_names=True, classes_py=False)
    wnids, descriptions, splits, _ = archives.list_splits(archives.detect(parquet))
    tree_wnids, _, tree_splits, _ = image_tree.list_ilsvrc_splits(ilsvrc_tree)
    assert wnids == ilsvrc.imagenet_wnids() and wnids[:4] == tree_wnids
    assert descriptions[0] == "tench, Tinca tinca" and descriptions[517] == descriptions[134] == "crane"
    assert {s: v.items for s, v in splits.items()} == {s: v.items for s, v in tree_splits.items()}
    bare = tmp_path / "no-metadata"  # written by a tool other than datasets: the names only in README.md
    shutil.copytree(parquet, bare)
    for path in (bare / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path, row_group_size=4)
    assert archives.list_splits(archives.detect(bare))[:2] == (wnids, descriptions)

    tar_gz = tmp_path / "tar-gz"
    shutil.copytree(packaged["hub-imagenet-1k"], tar_gz)
    classes = archive_layouts.read_hub_classes(tar_gz / archive_layouts.HUB_CLASSES)
    pairs = [*classes.items(), ("n03126707", "crane2")]  # one more class, with no images
    (tar_gz / archive_layouts.HUB_CLASSES).write_text(  # the form of a list of pairs
        f"from collections import OrderedDict\nIMAGENET2012_CLASSES = OrderedDict({pairs!r})\n")
    wnids, descriptions, *_ = archives.list_splits(archives.detect(tar_gz))
    assert wnids[-1] == "n03126707" and descriptions[-1] == "crane"


def error_of(data_dir: Path, out: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as e:
        run(data_dir, out, *extra)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()  # refused before any work
    message = str(e.value.code)
    assert "\n" not in message and message.startswith("error: ")
    return message


def copy_set(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in src.iterdir():
        (dest / p.name).symlink_to(p)
    return dest


def test_truncated_archives_are_one_line_errors(packaged, tmp_path):
    data = packaged["kaggle-zip"].read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[:len(data) * 2 // 3])
    assert "cut.zip: not a complete zip" in error_of(tmp_path / "cut.zip", tmp_path / "a")

    cut = copy_set(packaged["image-net.org"], tmp_path / "org")
    train = cut / "ILSVRC2012_img_train.tar"
    data = train.read_bytes()
    train.unlink()
    train.write_bytes(data[:len(data) * 2 // 3])
    message = error_of(cut, tmp_path / "b")
    assert "ILSVRC2012_img_train.tar" in message and "truncated" in message and "download it again" in message

    hub = tmp_path / "hub"
    shutil.copytree(packaged["hub-imagenet-1k"], hub)
    val = hub / "data" / "val_images.tar.gz"
    val.write_bytes(val.read_bytes()[:-2000])
    message = error_of(hub, tmp_path / "c")
    assert "val_images.tar.gz: not a complete archive" in message and "download it again" in message


def test_cut_or_other_parquet_in_the_hubs_layout_is_a_one_line_error(packaged, tmp_path):
    hub = tmp_path / "cut"
    shutil.copytree(packaged["hub-imagenet-1k-parquet"], hub)
    val = hub / "data" / "validation-00000-of-00001.parquet"
    val.write_bytes(val.read_bytes()[:-2000])
    message = error_of(hub, tmp_path / "a")
    assert f"{val}: not a complete Parquet file" in message and "download it again" in message

    other = copy_set(packaged["hub-imagenet-1k-parquet"], tmp_path / "other")
    (other / archive_layouts.HUB_CLASSES).unlink()  # its label names are then no known ImageNet-1k's
    message = error_of(other, tmp_path / "b")
    assert "not ILSVRC/imagenet-1k's (label names ['astronaut', 'chelsea']..." in message
    assert "train.py and validate.py --dataset read such a folder as it is" in message


def test_incomplete_image_net_org_sets_name_what_is_missing(packaged, tmp_path):
    no_devkit = copy_set(packaged["image-net.org"], tmp_path / "no_devkit")
    (no_devkit / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    message = error_of(no_devkit, tmp_path / "a")
    assert "no ILSVRC2012_devkit_t12.tar.gz" in message and "validation labels" in message

    fewer = copy_set(packaged["image-net.org"], tmp_path / "fewer")
    (fewer / "ILSVRC2012_img_train.tar").unlink()
    with __import__("tarfile").open(packaged["image-net.org"] / "ILSVRC2012_img_train.tar") as full, \
            __import__("tarfile").open(fewer / "ILSVRC2012_img_train.tar", "w") as part:
        for m in full.getmembers()[1:]:
            part.addfile(m, full.extractfile(m))
    message = error_of(fewer, tmp_path / "b")
    assert "holds 3 class tars for the 4 classes" in message and "1 missing, e.g. n01440764.tar" in message


def test_a_class_without_train_images_is_named_on_every_route(packaged, ilsvrc_tree, tmp_path):
    """An empty class tar (image-net.org) or a class gone from the Hub's train shards: the warning the tree and
    Kaggle's zip give, naming the class the model would never see."""
    wnid = ilsvrc.read_synset_mapping(ilsvrc_tree / ilsvrc.SYNSET_MAPPING)[0][0]
    org = copy_set(packaged["image-net.org"], tmp_path / "org")
    (org / archive_layouts.TRAIN_TAR).unlink()
    with tarfile.open(packaged["image-net.org"] / archive_layouts.TRAIN_TAR) as full, \
            tarfile.open(org / archive_layouts.TRAIN_TAR, "w") as part:
        for m in full.getmembers():
            if m.name == f"{wnid}.tar":  # a class tar with no members
                empty = tarfile.TarInfo(m.name)
                empty.size = len(EMPTY_TAR)
                part.addfile(empty, __import__("io").BytesIO(EMPTY_TAR))
            else:
                part.addfile(m, full.extractfile(m))
    hub = tmp_path / "hub"
    shutil.copytree(packaged["hub-imagenet-1k"], hub)
    for shard in (hub / "data").glob("train_images_*.tar.gz"):
        with tarfile.open(packaged["hub-imagenet-1k"] / "data" / shard.name) as full, \
                tarfile.open(shard, "w:gz") as part:
            for m in full.getmembers():
                if not Path(m.name).stem.endswith(f"_{wnid}"):
                    part.addfile(m, full.extractfile(m))
    for folder, listed_in in ((org, archive_layouts.DEVKIT), (hub, archive_layouts.HUB_CLASSES)):
        *_, warnings = archives.list_splits(archives.detect(folder))
        assert any(w.startswith(f"1 classes of {listed_in} have no train images") and w.endswith(f"e.g. {wnid}")
                   for w in warnings), (folder, warnings)


EMPTY_TAR = b"\0" * 1024  # a tar with no members: its two zero end-of-archive blocks


def test_kaggles_zip_with_its_loc_files_unzipped_beside_it_is_read_as_the_zip(packaged, tmp_path):
    folder = tmp_path / "download"
    folder.mkdir()
    shutil.copy(packaged["kaggle-zip"], folder / "imagenet-object-localization-challenge.zip")
    with __import__("zipfile").ZipFile(packaged["kaggle-zip"]) as zf:  # unzip -j of the small files, as users do
        for name in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION):
            (folder / name).write_bytes(zf.read(next(n for n in zf.namelist() if n.endswith(name))))
    found = archives.detect(folder)
    assert found is not None and found.packaging == archive_layouts.KAGGLE_ZIP


def test_a_zip_with_members_it_cannot_decode_is_refused_before_any_work(packaged, tmp_path):
    """A re-zipped set (7-Zip's bzip2, Explorer's Deflate64 past 2 GB): refused at the listing, not skipped image by
    image at decoding."""
    import zipfile
    rezipped = tmp_path / "download" / "imagenet-object-localization-challenge.zip"
    rezipped.parent.mkdir()
    with zipfile.ZipFile(packaged["kaggle-zip"]) as src, zipfile.ZipFile(rezipped, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_BZIP2 if info.filename.endswith(".JPEG") else info.compress_type
            dst.writestr(info.filename, src.read(info), compress_type=method)
    jpegs = sum(n.endswith(".JPEG") for n in zipfile.ZipFile(rezipped).namelist())
    with pytest.raises(SystemExit) as e:
        run(rezipped.parent, tmp_path / "out")
    assert str(e.value.code).startswith(f"error: {rezipped}: {jpegs} members compressed with zip method 12 (e.g. ")
    assert "unzip it and give that folder as --data_dir" in str(e.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["deflate64", "encrypted"])
def test_a_zip_whose_every_member_would_not_decode_is_refused_in_one_line(packaged, tmp_path, how):
    """A whole re-zip (Explorer's Deflate64, zip -e): the LOC files too, which zipfile read first (a traceback), and
    the older release's tar.gz inside the zip."""
    import struct
    import zipfile
    for packaging in ("kaggle-zip", "kaggle-zip-of-tgz"):
        rezipped = tmp_path / packaging / "imagenet-object-localization-challenge.zip"
        rezipped.parent.mkdir()
        with zipfile.ZipFile(packaged[packaging]) as src, zipfile.ZipFile(rezipped, "w") as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_STORED)
        data = bytearray(rezipped.read_bytes())
        # each local header (PK 3 4: flags at +6, method at +8) and central directory entry (PK 1 2: +8, +10)
        for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(signature)
            while at >= 0:
                field = at + (flags if how == "encrypted" else flags + 2)
                value = struct.unpack_from("<H", data, field)[0]
                struct.pack_into("<H", data, field, value | 1 if how == "encrypted" else 9)
                at = data.find(signature, at + 4)
        rezipped.write_bytes(bytes(data))
        with zipfile.ZipFile(rezipped) as zf:
            count = sum(not i.is_dir() for i in zf.infolist())
        message = error_of(rezipped.parent, tmp_path / f"out-{packaging}")
        what = "encrypted" if how == "encrypted" else "compressed with zip method 9"
        assert message.startswith(f"error: {rezipped}: {count} members {what} (e.g. "), message
        assert "unzip it and give that folder as --data_dir" in message


def test_a_zip_whose_small_files_are_bzip2_is_read(packaged, tmp_path):
    """zipfile decodes bzip2, and reads the LOC files; only images and XML files go through the member reader."""
    import zipfile
    rezipped = tmp_path / "download" / "imagenet-object-localization-challenge.zip"
    rezipped.parent.mkdir()
    with zipfile.ZipFile(packaged["kaggle-zip"]) as src, zipfile.ZipFile(rezipped, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_BZIP2 if info.filename.endswith((".csv", ".txt")) else info.compress_type
            dst.writestr(info.filename, src.read(info), compress_type=method)
    assert listed(rezipped.parent) == listed(packaged["kaggle-zip"])


def test_verify_archives_checks_the_published_md5s(packaged, ilsvrc_tree, tmp_path, monkeypatch, capsys):
    folder = packaged["image-net.org"]
    sums = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in archives.PUBLISHED_MD5}
    monkeypatch.setattr(archives, "PUBLISHED_MD5", sums)
    run(folder, tmp_path / "ok", "--verify_archives")
    said = capsys.readouterr().out
    assert said.count("MD5 ok") == 3 and "ILSVRC2012_bbox_val_v3.tgz: no published checksum" in said
    monkeypatch.setattr(archives, "PUBLISHED_MD5", {**sums, "ILSVRC2012_img_val.tar": "0" * 32})
    message = error_of(folder, tmp_path / "bad", "--verify_archives")
    assert "ILSVRC2012_img_val.tar: MD5" in message and "published 000" in message
    run(ilsvrc_tree, tmp_path / "tree", "--verify_archives")  # an unpacked tree: said, not silently ignored
    assert (f"note: --verify_archives: {ilsvrc_tree} holds no archives (a folder of image files): nothing to verify"
            in capsys.readouterr().out)


# random access; a tar.gz streamed through the spool; Kaggle's tar.gz with its LOC files read beside it; Parquet rows
# by (file, row group, row)
@pytest.mark.parametrize("packaging", ["hub-imagenet-1k", "hub-imagenet-1k-parquet"])
def test_the_spool_refuses_in_one_line_when_its_disk_lacks_the_room(packaging, packaged, tmp_path, monkeypatch):
    """The spool of shuffled rows grows towards the whole split (about 140 GB of ImageNet's train): checked before
    the first byte is written, against what the listing says the images take."""
    listing = preprocess.list_splits(Path(packaged[packaging]), None, 0)
    shards = preprocess.plan_shards(Path(packaged[packaging]), listing.splits, tmp_path / "work", 5)
    streamed = [s for s in shards if archives._spooled_read(s)]
    need = archives.spool_bytes(streamed)
    ready = list(archives.spool(shards, tmp_path / "spool", 100))
    spooled = sum(sum(loc[2] for loc in s.source["members"].values() if loc[0] == 0) for s in ready
                  if s.source and s.source.get("spool"))
    assert streamed and 0.8 * spooled <= need <= 1.2 * spooled
    monkeypatch.setattr(archives.checkpoints, "free_bytes", lambda folder: need - 1)
    with pytest.raises(SystemExit) as e:  # a fresh spool: the one above is kept and would need nothing more
        archives.spool(shards, tmp_path / "fresh", 100)
    assert archives.spool_peak(streamed, 100) == need  # 100 shards in flight: every one may be held at once
    assert str(e.value) == (f"error: the spool in {tmp_path / 'fresh'} needs about {need / 1e6:.1f} MB more at its "
                            "peak (the images of the shards read from compressed or shuffled archives, each held "
                            f"until its shard is done), {(need - 1) / 1e6:.1f} MB free: free space or give "
                            "--output_dir on a larger disk")


def spool_peak_of(folder: Path, shard_size: int, in_flight: int, tmp_path: Path) -> tuple[int, int]:
    """(what the spool of preprocess.py --shard_size on ``folder`` holds at most at once, by spool_peak; in all)."""
    listing = preprocess.list_splits(folder, None, 0)
    streamed = [s for s in preprocess.plan_shards(folder, listing.splits, tmp_path / "plan", shard_size)
                if archives._spooled_read(s)]
    return archives.spool_peak(streamed, in_flight), archives.spool_bytes(streamed)


def one_scattered_shard(tree: Path, dest: Path, shard_size: int, pad: int) -> Path:
    """The Hub's Parquet layout with its train split in one file whose row groups each hold 7 rows in the listing's
    order (shards read in place) and 1 row of train shard 0, padded by ``pad`` bytes: shard 0 is spooled, and its
    rows are the large ones of their groups, far above a group's average."""
    folder = demo_archives.hub_parquet(tree, dest)
    files = sorted((folder / "data").glob("train-*.parquet"))
    table = pa.concat_tables(pq.read_table(p) for p in files)
    rows = sorted(table.to_pylist(), key=lambda row: listed_path(row["image"]["path"]))
    first, rest = rows[:shard_size], rows[shard_size:]
    assert len(rest) == 7 * shard_size
    for row in first:
        row["image"]["bytes"] += b"\0" * pad  # after the JPEG's end: decoders stop before it
    ordered = [row for k in range(shard_size) for row in [*rest[7 * k:7 * k + 7], first[k]]]
    for p in files:
        p.unlink()
    pq.write_table(pa.Table.from_pylist(ordered, schema=table.schema), folder / "data" / "train-00000-of-00001.parquet",
                   row_group_size=8)
    return folder


def listed_path(name: str) -> str:
    """A train row's path in the listing: <wnid>/<image id><ext>."""
    image_id, ext, wnid = archive_layouts.hub_image_id(name)
    return f"{wnid}/{image_id}{ext}"


def watch_spool(monkeypatch, work: Path) -> list:
    """The bytes of the spool and index files in ``work`` before and after each member the spool copies, and as each
    shard's files are complete."""
    real, held = archives._members_of, []

    def on_disk() -> int:
        total = 0
        for p in work.rglob("spool/*"):
            try:
                total += p.stat().st_size if p.suffix in (".bin", ".idx") else 0
            except FileNotFoundError:  # its shard done meanwhile: a worker deleted it
                pass
        return total

    def members_of(path, wanted):
        for member in real(path, wanted):
            held.append(on_disk())
            yield member
            held.append(on_disk())  # the member written

    def spooled(*args):  # a shard's last member written, before a worker may delete its files
        held.append(on_disk())
        return real_spooled(*args)
    real_spooled = archives._spooled
    monkeypatch.setattr(archives, "_members_of", members_of)
    monkeypatch.setattr(archives, "_spooled", spooled)
    return held


def test_the_spool_asks_for_its_peak_a_few_shards_when_sorted_the_split_when_shuffled(tmp_path, monkeypatch):
    """Kaggle's older tar.gz holds each class folder's files together, so the spool holds a few shards at once, not
    the split (about 160 GB of ImageNet's): a disk with room for that peak, not for the split, runs; a shuffled
    Parquet train split grows the spool towards its whole size and is refused in one line before any image is read,
    its amounts in units that read (not "0.0 GB")."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=3, train_per_class=40, val_per_class=2, num_test=4)
    sorted_tgz = demo_archives.kaggle_unzipped_tgz(tree, tmp_path / "tgz")
    peak, total = spool_peak_of(sorted_tgz, 2, 4, tmp_path)  # --num_proc 2: 4 shards in flight
    assert 0 < peak < total / 3
    free = {"bytes": peak}
    monkeypatch.setattr(archives.checkpoints, "free_bytes", lambda folder: free["bytes"])
    held = watch_spool(monkeypatch, tmp_path / "out.tmp")
    run(sorted_tgz, tmp_path / "out", "--num_proc", "2", "--shard_size", "2", "--shorter_side", "64")
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].num_rows == 120
    assert 0 < max(held) <= peak, (max(held), peak)  # what the check asked for covered what the spool held

    shuffled = demo_archives.hub_parquet(tree, tmp_path / "parquet")
    peak, total = spool_peak_of(shuffled, 10, 2, tmp_path)  # --num_proc 1: 2 in flight
    assert 0.75 * total < peak <= total
    free["bytes"] = peak - 1
    with pytest.raises(SystemExit) as e:
        run(shuffled, tmp_path / "refused", "--shard_size", "10", "--shorter_side", "64")
    message = str(e.value.code)
    assert message.startswith(f"error: the spool in {tmp_path / 'refused.tmp'}") and "\n" not in message
    assert f"needs about {peak / 1e6:.1f} MB more at its peak" in message
    assert f"{(peak - 1) / 1e6:.1f} MB free: free space or give --output_dir on a larger disk" in message
    assert not list((tmp_path / "refused.tmp").rglob("*.arrow"))


def test_the_spools_peak_bounds_parquet_rows_larger_than_their_groups_average(tmp_path, monkeypatch):
    """A Parquet row's size is not known before it is read: a spooled shard whose rows are the large ones of row
    groups it shares with shards read in place would hold several times its groups' average. The free-space check
    asks for a bound, so what the spool held never exceeds it."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=20, val_per_class=2, num_test=4)
    folder = one_scattered_shard(tree, tmp_path / "parquet", 5, 400_000)
    listing = preprocess.list_splits(folder, None, 0)
    shards = preprocess.plan_shards(folder, listing.splits, tmp_path / "plan", 5)
    assert [(s.split, s.index) for s in shards if archives._spooled_read(s)] == [("train", 0)]
    peak, total = spool_peak_of(folder, 5, 2, tmp_path)  # --num_proc 1: 2 in flight
    held = watch_spool(monkeypatch, tmp_path / "out.tmp")
    run(folder, tmp_path / "out", "--shorter_side", "64")
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].num_rows == 40
    assert 5 * 400_000 < max(held) <= peak <= total, (max(held), peak, total)


def test_the_spools_peak_counts_its_index_files(packaged, tmp_path):
    """Each spooled member has a line in its shard's .idx file beside the spool file (about 100 bytes: 100 MB for
    ImageNet's shuffled train split): the need asked for covers both."""
    folder = packaged["hub-imagenet-1k"]
    listing = preprocess.list_splits(folder, None, 0)
    shards = preprocess.plan_shards(folder, listing.splits, tmp_path / "plan", 5)
    streamed = [s for s in shards if archives._spooled_read(s)]
    need = archives.spool_peak(streamed, 100)  # every shard may be held at once: none is released below
    assert archives.spool_bytes(streamed) == need
    ready = list(archives.spool(shards, tmp_path / "spool", 100))
    files = list((tmp_path / "spool").glob("*.idx"))
    assert len(files) == len(streamed) and all(s.source["members"] for s in ready)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "spool").iterdir() if p.suffix in (".bin", ".idx"))
    assert on_disk <= need < on_disk + 20 * sum(len(s.source["members"]) for s in streamed), (on_disk, need)


def spooled_rows_of(path: Path, rows) -> list:
    """One spooled shard holding ``rows`` of row group 0 of the Parquet file at ``path`` (the rest read in place)."""
    group = pq.ParquetFile(path).metadata.row_group(0).num_rows
    members = {f"train/{row}.JPEG": (0, (0, row), group, archives.PARQUET, None) for row in rows}
    return [types.SimpleNamespace(source={"archives": [str(path)], "members": members})]


@pytest.mark.parametrize("dictionary", [False, True])
def test_the_spools_peak_reads_the_sizes_of_a_dictionary_typed_image_column(dictionary, tmp_path):
    """A dictionary<binary> image column (a valid layout, read end to end) has its rows' sizes read as a binary one's:
    pyarrow's binary_length does not take it, and the rows once counted 0 bytes in the free-space check."""
    images = pa.array([b"a" * 1000, b"b" * 5000, b"c" * 1000, None, b"d" * 300], pa.binary())
    column = images.dictionary_encode() if dictionary else images
    table = pa.table({"image": pa.StructArray.from_arrays([column], ["bytes"]), "label": pa.array(range(5))})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet", row_group_size=5)
    streamed = spooled_rows_of(tmp_path / "train-00000-of-00001.parquet", [0, 1])
    assert 6000 < archives.spool_peak(streamed, 2) < 6200  # rows 0 and 1, and their index lines


def test_the_spools_peak_counts_a_row_group_whole_when_its_sizes_do_not_read(tmp_path, monkeypatch):
    """Where the rows' sizes cannot be read, their row group's image column counts whole: never 0 bytes."""
    images = pa.array([b"a" * 1000, b"b" * 5000, b"c" * 1000, None, b"d" * 300], pa.binary())
    pq.write_table(pa.table({"image": pa.StructArray.from_arrays([images], ["bytes"])}), tmp_path / "t.parquet",
                   row_group_size=5, compression="none")

    def unreadable(*_):
        raise pa.ArrowNotImplementedError("no kernel for this type")
    monkeypatch.setattr(archives, "_image_sizes", unreadable)
    assert archives.spool_peak(spooled_rows_of(tmp_path / "t.parquet", [0, 1]), 2) > 7300  # all 7300 bytes


@pytest.mark.parametrize("packaging", ["kaggle_zip", "hub", "kaggle_unzipped_tgz", "hub_parquet"])
def test_sigkilled_run_from_archives_resumes_and_gives_the_same_dataset(packaging, tmp_path):
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=3, train_per_class=30, val_per_class=2, num_test=4)
    zipped = getattr(demo_archives, packaging)(tree, tmp_path / {"kaggle_zip": "kaggle.zip"}.get(packaging, "set"))
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(zipped), "--output_dir", str(out),
            "--num_proc", "1", "--shard_size", "2", "--shorter_side", "64"]
    kill_after_shards(args, work, 4)
    done = {f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns for p in work.glob("*/*.arrow")}  # streamed: test first
    assert 4 <= len(done) < 45, "the kill must land mid-run"
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} of 50 shards already done" in rerun.stdout
    assert all((out / n).stat().st_mtime_ns == t for n, t in done.items()), "finished shards redone"
    run(zipped, tmp_path / "fresh", "--shard_size", "2", "--shorter_side", "64")
    resumed, uninterrupted = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(tmp_path / "fresh"))
    assert list(resumed) == list(uninterrupted) == ["train", "validation", "test"]
    for split in uninterrupted:
        assert resumed[split].data.table.equals(uninterrupted[split].data.table), split


def test_unzipped_older_kaggle_release_is_found_and_refused_in_one_line_when_cut(packaged, tmp_path):
    folder = packaged["kaggle-tar-gz"]
    tgz = folder / archive_layouts.KAGGLE_TGZ_NAME
    assert archives.detect(folder).packaging == archives.detect(tgz).packaging == "kaggle-tar-gz"
    assert archives.detect(tgz).root == str(folder)  # the tar.gz named: the LOC files are looked for beside it
    extracted = copy_set(folder, tmp_path / "extracted")
    (extracted / "ILSVRC").mkdir()  # the tar.gz unpacked too: the tree is read, as files
    assert archives.detect(extracted) is None

    cut = copy_set(folder, tmp_path / "cut")
    (cut / tgz.name).unlink()
    (cut / tgz.name).write_bytes(tgz.read_bytes()[:tgz.stat().st_size * 2 // 3])
    message = error_of(cut, tmp_path / "a")
    assert f"{tgz.name}: not a complete archive" in message and "download it again" in message

    # the tar cut before its last member (a val image), then compressed whole: tarfile alone reads that as a
    # complete archive with one image fewer
    with tarfile.open(tgz) as tar:
        at = tar.getmembers()[-1].offset
    short = copy_set(folder, tmp_path / "short")
    (short / tgz.name).unlink()
    (short / tgz.name).write_bytes(gzip.compress(gzip.decompress(tgz.read_bytes())[:at]))
    message = error_of(short, tmp_path / "b")
    assert f"{tgz.name}: truncated" in message and "download it again" in message


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-tar-gz"])
def test_a_kaggle_archive_with_an_undecodable_xml_and_a_readme_alone_in_test(packaging, tmp_path):
    """As from the tree: an XML declaring an encoding expat cannot use is one unreadable annotation (its image kept,
    without boxes), and test/ holding only a README.txt gives no test split."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=3, val_per_class=2, num_test=2)
    xml = sorted((tree / ilsvrc.ANNOTATION_DIRS["train"]).glob("n*/*.xml"))[0]
    xml.write_bytes(b'<?xml version="1.0" encoding="ISO-8859-1x"?>\n' + xml.read_bytes())
    test_dir = tree / ilsvrc.SPLIT_DIRS["test"]
    shutil.rmtree(test_dir)
    test_dir.mkdir()
    (test_dir / "README.txt").write_text("test images deleted to save 13 GB")
    data_dir = (demo_archives.kaggle_zip(tree, tmp_path / "kaggle.zip") if packaging == "kaggle-zip" else
                demo_archives.kaggle_unzipped_tgz(tree, tmp_path / "kaggle-2019"))
    out = run(data_dir, tmp_path / "out")
    report = json.loads((out / "preprocess_report.json").read_text())
    assert any("non-image files in the test folder of" in w and "README.txt" in w for w in report["warnings"])
    # the zip's XML is read with its image; the tar.gz's while listing, an unreadable one a warning then
    unread = report["annotation_errors"] + [w for w in report["warnings"] if "XML files" in w]
    assert len(unread) == 1 and unread[0].endswith(f"/{xml.relative_to(tree)}: not valid XML (unknown encoding: "
                                                   "ISO-8859-1x)")
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "validation"}
    assert dd["train"].filter(lambda r: r["image_id"] == xml.stem)[0]["objects"] == []


def test_a_box_archive_with_an_undecodable_xml_keeps_the_others(tmp_path):
    good = b"<annotation><object><name>n01440764</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax>" \
           b"<ymax>4</ymax></bndbox></object></annotation>"
    path = tmp_path / "ILSVRC2012_bbox_train_v2.tar.gz"
    path.write_bytes(demo_archives._tar_bytes([("n01440764/a.xml", good), (
        "n01440764/b.xml", b'<?xml version="1.0" encoding="ISO-8859-1x"?>\n' + good)], "w:gz"))
    boxes, errors = archive_layouts.read_box_archive(str(path))
    assert boxes == {"a": [("n01440764", 1.0, 2.0, 3.0, 4.0)]}
    assert errors == [f"{path}/n01440764/b.xml: not valid XML (unknown encoding: ISO-8859-1x)"]


def test_a_box_archive_with_a_damaged_member_header_is_one_line_not_fewer_boxes(tmp_path):
    """tarfile ends its listing at a member header that does not read, without a word, which would lose the boxes
    of every file after it. The archive is refused in one line, as a damaged image archive is."""
    xml = b"<annotation><object><name>n01440764</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax>" \
          b"<ymax>4</ymax></bndbox></object></annotation>"
    tar = bytearray(demo_archives._tar_bytes([(f"n01440764/{i}.xml", xml) for i in "abc"], "w"))
    tar[1024:1034] = b"garbage!!!"  # the second member's header: each XML fits one 512-byte block after its own
    path = tmp_path / "ILSVRC2012_bbox_train_v2.tar.gz"
    path.write_bytes(gzip.compress(bytes(tar)))
    with pytest.raises(ValueError) as e:
        archive_layouts.read_box_archive(str(path))
    assert str(e.value).startswith(f"{path}: damaged, the tar in it: the member header at byte 1024 does not read")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("gone", [[ilsvrc.VAL_SOLUTION], [ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION]])
def test_unzipped_older_kaggle_release_names_the_loc_file_to_put_beside_it(gone, packaged, tmp_path):
    folder = copy_set(packaged["kaggle-tar-gz"], tmp_path / "set")
    for name in gone:
        (folder / name).unlink()
    message = error_of(folder, tmp_path / "out")  # the tree refuses a missing LOC file too: no labels from XML
    assert f"no {' or '.join(gone)} beside {archive_layouts.KAGGLE_TGZ_NAME}" in message
    assert f"unzip imagenet-object-localization-challenge.zip {' '.join(gone)}" in message



# preprocess.py with archives._members_of counting the archives it reads (a line each in $READS) and, given $KILL_AT
# ("call:member"), SIGKILLing its own process before that member of that archive read: mid-spool, as a kill lands
COUNTED_RUN = """
import os, signal, sys
import preprocess
from imagenet_trainer import archives
real, calls = archives._members_of, []
kill_call, kill_member = map(int, os.environ.get("KILL_AT", "0:0").split(":"))
def members_of(path, wanted):
    calls.append(path)
    with open(os.environ["READS"], "a") as f:
        f.write(path + "\\n")
    for k, member in enumerate(real(path, wanted)):
        if (len(calls), k) == (kill_call, kill_member):
            os.kill(os.getpid(), signal.SIGKILL)
        yield member
archives._members_of = members_of
preprocess.main(sys.argv[1:])
"""


# hub: killed before the first member of train_images_1, the last shard of train_images_0 still waiting for its
# second image there; hub_parquet: killed after 3 rows of the second train file, no train shard complete yet (shards
# of 10 rows: 2 would lie in at most 2 row groups of 4 rows and be read in place)
@pytest.mark.parametrize("packaging, shard_size, shards, kill_at", [("hub", 2, 50, "3:0"),
                                                                    ("hub_parquet", 10, 11, "2:3")])
def test_sigkilled_spool_resumes_without_reading_its_spooled_archives_again(packaging, shard_size, shards, kill_at,
                                                                            tmp_path):
    """ImageNet's shuffled train split is about 140 GB of spool before its first shard completes: a kill must not
    cost that read again. The archives spooled whole are kept; the one cut off is read again from its start."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=3, train_per_class=30, val_per_class=2, num_test=4)
    folder = getattr(demo_archives, packaging)(tree, tmp_path / "set")
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = ["--data_dir", str(folder), "--output_dir", str(out), "--num_proc", "1", "--shard_size", str(shard_size),
            "--shorter_side", "64"]
    env = {**os.environ, "READS": str(tmp_path / "killed"), "KILL_AT": kill_at}
    killed = subprocess.run([sys.executable, "-c", COUNTED_RUN, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    assert killed.returncode == -9, killed.stderr
    *spooled, cut = (tmp_path / "killed").read_text().splitlines()
    done = {f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns for p in work.glob("*/*.arrow")}

    env = {**os.environ, "READS": str(tmp_path / "rerun")}
    rerun = subprocess.run([sys.executable, "-c", COUNTED_RUN, *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=env)
    assert rerun.returncode == 0, rerun.stderr
    reads = (tmp_path / "rerun").read_text().splitlines()
    assert reads[0] == cut and not set(spooled) & set(reads), reads
    assert f"resuming the spool a killed run left, {len(spooled)} of " in rerun.stdout
    assert f"{len(done)} of {shards} shards already done" in rerun.stdout or not done
    assert all((out / n).stat().st_mtime_ns == t for n, t in done.items()), "finished shards redone"
    run(folder, tmp_path / "fresh", "--shard_size", str(shard_size), "--shorter_side", "64")
    resumed, uninterrupted = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(tmp_path / "fresh"))
    assert list(resumed) == list(uninterrupted) == ["train", "validation", "test"]
    for split in uninterrupted:
        assert resumed[split].data.table.equals(uninterrupted[split].data.table), split


def assert_same_dataset(out: Path, reference: Path) -> None:
    mine, theirs = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(reference))
    assert list(mine) == list(theirs) == ["train", "validation", "test"]
    for split in theirs:
        assert mine[split].data.table.equals(theirs[split].data.table), split


def ended(proc: subprocess.Popen, seconds: float = 60) -> str:
    """The stderr of ``proc`` once it has ended; a failure, its process group killed, if it is still running after
    ``seconds``."""
    try:
        return proc.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running {seconds} s later")


# SIGTERM to the run (a batch system's stop), Ctrl-C (SIGINT to the terminal's process group, workers included)
@pytest.mark.parametrize("packaging, stop", [("kaggle_unzipped_tgz", "SIGTERM"), ("hub", "SIGINT")])
def test_a_stop_or_a_workers_error_mid_spool_ends_the_run_and_a_rerun_resumes(packaging, stop, tmp_path):
    """With --num_proc 2 the spool is read by the pool's feeder thread, which waits while 2 x num_proc shards are
    spooled for the workers; the pool's end joins it after ending the workers. A stop or a worker's error must
    still end the run, the stop in its one line (no traceback per worker) with the lock released; the reruns give
    the uninterrupted run's dataset."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=3, train_per_class=30, val_per_class=2, num_test=4)
    folder = getattr(demo_archives, packaging)(tree, tmp_path / "set")
    out, work = tmp_path / "out", tmp_path / "out.tmp"
    args = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(folder), "--output_dir", str(out),
            "--num_proc", "2", "--shard_size", "2", "--shorter_side", "64"]

    def start():  # its own process group, with Ctrl-C's default action even where this one ignores it
        return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    proc = start()
    # the workers at work (a SIGINT before their interpreter is up ends them without a word, fixed or not) and the
    # spool full of shards for them
    while (len(list(work.glob("*/*.arrow"))) < 2 or len(list((work / preprocess.WORK / "spool").glob("*.bin"))) < 4
           ) and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the signal must land mid-run"
    if stop == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    err = ended(proc)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"interrupted: finished shards are kept in {work}; run the same command to resume"
    assert not (tmp_path / "out.lock").exists() and not out.exists()

    shards = preprocess.plan_shards(folder, preprocess.list_splits(folder, None, 0).splits, work, 2)
    blocked = [Path(s.path + ".tmp") for s in shards if not os.path.exists(s.path)]
    for path in blocked:  # where each worker writes its shard: a folder, so every worker raises at once
        path.unlink(missing_ok=True)  # a shard the stop cut short
        path.mkdir()
    proc = start()
    err = ended(proc)
    assert proc.returncode == 1 and ".arrow.tmp is a directory" in err, err
    for path in blocked:
        path.rmdir()

    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    run(folder, tmp_path / "fresh", "--shard_size", "2", "--shorter_side", "64")
    assert_same_dataset(out, tmp_path / "fresh")


def test_a_spool_that_does_not_match_its_progress_record_is_discarded_in_one_line(packaged, tmp_path, monkeypatch,
                                                                                   capsys):
    folder = Path(packaged["hub-imagenet-1k-parquet"])
    listing = preprocess.list_splits(folder, None, 0)
    shards = preprocess.plan_shards(folder, listing.splits, tmp_path / "work", 5)
    spool = tmp_path / "spool"

    def spooled():
        ready = [s for s in archives.spool(shards, spool, 100) if s.source and s.source.get("spool")]
        return sorted((s.split, s.index, s.source) for s in ready)

    first = spooled()  # not released: as a run killed before its workers got to them leaves them
    assert first and capsys.readouterr().out == ""
    real = archives._members_of
    monkeypatch.setattr(archives, "_members_of", lambda path, wanted: pytest.fail(f"{path} read again"))
    assert spooled() == first
    assert f"{spool}: resuming the spool a killed run left, 2 of 2 archives already read" in capsys.readouterr().out

    cut = Path(first[0][2]["archives"][0])
    size = cut.stat().st_size
    cut.write_bytes(cut.read_bytes()[:-1])  # a file shorter than recorded: the record is not to be trusted
    monkeypatch.setattr(archives, "_members_of", real)
    assert spooled() == first
    assert capsys.readouterr().out.splitlines() == [
        f"{spool}: the spool a killed run left is discarded ({cut.name} holds {size - 1} bytes, {size} recorded); its "
        "archives are read again"]


def listed(folder: Path) -> tuple:
    """A set's listing less where the bytes lie: (wnids, descriptions, {split: (items, CSV boxes)}, warnings, the
    folder's path taken out of them), to compare two sets holding the same images."""
    wnids, descriptions, splits, warnings = archives.list_splits(archives.detect(folder))
    return (wnids, descriptions, {split: (s.items, s.csv_boxes) for split, s in splits.items()},
            [w.replace(str(folder), "<set>") for w in warnings])


def test_a_parquet_set_missing_a_file_or_mixing_two_sets_is_refused_naming_it(packaged, tmp_path):
    """An interrupted `hf download` leaves part of a split: refused before any work, the missing file named."""
    full = packaged["hub-imagenet-1k-parquet"] / "data"

    def partial(name: str, files: dict) -> Path:  # files: {name in data/: the file of the full set it is}
        folder = copy_set(full.parent, tmp_path / name)
        (folder / "data").unlink()
        (folder / "data").mkdir()
        for link, target in files.items():
            (folder / "data" / link).symlink_to(full / target)
        return folder

    kept = {n: n for n in ("train-00000-of-00002.parquet", "validation-00000-of-00001.parquet",
                           "test-00000-of-00001.parquet")}
    missing = partial("missing", kept)
    assert error_of(missing, tmp_path / "a") == (f"error: {missing}: data/train-00001-of-00002.parquet is missing "
                                                 "(the set has 2 train files); download it")
    mixed = partial("mixed", {**kept, "train-00001-of-00003.parquet": "train-00001-of-00002.parquet"})
    assert error_of(mixed, tmp_path / "b") == (f"error: {mixed}: data/train-*.parquet are of sets of 2 and 3 files "
                                               "(two downloads mixed); keep one set, downloading it whole")


def patched(files: list) -> list:
    """A tar appended to (``tar -r``, a patch appended): one image stored twice, garbage first, its image last,
    the copy ``tar x`` leaves."""
    name, image = next((n, d) for n, d in files if "ILSVRC2012_val_00000003" in n and n.endswith(".JPEG"))
    return [(n, b"not this one" if n == name else d) for n, d in files] + [(name, image)]


# a compressed tar read through the spool (Kaggle's older tar.gz, the Hub's val tar.gz); an uncompressed one read in
# place (image-net.org's val tar)
@pytest.mark.parametrize("packaging, tar", [("kaggle-tar-gz", archive_layouts.KAGGLE_TGZ_NAME),
                                            ("hub-imagenet-1k", "data/val_images.tar.gz"),
                                            ("image-net.org", archive_layouts.VAL_TAR)])
def test_a_member_stored_twice_gives_the_image_tar_x_leaves(packaging, tar, packaged, preprocessed, tmp_path):
    """Of a name stored twice only the last copy is listed and spooled, so the other images of its shard come
    through whole (counting both copies would hand the shard over one image short) and the output is the tree's."""
    folder = tmp_path / "set"
    shutil.copytree(packaged[packaging], folder, symlinks=True)
    demo_archives.rewrite_tar(packaged[packaging] / tar, folder / tar, patched)
    out = run(folder, tmp_path / "out")
    mine, tree = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(preprocessed))
    assert list(mine) == list(tree)
    for split in tree:
        columns = ["image", "label", "image_id"] + ([] if packaging.startswith("hub-") else ["objects"])
        assert mine[split].select_columns(columns).data.table.equals(tree[split].select_columns(columns).data.table)
    assert skipped(out) == skipped(preprocessed)


def test_kaggles_zip_with_image_net_orgs_devkit_beside_it_is_read_as_the_zip(packaged, tmp_path):
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "imagenet-object-localization-challenge.zip").symlink_to(packaged["kaggle-zip"])
    (folder / archive_layouts.DEVKIT).symlink_to(packaged["image-net.org"] / archive_layouts.DEVKIT)
    assert archives.detect(folder).packaging == archive_layouts.KAGGLE_ZIP
    # with one of image-net.org's image tars there, its set (missing the other tar, which its lister names)
    (folder / archive_layouts.VAL_TAR).symlink_to(packaged["image-net.org"] / archive_layouts.VAL_TAR)
    assert archives.detect(folder).packaging == archive_layouts.IMAGENET_ORG


@pytest.mark.parametrize("kind,packaging", [("webdataset", archive_layouts.WEBDATASET),
                                             ("hub-imagenet-1k-parquet", archive_layouts.HUB_PARQUET),
                                             ("hub-imagenet-1k", archive_layouts.HUB)])
def test_other_sets_with_image_net_orgs_devkit_beside_them_are_read_as_themselves(kind, packaging, packaged,
                                                                                   tmp_path):
    """A devkit (or the test tar) kept beside WebDataset shards or the Hub's files is not image-net.org's set
    missing its image tars: the folder must not be refused for the 138 GB train tar it does not need."""
    folder = tmp_path / "download"
    folder.mkdir()
    for entry in packaged[kind].iterdir():
        (folder / entry.name).symlink_to(entry)
    (folder / archive_layouts.DEVKIT).symlink_to(packaged["image-net.org"] / archive_layouts.DEVKIT)
    assert archives.detect(folder).packaging == packaging
    # the devkit alone: image-net.org's set, whose lister names the tars it lacks
    alone = tmp_path / "devkit-only"
    alone.mkdir()
    (alone / archive_layouts.DEVKIT).symlink_to(packaged["image-net.org"] / archive_layouts.DEVKIT)
    assert archives.detect(alone).packaging == archive_layouts.IMAGENET_ORG


def test_the_hubs_older_snapshot_without_classes_py_names_it(packaged, tmp_path):
    hub = copy_set(packaged["hub-imagenet-1k"], tmp_path / "hub")
    (hub / archive_layouts.HUB_CLASSES).unlink()
    assert error_of(hub, tmp_path / "out") == (
        f"error: {hub}: the Hub's older ILSVRC/imagenet-1k snapshot (data/*.tar.gz) without its classes.py, the "
        f"class list; put it beside data/ (hf download ILSVRC/imagenet-1k classes.py --repo-type dataset "
        f"--local-dir {hub})")


def test_a_folder_of_archives_under_other_names_says_which_names_are_read(packaged, tmp_path):
    """Kaggle's zip renamed imagenet.zip in its folder is no layout: the one line names the file, what to pass and
    the archive names this reader recognises, not only the image trees it takes."""
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "imagenet.zip").symlink_to(packaged["kaggle-zip"])
    message = error_of(folder, tmp_path / "out")
    assert message.startswith(f"error: --data_dir {folder}: not a layout preprocess.py reads; it holds imagenet.zip, "
                              "under no archive name this reader recognises")
    assert f"pass the zip itself: --data_dir {folder / 'imagenet.zip'}" in message
    assert archive_layouts.RECOGNISED in message
    for name in (archive_layouts.KAGGLE_TGZ_NAME, archive_layouts.TRAIN_TAR, archive_layouts.DEVKIT, "parquet"):
        assert name in message
    assert archives.detect(folder / "imagenet.zip").packaging == "kaggle-zip"  # what it says to pass is read


def test_kaggles_zip_downloaded_twice_or_named_in_capitals_is_named_as_kaggles(packaged, tmp_path):
    """A second download kept beside the first ("... (1).zip") is two of Kaggle's zips, not archives under names
    this reader does not recognise: the one line says to pass one. Its name in capitals (.ZIP) is read as Kaggle's
    zip; a file of the Hub's snapshot out of its place is named as a recognised one missing its set."""
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("imagenet-object-localization-challenge.zip", "imagenet-object-localization-challenge (1).zip"):
        (twice / name).symlink_to(packaged["kaggle-zip"])
    assert error_of(twice, tmp_path / "out") == (
        f"error: {twice}: 2 of Kaggle's zips, imagenet-object-localization-challenge (1).zip, "
        "imagenet-object-localization-challenge.zip; pass one, --data_dir "
        f"{twice / 'imagenet-object-localization-challenge.zip'}")

    capitals = tmp_path / "capitals"
    capitals.mkdir()
    (capitals / "imagenet-object-localization-challenge.ZIP").symlink_to(packaged["kaggle-zip"])
    assert archives.detect(capitals).packaging == "kaggle-zip"
    listed, zipped = (preprocess.list_splits(d, None, 0).splits for d in (capitals, packaged["kaggle-zip"]))
    assert {k: s.items for k, s in listed.items()} == {k: s.items for k, s in zipped.items()}

    loose = tmp_path / "loose"
    loose.mkdir()
    parquet = next((packaged["hub-imagenet-1k-parquet"] / "data").glob("train-*.parquet"))
    (loose / parquet.name).symlink_to(parquet)
    message = error_of(loose, tmp_path / "out")
    assert f"it holds {parquet.name}, named as this reader's archives are, but not in a layout it reads" in message
    assert "no archive name" not in message and archive_layouts.RECOGNISED in message


def test_a_tree_one_level_too_deep_beside_a_zip_names_the_trees_taken_and_the_zip(ilsvrc_tree, tmp_path):
    """A class tree one folder too deep with a stray zip beside it: the one line names the trees preprocess.py
    takes and the folder that holds none, as well as the zip, so that a non-ImageNet zip is not all it points to."""
    folder = tmp_path / "download"
    images = sorted((ilsvrc_tree / ilsvrc.SPLIT_DIRS["train"]).glob("*/*.JPEG"))[:2]
    for split in ("train", "val"):
        for image in images:
            (folder / "mydata" / split / image.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, folder / "mydata" / split / image.parent.name)
    with zipfile.ZipFile(folder / "photos.zip", "w") as zf:
        for image in images:
            zf.write(image, image.name)
    message = error_of(folder, tmp_path / "out")
    assert message.startswith(f"error: --data_dir {folder}: not a layout preprocess.py reads; it takes "
                              f"{image_tree.ACCEPTED} (its folders, mydata, hold no image files directly); it holds "
                              "photos.zip, under no archive name this reader recognises")


@pytest.mark.parametrize("packaging", ["hub-imagenet-1k-parquet", "hub-imagenet-1k"])
def test_the_data_folder_of_a_hub_snapshot_names_the_snapshot_to_pass(packaging, packaged, tmp_path):
    snapshot = tmp_path / "imagenet-1k"
    shutil.copytree(packaged[packaging], snapshot)
    message = error_of(snapshot / "data", tmp_path / "out")
    assert message == (f"error: --data_dir {snapshot / 'data'}: not a layout preprocess.py reads; it is the data/ "
                       "folder of a snapshot of the Hub's ILSVRC/imagenet-1k: pass the folder above it, --data_dir "
                       f"{snapshot}")
    assert archives.detect(snapshot).packaging == packaging


@pytest.mark.parametrize("packaging", ["hub-imagenet-1k-parquet", "hub-imagenet-1k"])
def test_a_file_of_a_hub_snapshot_names_the_snapshot_to_pass(packaging, packaged, tmp_path):
    """data/train-00000-of-00002.parquet or data/val_images.tar.gz given as --data_dir: the snapshot is read whole."""
    snapshot = tmp_path / "imagenet-1k"
    shutil.copytree(packaged[packaging], snapshot)
    one = min((snapshot / "data").iterdir())
    message = error_of(one, tmp_path / "out")
    assert message == (f"error: --data_dir {one}: a file of a snapshot of the Hub's ILSVRC/imagenet-1k, which is "
                       f"read whole: pass its folder, --data_dir {snapshot}")


def test_a_file_preprocess_does_not_read_names_what_it_recognises(tmp_path):
    """A file outside any set (a Parquet file not in a snapshot's data/, notes) ends with the archives it reads."""
    for name in ("train-00000-of-00001.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
        message = error_of(tmp_path / name, tmp_path / "out")
        assert message == (f"error: --data_dir {tmp_path / name}: a file preprocess.py does not read; it takes a "
                           f"folder of image files (an image tree) or of archives, or an archive: it recognises "
                           f"{archive_layouts.RECOGNISED}")


def test_webdataset_filenames_with_a_class_folder_give_the_same_listing(packaged, tmp_path):
    """Some derivative shards' json ``filename`` is n01440764/ILSVRC2012_val_...JPEG: its base name is the file
    name, so paths are the tree's (not wnid/wnid/file) and val rows stay in file-name order."""
    wnids = ilsvrc.imagenet_wnids()

    def with_folder(files):
        changed = []
        for name, data in files:
            if name.endswith(".json"):
                meta = json.loads(data)
                meta["filename"] = f"{wnids[meta['label']]}/{meta['filename']}"
                data = json.dumps(meta).encode()
            changed.append((name, data))
        return changed

    folder = copy_set(packaged["webdataset"], tmp_path / "wds")
    for shard in packaged["webdataset"].glob("*.tar"):
        demo_archives.rewrite_tar(shard, folder / shard.name, with_folder)
    assert listed(folder) == listed(packaged["webdataset"])


def apple_double(files: list) -> list:
    """The tar a Mac makes of the same files: each preceded by its AppleDouble ``._<name>`` (the file's metadata),
    a ``.DS_Store`` and a ``__MACOSX/`` copy of those as Finder's archives hold them."""
    def dot(name):
        return os.path.join(os.path.dirname(name), "._" + os.path.basename(name))

    mac = [(dot(n), b"\0\5\26\7\0\2\0\0Mac OS X") for n, _ in files]
    return [x for pair in zip(mac, files) for x in pair] + [(".DS_Store", b"\0\0\0\1Bud1"),
                                                            *(("__MACOSX/" + n, d) for n, d in mac)]


@pytest.mark.parametrize("packaging, tar", [("image-net.org", archive_layouts.VAL_TAR),
                                            ("hub-imagenet-1k", "data/val_images.tar.gz"),
                                            ("kaggle-tar-gz", archive_layouts.KAGGLE_TGZ_NAME),
                                            ("webdataset", "imagenet1k-validation-0000.tar")])
def test_macos_hidden_files_in_an_archive_are_left_out_as_the_tree_leaves_them(packaging, tar, packaged,
                                                                                tmp_path):
    """A set re-tarred on a Mac: the listing is the set's own, not a run stopped at ._ILSVRC2012_val_00000001.JPEG
    (no ground-truth line), nor extra rows, nor a warning per unreadable ._*.xml."""
    folder = tmp_path / "set"
    shutil.copytree(packaged[packaging], folder, symlinks=True)
    demo_archives.rewrite_tar(packaged[packaging] / tar, folder / tar, apple_double)
    beside = (folder / tar).with_name("._" + Path(tar).name)  # as macOS leaves one on a FAT or exFAT disk
    beside.write_bytes(b"\0\5\26\7")
    assert listed(folder) == listed(packaged[packaging])


def left_out(out: Path) -> list | None:
    return json.loads((out / "preprocess_report.json").read_text())["left_out"]


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-tar-gz"])
def test_kaggles_archives_report_each_member_left_out_as_the_tree_reports_it(packaging, tmp_path, monkeypatch):
    """preprocess_report.json's left_out, null when read from an archive, lists what the tree's lists, by the tree's
    paths: a file directly in train/, a folder among the images, non-image files in val/ and test/, a Mac's and
    Jupyter's hidden files; the same for any --num_proc and after a resume (the tar.gz's spool too)."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=3, val_per_class=2, num_test=2)
    train, val, test = (ilsvrc.SPLIT_DIRS[s] for s in ("train", "validation", "test"))
    wnid = sorted(os.listdir(tree / train))[0]
    image = sorted((tree / train / wnid).iterdir())[0]
    shutil.copy(image, tree / train / "loose_1.JPEG")
    (tree / train / wnid / "extra").mkdir()
    shutil.copy(image, tree / train / wnid / "extra" / "x_1.JPEG")
    (tree / val / "readme.txt").write_text("notes")
    (tree / test / "notes.md").write_text("notes")
    expected = sorted(plant_hidden(tree, [train, f"{train}/{wnid}", val, test], image) + [
        {"path": f"{train}/loose_1.JPEG", "reason": "outside the class folders: no folder names its label"},
        {"path": f"{train}/{wnid}/extra", "reason": "a folder among the images (images are read only as files "
                                                    "directly in train/<wnid>/, val/ or test/)"},
        {"path": f"{val}/readme.txt", "reason": f"no image file extension and no row in {ilsvrc.VAL_SOLUTION}"},
        {"path": f"{test}/notes.md", "reason": "no image file extension"}], key=lambda e: e["path"])
    data_dir = (demo_archives.kaggle_zip(tree, tmp_path / "kaggle.zip") if packaging == "kaggle-zip"
                else demo_archives.kaggle_unzipped_tgz(tree, tmp_path / "kaggle-2019"))
    assert left_out(run(tree, tmp_path / "tree")) == expected
    args = ["--data_dir", str(data_dir), "--shard_size", "2"]
    preprocess.main([*args, "--output_dir", str(tmp_path / "whole"), "--num_proc", "2"])
    stop_after_shards(monkeypatch, 2)
    with pytest.raises(SystemExit, match="run the same command to resume"):
        preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    monkeypatch.undo()
    preprocess.main([*args, "--output_dir", str(tmp_path / "resumed"), "--num_proc", "1"])
    assert left_out(tmp_path / "whole") == left_out(tmp_path / "resumed") == expected


def tar_bytes(files: list, links=(), mode: str = "w") -> bytes:
    """A tar of ``files`` [(name, bytes)] and symbolic ``links`` [(name, target)]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def write_tar(dest: Path, files: list, links=(), mode: str = "w") -> None:
    """``tar_bytes`` at ``dest``, in place of the link there (``copy_set``)."""
    dest.unlink(missing_ok=True)
    dest.write_bytes(tar_bytes(files, links, mode))


def tar_files(tar: Path | bytes) -> list:
    """[(name, bytes)] of the regular files of a tar file, or of a tar's bytes."""
    with tarfile.open(tar) if isinstance(tar, Path) else tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        return [(m.name, opened.extractfile(m).read()) for m in opened.getmembers() if m.isfile()]


def test_image_net_orgs_tars_report_each_member_left_out_by_its_archive_path(packaged, tmp_path, capsys):
    """Each member not read is named "<tar>/<member>", as the report's skipped files are, with its reason: hidden
    members of the train tar and its class tars, the val tar's README, folder, hidden files and broken link, the test
    tar's README beside its test/ folder; the hidden ones counted in one line on the console."""
    org = packaged["image-net.org"]
    folder = copy_set(org, tmp_path / "org")
    train, val = archive_layouts.TRAIN_TAR, archive_layouts.VAL_TAR
    class_tars = tar_files(org / train)
    first = class_tars[0][0]
    inner = [(n, tar_bytes([*tar_files(d), (".DS_Store", b"x")])) for n, d in class_tars]
    write_tar(folder / train, inner + [(f"._{first}", b"\0\5\26\7")])
    images = tar_files(org / val)
    write_tar(folder / val, images + [(f"._{images[0][0]}", b"\0\5"), (".DS_Store", b"x"), ("README.txt", b"r"),
                                      ("more/x.JPEG", images[0][1]), ("more/.DS_Store", b"x"),
                                      (".ipynb_checkpoints/a.JPEG", images[0][1])], [("gone.JPEG", "nowhere.JPEG")])
    write_tar(folder / TEST_TAR, [(f"test/{n}", d) for n, d in tar_files(org / TEST_TAR)]
              + [("README.txt", b"r"), ("._test", b"\0")])
    out = run(folder, tmp_path / "out", "--num_proc", "2")
    hidden = [f"{train}/._{first}", *(f"{train}/{n}/.DS_Store" for n, _ in class_tars), f"{val}/.DS_Store",
              f"{val}/._{images[0][0]}", f"{val}/.ipynb_checkpoints", f"{TEST_TAR}/._test"]
    assert left_out(out) == sorted([{"path": p, "reason": HIDDEN} for p in hidden] + [
        {"path": f"{val}/README.txt", "reason": "no image file extension and no line in "
                                                f"{archive_layouts.DEVKIT}'s ground truth"},
        {"path": f"{val}/more", "reason": "a folder among the images (images are read only as files directly in the "
                                          "tar)"},
        {"path": f"{val}/gone.JPEG", "reason": "a broken link: its target is not a file in the tar"},
        {"path": f"{TEST_TAR}/README.txt", "reason": "beside its test/ folder, which holds its images"}],
        key=lambda e: e["path"])
    assert [line for line in capsys.readouterr().out.splitlines() if "hidden files" in line] == [
        f'warning: {len(hidden)} hidden files and folders (names starting with ".": .DS_Store, ._*, '
        f".ipynb_checkpoints) in {folder} left out, e.g. {min(hidden)}"]


@pytest.mark.parametrize("packaging", ["webdataset", "hub-imagenet-1k", "hub-imagenet-1k-parquet"])
def test_webdataset_and_hub_sets_report_each_member_left_out(packaging, packaged, tmp_path):
    """A shard or tar.gz re-tarred on a Mac: each hidden member named "<archive>/<member>" in left_out, and a link in
    the Hub's tar.gz (its target gone by in the one front-to-back read) with why; the Parquet snapshot's rows are
    all read, so its left_out is empty, not null."""
    folder = tmp_path / "set"
    shutil.copytree(packaged[packaging], folder, symlinks=True)
    tar = {"webdataset": "imagenet1k-validation-0000.tar", "hub-imagenet-1k": "data/val_images.tar.gz"}.get(packaging)
    expected = []
    if tar:
        files = tar_files(packaged[packaging] / tar)
        links = [("link.JPEG", files[0][0])] if packaging == "hub-imagenet-1k" else []
        write_tar(folder / tar, apple_double(files), links, "w:gz" if tar.endswith(".gz") else "w")
        expected = sorted([{"path": f"{tar}/{p}", "reason": HIDDEN} for p in (
            ".DS_Store", *(f"{d}._{n}" for n, _ in files for d in ("", "__MACOSX/")))] + [
            {"path": f"{tar}/link.JPEG", "reason": f"a link to {files[0][0]}: a compressed tar is read once, front to "
                                                   "back, and its target has gone by"} for _ in links],
            key=lambda e: e["path"])
    assert left_out(run(folder, tmp_path / "out")) == expected


@pytest.mark.parametrize("damage", ["flipped bit", "zeroed"])
@pytest.mark.parametrize("tar", [archive_layouts.TRAIN_TAR, archive_layouts.VAL_TAR])
def test_a_damaged_member_header_is_a_one_line_error(tar, damage, packaged, tmp_path):
    """tarfile ends a listing without a word at a header it cannot parse, or at a zeroed one (a hole an unfinished
    torrent download leaves reads as zeros, like the end-of-archive block): either in the third header of a class
    tar (inside the train tar) or of the val tar would drop every image after it."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    members = archives.tar_members(folder / tar)
    if tar == archive_layouts.TRAIN_TAR:  # the first class tar's own members
        outer = min(members, key=lambda m: m.offset)
        members = archives.tar_members(folder / tar, outer.offset_data, outer.offset_data + outer.size)
    header = sorted(m.offset for m in members)[2]
    data = bytearray((folder / tar).read_bytes())
    if damage == "zeroed":
        data[header:header + 512] = bytes(512)
    else:
        data[header + 10] ^= 0x20  # a letter of the member's name: the header's checksum no longer matches
    (folder / tar).unlink()
    (folder / tar).write_bytes(bytes(data))
    message = error_of(folder, tmp_path / "out")
    assert f"{folder / tar}" in message and "download it again" in message
    assert (f"damaged, zeros at byte {header} where a member header should be, then data at byte {header + 512} "
            if damage == "zeroed" else f"damaged, the member header at byte {header} does not read") in message


@pytest.mark.parametrize("damage", ["flipped bit", "emptied"])
def test_a_damaged_class_tar_is_named_in_its_one_line_error(damage, packaged, tmp_path):
    """A class tar inside image-net.org's train tar is named in the error, not "the tar at byte N"; an emptied one
    (0 bytes) is read up to its own end, not on into the next class tar's header, which would be named instead."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    train = folder / archive_layouts.TRAIN_TAR
    first, following = sorted(archives.tar_members(train), key=lambda m: m.offset)[:2]
    train.unlink()
    if damage == "emptied":
        with tarfile.open(packaged["image-net.org"] / archive_layouts.TRAIN_TAR) as full, \
                tarfile.open(train, "w") as part:
            for m in full.getmembers():
                part.addfile(tarfile.TarInfo(m.name) if m.name == first.name else m,
                             None if m.name == first.name else full.extractfile(m))
        expected = f"{first.name} in {train}: empty (0 bytes), not a tar; download it again"
    else:
        inner = archives.tar_members(packaged["image-net.org"] / archive_layouts.TRAIN_TAR, first.offset_data,
                                     first.offset_data + first.size)
        header = sorted(m.offset for m in inner)[1]
        data = bytearray((packaged["image-net.org"] / archive_layouts.TRAIN_TAR).read_bytes())
        data[header + 10] ^= 0x20  # a letter of the member's name: the header's checksum no longer matches
        train.write_bytes(bytes(data))
        expected = f"{first.name} in {train}: damaged, the member header at byte {header} does not read"
    message = error_of(folder, tmp_path / "out")
    assert expected in message and following.name not in message


def test_a_damaged_member_header_in_a_compressed_tar_is_a_one_line_error(packaged, tmp_path):
    """The Hub's val_images.tar.gz whose tar had a bit flipped before it was compressed (gzip's CRC holds): tarfile's
    stream reader stops there as at the tar's end."""
    folder = tmp_path / "hub"
    shutil.copytree(packaged["hub-imagenet-1k"], folder, symlinks=True)
    val = folder / "data" / "val_images.tar.gz"
    data = bytearray(gzip.decompress(val.read_bytes()))
    header = sorted(m.offset for m in tarfile.open(fileobj=io.BytesIO(bytes(data))).getmembers())[2]
    data[header + 10] ^= 0x20
    val.unlink()
    val.write_bytes(gzip.compress(bytes(data)))
    message = error_of(folder, tmp_path / "out")
    assert message == (f"error: {val}: damaged, the tar in it: the member header at byte {header} does not read (the "
                       "members from there on would be lost); download it again")


def test_a_sparse_member_is_refused_in_one_line(packaged, tmp_path):
    """tar --sparse stores a file without its holes: read at its size from where its data starts, the bytes would be
    the next members' (and a sparse last member looked like a truncated tar)."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    unpacked = tmp_path / "val"
    with tarfile.open(packaged["image-net.org"] / archive_layouts.VAL_TAR) as tar:
        tar.extractall(unpacked, filter="data")
    names = sorted(os.listdir(unpacked))
    with open(unpacked / names[3], "r+b") as f:  # a hole after the JPEG's end: a file tar -S stores sparse
        f.truncate(f.seek(0, os.SEEK_END) + 65536)
    (folder / archive_layouts.VAL_TAR).unlink()
    subprocess.run(["tar", "-S", "-cf", str(folder / archive_layouts.VAL_TAR), "-C", str(unpacked), *names],
                   check=True)
    message = error_of(folder, tmp_path / "out")
    assert message == (f"error: {folder / archive_layouts.VAL_TAR}: 1 sparse members (tar --sparse), e.g. {names[3]}, "
                       "which this reader does not read; re-pack it without --sparse")


def test_a_webdataset_shard_kept_twice_is_refused_naming_both(packaged, tmp_path):
    """A re-downloaded shard kept beside the first under another name: its images would come twice, where the tree
    refuses two files with one image id."""
    folder = copy_set(packaged["webdataset"], tmp_path / "wds")
    shutil.copy(packaged["webdataset"] / "imagenet1k-train-0000.tar", folder / "imagenet1k-train-0000.copy.tar")
    message = error_of(folder, tmp_path / "out")
    assert (f"{folder / 'imagenet1k-train-0000.copy.tar'} and {folder / 'imagenet1k-train-0000.tar'}: both hold "
            in message and "two samples with one image id" in message and message.endswith("remove one"))


def test_a_loc_file_beside_another_layout_leaves_the_folder_that_layouts(packaged, ilsvrc_tree, tmp_path):
    """A LOC_synset_mapping.txt kept beside image-net.org's tars or the Hub's or WebDataset's files (from another
    download) does not make the folder a Kaggle tree missing LOC_val_solution.csv; Kaggle's tree, with its ILSVRC/,
    stays a tree."""
    for packaging in ("image-net.org", "hub-imagenet-1k", "hub-imagenet-1k-parquet", "webdataset"):
        folder = copy_set(packaged[packaging], tmp_path / packaging)
        (folder / ilsvrc.SYNSET_MAPPING).symlink_to(ilsvrc_tree / ilsvrc.SYNSET_MAPPING)
        found = archives.detect(folder)
        assert found is not None and found.packaging == packaging, packaging
    assert listed(tmp_path / "image-net.org") == listed(packaged["image-net.org"])
    assert archives.detect(ilsvrc_tree) is None


def test_older_kaggle_release_cut_inside_an_annotation_is_a_one_line_error(packaged, tmp_path):
    """The listing reads each XML file of the tar.gz as it streams by: a download cut inside one must fail as a cut
    elsewhere does. One cut per XML file: where the stream stops inside its bytes."""
    tgz = packaged["kaggle-tar-gz"] / archive_layouts.KAGGLE_TGZ_NAME
    with tarfile.open(tgz) as tar:
        spans = [(m.offset_data, m.offset_data + m.size) for m in tar.getmembers() if m.name.endswith(".xml")]
    data, unzip, out, cuts = tgz.read_bytes(), zlib.decompressobj(31), 0, []  # 31: a gzip stream
    for n in range(1, len(data) + 1):
        out += len(unzip.decompress(data[n - 1:n]))
        while spans and out > spans[0][0]:
            cuts += [n] if out < spans[0][1] else []
            spans.pop(0)
    assert len(cuts) > 10
    folder = copy_set(packaged["kaggle-tar-gz"], tmp_path / "cut")
    (folder / tgz.name).unlink()
    for n in cuts:
        (folder / tgz.name).write_bytes(data[:n])
        with pytest.raises(ValueError) as e:
            archives.list_splits(archives.detect(folder))
        assert str(e.value).startswith(f"{folder / tgz.name}: not a complete archive (") and "\n" not in str(e.value)
        assert str(e.value).endswith("download it again")


def compressed_and_damaged(meta_mat: bytes) -> bytes:
    """``meta_mat`` saved as MATLAB saves by default (v7: compressed), then one byte of its compressed data changed."""
    import scipy.io
    saved = io.BytesIO()
    scipy.io.savemat(saved, {"synsets": scipy.io.loadmat(io.BytesIO(meta_mat))["synsets"]}, do_compression=True)
    data = bytearray(saved.getvalue())
    data[200] ^= 0x55
    return bytes(data)


@pytest.mark.parametrize("change", ["cut in half", "cut in its header", "MATLAB v7.3", "empty", "compressed, damaged"])
def test_a_devkit_whose_meta_mat_does_not_read_is_a_one_line_error(change, packaged, tmp_path):
    v73 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 400  # HDF5
    meta = {"cut in half": lambda b: b[:len(b) // 2], "cut in its header": lambda b: b[:100],
            "MATLAB v7.3": lambda b: v73, "empty": lambda b: b"", "compressed, damaged": compressed_and_damaged}[change]
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    devkit = demo_archives.rewrite_tar(packaged["image-net.org"] / archive_layouts.DEVKIT,
                                       folder / archive_layouts.DEVKIT,
                                       lambda files: [(n, meta(d) if n.endswith("/meta.mat") else d) for n, d in files])
    message = error_of(folder, tmp_path / "out")
    assert message.startswith(f"error: {devkit}: its data/meta.mat does not read as the devkit's MATLAB v5 file (")
    assert message.endswith("download it again")


def test_links_in_a_re_packed_tar_are_read_as_the_files_they_lead_to(packaged, tmp_path):
    """A class tar re-packed from a folder where images are links (a deduplicated copy: cp -al, rsync --link-dest):
    tar stores a file's second hard link as a link member, a symbolic link as one. Each is read as the file tar x
    leaves, with the image's bytes; a link to no file of the tar is warned of, as the tree warns of a broken link."""
    org = copy_set(packaged["image-net.org"], tmp_path / "org")
    train = org / archive_layouts.TRAIN_TAR
    with tarfile.open(packaged["image-net.org"] / archive_layouts.TRAIN_TAR) as tar:
        class_tars = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    unpacked = tmp_path / "class"
    with tarfile.open(fileobj=io.BytesIO(class_tars[0][1])) as tar:
        tar.extractall(unpacked, filter="data")
    images = sorted(os.listdir(unpacked))
    (unpacked / images[1]).unlink()
    os.link(unpacked / images[0], unpacked / images[1])
    (unpacked / images[2]).unlink()
    (unpacked / images[2]).symlink_to(images[0])
    (unpacked / "gone.JPEG").symlink_to("missing.JPEG")
    repacked = io.BytesIO()
    with tarfile.open(fileobj=repacked, mode="w") as tar:
        for name in sorted(os.listdir(unpacked)):
            tar.add(unpacked / name, name)
    assert [m.type for m in tarfile.open(fileobj=io.BytesIO(repacked.getvalue())).getmembers()][1:4] == [
        tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE]  # gone.JPEG first
    demo_archives.rewrite_tar(packaged["image-net.org"] / train.name, train,
                              lambda files: [(files[0][0], repacked.getvalue()), *files[1:]])

    _, _, splits, warnings = archives.list_splits(archives.detect(org))
    wnid = class_tars[0][0].removesuffix(".tar")
    assert [rel for rel, _ in splits["train"].items if rel.startswith(wnid)] == [f"{wnid}.tar/{n}" for n in images]
    read = archives.MemberReader(str(org), splits["train"].source)
    for name in images[1:3]:
        assert read(f"{archive_layouts.TRAIN_TAR}/{wnid}.tar/{name}") == (unpacked / images[0]).read_bytes()
    assert (f"1 broken links (their target is not a file in the tar) in {train} left out, e.g. {wnid}.tar/gone.JPEG"
            in warnings)


def test_links_in_a_compressed_tar_are_warned_of(packaged, tmp_path):
    """A compressed tar is read once, front to back: a link's target has gone by, so its links are left out, said
    in one warning, never silently."""
    hub = tmp_path / "hub"
    shutil.copytree(packaged["hub-imagenet-1k"], hub)
    val = hub / "data" / "val_images.tar.gz"
    with tarfile.open(packaged["hub-imagenet-1k"] / "data" / val.name) as full, tarfile.open(val, "w:gz") as part:
        members = full.getmembers()
        for m in members:
            part.addfile(m, full.extractfile(m))
        for kind, name in ((tarfile.LNKTYPE, "copy_n01440764.JPEG"), (tarfile.SYMTYPE, "link_n01440764.JPEG")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, members[0].name
            part.addfile(link)
    *listing, warnings = listed(hub)
    assert listing == list(listed(packaged["hub-imagenet-1k"])[:3])  # the images as before
    assert [w for w in warnings if " links in " in w] == [
        f"2 links in <set>/data/{val.name} left out (a compressed tar is read once, front to back: a link's target "
        "has gone by; re-pack it with tar --dereference --hard-dereference, which stores files, not links), e.g. "
        f"copy_n01440764.JPEG -> {members[0].name}"]


def test_a_train_tar_re_packed_with_dot_slash_names_gives_the_same_listing(packaged, tmp_path):
    """``tar cf ILSVRC2012_img_train.tar -C folder .`` names the class tars ./<wnid>.tar, after a ./ folder."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    train = folder / archive_layouts.TRAIN_TAR
    train.unlink()
    with tarfile.open(packaged["image-net.org"] / train.name) as full, tarfile.open(train, "w") as dot:
        here = tarfile.TarInfo(".")
        here.type = tarfile.DIRTYPE
        dot.addfile(here)
        for m in full.getmembers():
            data = full.extractfile(m)
            m.name = "./" + m.name
            dot.addfile(m, data)
    assert tarfile.open(train).getnames()[:2] == [".", "./n01440764.tar"]
    assert listed(folder) == listed(packaged["image-net.org"])


TEST_TAR = "ILSVRC2012_img_test_v10102019.tar"  # image-net.org's test images, a download of their own


def test_image_net_org_without_test_images_says_so_as_the_tree_does(packaged, tmp_path):
    """The test tar left out (people skip its 13 GB), or holding no image: the dataset has train and validation
    only, said in a warning, as the tree without test/ says it."""
    gone = copy_set(packaged["image-net.org"], tmp_path / "gone")
    (gone / TEST_TAR).unlink()
    readme = copy_set(packaged["image-net.org"], tmp_path / "readme")
    demo_archives.rewrite_tar(packaged["image-net.org"] / TEST_TAR, readme / TEST_TAR,
                              lambda files: [("README.txt", b"test images deleted to save 13 GB\n")])
    for folder, said in ((gone, f"{gone}: no test images (no ILSVRC2012_img_test*.tar)"),
                         (readme, f"{readme / TEST_TAR}: no test images")):
        _, _, splits, warnings = archives.list_splits(archives.detect(folder))
        assert list(splits) == ["train", "validation"]
        assert f"{said}; the dataset has train and validation only" in warnings, warnings


def test_image_net_orgs_two_test_tars_are_a_one_line_error_before_any_work(packaged, tmp_path):
    """image-net.org has published ILSVRC2012_img_test.tar (2012) and ILSVRC2012_img_test_v10102019.tar: both in the
    folder, the user says which one (the members of both were indexed, the last listed won)."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    demo_archives.rewrite_tar(packaged["image-net.org"] / TEST_TAR, folder / "ILSVRC2012_img_test.tar",
                              lambda files: [(f"old_{n}", d) for n, d in files])
    assert error_of(folder, tmp_path / "out") == (
        f"error: {folder}: 2 test tars (ILSVRC2012_img_test.tar, {TEST_TAR}); move the one not to read out of it "
        f"({TEST_TAR} is the newer)")


def test_a_devkit_ground_truth_naming_no_class_is_a_one_line_error(packaged, tmp_path):
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    truth = "data/ILSVRC2012_validation_ground_truth.txt"
    devkit = demo_archives.rewrite_tar(packaged["image-net.org"] / archive_layouts.DEVKIT,
                                       folder / archive_layouts.DEVKIT,
                                       lambda files: [(n, b"1999\n" + d if n.endswith(truth) else d)
                                                      for n, d in files])
    message = error_of(folder, tmp_path / "out")
    assert message == (f"error: {devkit}: its ground truth names ILSVRC2012_ID 1999, which is no class of data/"
                       f"meta.mat (1 such IDs); download it again")


def test_non_image_files_in_image_net_orgs_val_and_test_tars_are_left_out_with_a_warning(packaged, tmp_path):
    """A README.txt in the val or test tar is neither a row nor an error, as in the tree's val/ and test/; an image
    named past the devkit's ground truth still has no label, an error."""
    folder = copy_set(packaged["image-net.org"], tmp_path / "org")
    for tar in (archive_layouts.VAL_TAR, TEST_TAR):
        demo_archives.rewrite_tar(packaged["image-net.org"] / tar, folder / tar,
                                  lambda files: files + [("README.txt", b"ImageNet\n")])
    *listing, warnings = listed(folder)
    *full, full_warnings = listed(packaged["image-net.org"])
    assert listing == full  # no README.txt row
    assert [w for w in warnings if w not in full_warnings] == [
        f"1 non-image files in <set>/{tar} left out, e.g. README.txt" for tar in (archive_layouts.VAL_TAR, TEST_TAR)]

    past = copy_set(packaged["image-net.org"], tmp_path / "past")
    val = past / archive_layouts.VAL_TAR
    demo_archives.rewrite_tar(packaged["image-net.org"] / val.name, val,
                              lambda files: files + [("ILSVRC2012_val_00000099.JPEG", files[0][1])])
    assert error_of(past, tmp_path / "out") == (f"error: {val}: ILSVRC2012_val_00000099.JPEG has no line in "
                                                f"{archive_layouts.DEVKIT}'s ground truth, so no label")


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-tar-gz"])
def test_files_a_kaggle_archive_holds_outside_its_image_folders_are_warned_of_as_the_tree_warns(packaging,
                                                                                                 tmp_path):
    """A file directly in train/ (no class folder names its label) and folders inside train/<wnid>/ or val/ are
    not read, by the tree or from the archive; both say so in the same words, the archive's path for the tree's."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=3, val_per_class=2, num_test=2)
    train, val = tree / ilsvrc.SPLIT_DIRS["train"], tree / ilsvrc.SPLIT_DIRS["validation"]
    first = sorted(train.iterdir())[0]
    image = sorted(first.glob("*.JPEG"))[0]
    for copy in (first / "extra" / "x_1.JPEG", train / "loose_1.JPEG", val / "more" / "ILSVRC2012_val_00000001.JPEG"):
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(image, copy)
    if packaging == "kaggle-zip":
        data_dir = where = demo_archives.kaggle_zip(tree, tmp_path / "kaggle.zip")
    else:
        data_dir = demo_archives.kaggle_unzipped_tgz(tree, tmp_path / "kaggle-2019")
        where = data_dir / archive_layouts.KAGGLE_TGZ_NAME
    _, _, splits, warnings = archives.list_splits(archives.detect(data_dir))
    _, _, tree_splits, tree_warnings = image_tree.list_ilsvrc_splits(tree)
    assert {s: x.items for s, x in splits.items()} == {s: x.items for s, x in tree_splits.items()}
    left_out = [w.replace(str(where), "<set>") for w in warnings if " left out" in w]
    assert left_out == [w.replace(str(tree), "<set>") for w in tree_warnings if " left out" in w] == [
        f"1 files directly in <set>/{ilsvrc.SPLIT_DIRS['train']} left out (train images go in "
        f"{ilsvrc.SPLIT_DIRS['train']}/<wnid>/), e.g. loose_1.JPEG",
        "2 folders among the images of <set> left out (images are read only as files directly in train/<wnid>/, "
        f"val/ or test/), e.g. {ilsvrc.SPLIT_DIRS['train']}/{first.name}/extra"]


def test_folders_in_image_net_orgs_val_and_test_tars_are_left_out_as_the_tree_leaves_them(packaged, tmp_path):
    """A tar whose images are all in one folder is read as that folder, without a word: image-net.org's
    ILSVRC2012_img_test_v10102019.tar holds test/<file>, a val tar packed from an unpacked val/ holds val/<file>, a
    copy's may hold CLS-LOC/val/<file>, a README.txt beside it. Files in a folder below that are not read, as the
    tree reads only the files directly in val/ or test/, and said in the tree's words: an image stored twice, at the
    top and in a folder, gives one row."""
    org = packaged["image-net.org"]
    for name, val, test, beside in (("wrapped", "val/", "test/", []), ("deeper", "CLS-LOC/val/", "test/",
                                                                          [("README.txt", b"notes")])):
        wrapped = copy_set(org, tmp_path / name)
        for tar, folder in ((archive_layouts.VAL_TAR, val), (TEST_TAR, test)):
            demo_archives.rewrite_tar(org / tar, wrapped / tar,
                                      lambda files, f=folder: [(f"{f}{n}", d) for n, d in files] + beside)
        assert listed(wrapped) == listed(org), name

    nested = copy_set(org, tmp_path / "nested")
    demo_archives.rewrite_tar(org / archive_layouts.VAL_TAR, nested / archive_layouts.VAL_TAR,
                              lambda files: files + [(f"extra/{files[0][0]}", files[0][1])])
    demo_archives.rewrite_tar(org / TEST_TAR, nested / TEST_TAR,
                              lambda files: [(f"test/{n}", d) for n, d in files] + [("test/more/x.JPEG", files[0][1])])
    *listing, warnings = listed(nested)
    *full, full_warnings = listed(org)
    assert listing == full
    assert [w for w in warnings if w not in full_warnings] == [
        f"1 folders among the images of <set>/{archive_layouts.VAL_TAR} left out (images are read only as files "
        "directly in the tar), e.g. extra",
        f"1 folders among the images of <set>/{TEST_TAR} left out (images are read only as files directly in its "
        "test/ folder), e.g. test/more"]


@pytest.mark.parametrize("folder", ["", "val/"])
def test_an_image_net_org_val_tar_sorted_into_class_folders_is_refused_in_one_line(folder, packaged, ilsvrc_tree,
                                                                                    tmp_path):
    """valprep.sh's sort of the val images into class folders, packed again: the tree refuses its val/ so sorted
    (its labels are the ground truth's, not the folders'), and so is this tar, saying what to do."""
    m = json.loads((ilsvrc_tree / "demo_manifest.json").read_text())
    sort = {f"{stem}.JPEG": m["wnids"][label] for stem, label in m["val_labels"].items()}
    data_dir = copy_set(packaged["image-net.org"], tmp_path / "org")
    val = demo_archives.rewrite_tar(packaged["image-net.org"] / archive_layouts.VAL_TAR,
                                    data_dir / archive_layouts.VAL_TAR,
                                    lambda files: [(f"{folder}{sort[n]}/{n}", d) for n, d in files])
    read = "the tar" if not folder else f"its {folder} folder"
    assert error_of(data_dir, tmp_path / "out") == (
        f"error: {val}: no images directly in {read}, only 4 folders (e.g. {folder}{m['wnids'][0]}/); preprocess.py "
        f"reads image-net.org's flat val tar with {archive_layouts.DEVKIT}'s ground truth (use the "
        f"{archive_layouts.VAL_TAR} downloaded, or undo a valprep.sh-style sort into class folders: pack the images "
        "with no folder)")


def kaggle_archive(packaging: str, tree: Path, dest: Path) -> tuple[Path, Path]:
    """(--data_dir, the archive messages name) of ``tree`` packed as Kaggle's zip or its older unzipped release."""
    if packaging == "kaggle-zip":
        return (zipped := demo_archives.kaggle_zip(tree, dest.with_suffix(".zip"))), zipped
    folder = demo_archives.kaggle_unzipped_tgz(tree, dest)
    return folder, folder / archive_layouts.KAGGLE_TGZ_NAME


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-tar-gz"])
def test_empty_folders_in_a_kaggle_archive_are_warned_of_as_the_tree_warns(packaging, tmp_path):
    """Only its folder entries show an archive's empty folders: one in train/<wnid>/, val/ or test/ is left out in
    the tree's words, an emptied class folder is a class without train images, and an empty folder of no wnid in
    train/ is refused, as the tree refuses it."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=3, val_per_class=2, num_test=2)
    train = tree / ilsvrc.SPLIT_DIRS["train"]
    first, second = sorted(train.iterdir())
    for image in second.iterdir():
        image.unlink()
    for folder in (first / "extra", tree / ilsvrc.SPLIT_DIRS["validation"] / "more",
                   tree / ilsvrc.SPLIT_DIRS["test"] / "other"):
        folder.mkdir()
    data_dir, where = kaggle_archive(packaging, tree, tmp_path / "set")
    _, _, splits, warnings = archives.list_splits(archives.detect(data_dir))
    _, _, tree_splits, tree_warnings = image_tree.list_ilsvrc_splits(tree)
    assert {s: x.items for s, x in splits.items()} == {s: x.items for s, x in tree_splits.items()}
    folders = [w.replace(str(where), "<set>") for w in warnings if "folders among" in w]
    assert folders == [w.replace(str(tree), "<set>") for w in tree_warnings if "folders among" in w] == [
        "3 folders among the images of <set> left out (images are read only as files directly in train/<wnid>/, "
        f"val/ or test/), e.g. {ilsvrc.SPLIT_DIRS['train']}/{first.name}/extra"]
    assert f"1 classes of {ilsvrc.SYNSET_MAPPING} have no train images in {where}, e.g. {second.name}" in warnings

    (train / "n99999999").mkdir()
    with pytest.raises(ValueError, match="folder of unknown wnid 'n99999999'"):
        image_tree.list_ilsvrc_splits(tree)
    data_dir, where = kaggle_archive(packaging, tree, tmp_path / "unknown")
    assert error_of(data_dir, tmp_path / "out") == (f"error: {where}: train folder of unknown wnid 'n99999999' (not "
                                                    f"in {ilsvrc.SYNSET_MAPPING}; 1 such folders)")


@pytest.mark.parametrize("packaging", ["kaggle-zip", "kaggle-tar-gz"])
def test_a_kaggle_archive_whose_val_is_sorted_into_class_folders_is_refused_as_the_tree_refuses_it(packaging,
                                                                                                   tmp_path):
    """A re-organised val/ (val/<wnid>/<image>, as valprep.sh sorts it) packed again: the tree refuses it (the labels
    are LOC_val_solution.csv's), and so is the archive, naming the layout it found and what to do."""
    tree = make_ilsvrc_tree(tmp_path / "kaggle", num_classes=2, train_per_class=3, val_per_class=2, num_test=2)
    m = json.loads((tree / "demo_manifest.json").read_text())
    val = tree / ilsvrc.SPLIT_DIRS["validation"]
    for image in sorted(val.iterdir()):
        (val / m["wnids"][m["val_labels"][image.stem]]).mkdir(exist_ok=True)
        image.rename(val / m["wnids"][m["val_labels"][image.stem]] / image.name)
    with pytest.raises(ValueError, match="no images, only subfolders"):
        image_tree.list_ilsvrc_splits(tree)
    data_dir, where = kaggle_archive(packaging, tree, tmp_path / "set")
    assert error_of(data_dir, tmp_path / "out") == (
        f"error: {where}: no images in {ilsvrc.SPLIT_DIRS['validation']}/, only 2 subfolders (e.g. {m['wnids'][0]}/); "
        f"preprocess.py reads Kaggle's flat val/ with {ilsvrc.VAL_SOLUTION} (undo a valprep.sh-style sort into class "
        "folders: the images go directly in val/)")
