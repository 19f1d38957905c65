"""Package a demo tree (demo.make_ilsvrc_tree) the ways ImageNet is distributed, for tests and benchmarks.

- ``kaggle_zip``: the tree in one zip, JPEGs stored and the text files deflated, as ``zip`` does by default.
  An empty folder of the tree is a folder entry, as ``zip -r`` and ``tar`` keep it (here and in the tar.gz below).
- ``imagenet_org``: ``ILSVRC2012_img_train.tar`` (one tar per class inside), ``ILSVRC2012_img_val.tar``,
  ``ILSVRC2012_img_test_v10102019.tar``, ``ILSVRC2012_devkit_t12.tar.gz`` whose ``data/meta.mat`` numbers the
  classes in reverse wnid order (as the real devkit's ILSVRC2012_IDs differ from the sorted order) and holds one
  synset with children (the real one has 860 such non-leaves), and the two bbox archives of the tree's XML files.
- ``kaggle_zip_of_tgz``: Kaggle's older zip, the LOC files beside ``imagenet_object_localization_patched2019.tar.gz``
  (which holds ``ILSVRC/``); ``kaggle_unzipped_tgz``: that zip unzipped, the same files side by side in a folder.
- ``hub``: a snapshot of the Hub's ``ILSVRC/imagenet-1k`` as its loading script read it: ``data/train_images_{0,1}
  .tar.gz`` (train in sorted halves), ``data/val_images.tar.gz``, ``data/test_images.tar.gz``, files named
  ``<stem>_<wnid>.JPEG`` (test: ``<stem>.JPEG``), and ``classes.py``.
- ``hub_parquet``: that repo as the Hub holds it now: ``data/train-0000{0,1}-of-00002.parquet`` (train shuffled
  across both), ``data/validation-00000-of-00001.parquet``, ``data/test-00000-of-00001.parquet`` (in sorted order),
  row groups of a few rows, each row ``image`` {bytes, path: the file name as above} and ``label``, a ClassLabel of
  human names (the tree's, or the Hub's 1000 with ``crane2``); test labels -1; ``README.md`` with the ``configs``
  and ``dataset_info`` front matter, and ``classes.py`` unless left out.
- ``webdataset``: ``imagenet1k-{train,validation}-NNNN.tar`` shards of ``<stem>.jpg``, ``<stem>.cls`` and
  ``<stem>.json`` (``filename``, ``label``), the samples shuffled across shards.

``rewrite_tar`` gives a variant of any of these tars (a member stored twice, macOS's ``._*`` files added...).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from imagenet_trainer import ilsvrc
from imagenet_trainer.archive_layouts import HUB_RENAMED, KAGGLE_TGZ_NAME
from imagenet_trainer.demo import MANIFEST


def _tree_files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and p.name != MANIFEST)


def _empty_folders(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_dir() and not any(p.iterdir()))


def kaggle_zip(tree: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for rel in _tree_files(tree):
            method = zipfile.ZIP_STORED if rel.endswith(".JPEG") else zipfile.ZIP_DEFLATED
            zf.write(tree / rel, rel, compress_type=method)
        for rel in _empty_folders(tree):
            zf.writestr(rel + "/", b"")  # a name ending in "/": a folder entry
    return dest


def _add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    """A file, or with ``data`` None a folder."""
    info = tarfile.TarInfo(name)
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: list[tuple[str, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files:
            _add(tar, name, data)
    return buf.getvalue()


def rewrite_tar(src: Path, dest: Path, change) -> Path:
    """A variant of one of these tars: the regular files of ``src`` as [(name, bytes)], passed through ``change``
    (which may add, drop, reorder or repeat them), written to ``dest`` with ``src``'s compression (gzip or none). A
    link at ``dest`` is replaced, its target left as it is."""
    with tarfile.open(src) as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    dest.unlink(missing_ok=True)
    dest.write_bytes(_tar_bytes(change(files), "w:gz" if src.name.endswith((".gz", ".tgz")) else "w"))
    return dest


def meta_mat(wnids: list[str], descriptions: list[str]) -> tuple[bytes, dict]:
    """(meta.mat bytes, {wnid: ILSVRC2012_ID}): leaves numbered 1..N in reverse wnid order, then one parent."""
    import scipy.io

    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images")
    ids = {w: len(wnids) - i for i, w in enumerate(wnids)}
    rows = [(ids[w], w, d, f"a gloss of {d}", 0, np.zeros(0), 0, 1) for w, d in zip(wnids, descriptions)]
    rows.append((len(wnids) + 1, "n00001740", "entity", "the root", len(wnids),
                 np.array([ids[w] for w in wnids], dtype=float), 1, 0))
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            synsets[i, 0][f] = v
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue(), ids


def imagenet_org(tree: Path, dest: Path) -> Path:
    m = json.loads((tree / MANIFEST).read_text())
    dest.mkdir(parents=True)
    train_dir = tree / ilsvrc.SPLIT_DIRS["train"]
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w") as tar:
        for wnid in sorted(os.listdir(train_dir)):
            files = [(p.name, p.read_bytes()) for p in sorted((train_dir / wnid).iterdir())]
            _add(tar, f"{wnid}.tar", _tar_bytes(files))
    for split, name in (("validation", "ILSVRC2012_img_val.tar"), ("test", "ILSVRC2012_img_test_v10102019.tar")):
        folder = tree / ilsvrc.SPLIT_DIRS[split]
        (dest / name).write_bytes(_tar_bytes([(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]))
    mat, ids = meta_mat(m["wnids"], m["descriptions"])
    truth = "".join(f"{ids[m['wnids'][m['val_labels'][stem]]]}\n" for stem in sorted(m["val_labels"]))
    (dest / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_tar_bytes(
        [("ILSVRC2012_devkit_t12/data/meta.mat", mat),
         ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())], "w:gz"))
    for split, name, prefix in (("train", "ILSVRC2012_bbox_train_v2.tar.gz", ""),
                                ("validation", "ILSVRC2012_bbox_val_v3.tgz", "val/")):
        folder = tree / ilsvrc.ANNOTATION_DIRS[split]
        xml = [(prefix + str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*.xml"))]
        (dest / name).write_bytes(_tar_bytes(xml, "w:gz"))
    return dest


def webdataset(tree: Path, dest: Path, shards: int = 2, seed: int = 0) -> Path:
    m = json.loads((tree / MANIFEST).read_text())
    index = {w: i for i, w in enumerate(ilsvrc.imagenet_wnids())}
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True)
    train_dir = tree / ilsvrc.SPLIT_DIRS["train"]
    samples = {"train": [(p, index[p.parent.name]) for p in sorted(train_dir.glob("*/*"))],
               "validation": [(p, index[m["wnids"][m["val_labels"][p.stem]]])
                              for p in sorted((tree / ilsvrc.SPLIT_DIRS["validation"]).iterdir())]}
    for split, found in samples.items():
        order = rng.permutation(len(found))
        for k in range(shards):
            files = []
            for i in order[k::shards]:
                path, cls = found[i]
                files += [(f"{path.stem}.jpg", path.read_bytes()), (f"{path.stem}.cls", f"{cls}".encode()),
                          (f"{path.stem}.json", json.dumps({"filename": path.name, "label": cls}).encode())]
            (dest / f"imagenet1k-{split}-{k:04d}.tar").write_bytes(_tar_bytes(files))
    return dest


def _kaggle_2019_parts(tree: Path) -> tuple[list[str], bytes]:
    """(the LOC files, the tar.gz of ``ILSVRC/``) of Kaggle's older release."""
    files = _tree_files(tree)
    inner = _tar_bytes([(rel, (tree / rel).read_bytes()) for rel in files if rel.startswith("ILSVRC/")]
                       + [(rel, None) for rel in _empty_folders(tree) if rel.startswith("ILSVRC/")], "w:gz")
    return [rel for rel in files if not rel.startswith("ILSVRC/")], inner


def kaggle_zip_of_tgz(tree: Path, dest: Path) -> Path:
    loc_files, inner = _kaggle_2019_parts(tree)
    with zipfile.ZipFile(dest, "w") as zf:
        for rel in loc_files:
            zf.write(tree / rel, rel, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(KAGGLE_TGZ_NAME, inner)
    return dest


def kaggle_unzipped_tgz(tree: Path, dest: Path) -> Path:
    loc_files, inner = _kaggle_2019_parts(tree)
    for rel in loc_files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((tree / rel).read_bytes())
    (dest / KAGGLE_TGZ_NAME).write_bytes(inner)
    return dest


def hub(tree: Path, dest: Path) -> Path:
    m = json.loads((tree / MANIFEST).read_text())
    (dest / "data").mkdir(parents=True)
    train = sorted((tree / ilsvrc.SPLIT_DIRS["train"]).glob("*/*"))
    half = len(train) // 2
    for k, part in enumerate((train[:half], train[half:])):
        files = [(f"{p.stem}_{p.parent.name}{p.suffix}", p.read_bytes()) for p in part]
        (dest / "data" / f"train_images_{k}.tar.gz").write_bytes(_tar_bytes(files, "w:gz"))
    val = sorted((tree / ilsvrc.SPLIT_DIRS["validation"]).iterdir())
    files = [(f"{p.stem}_{m['wnids'][m['val_labels'][p.stem]]}{p.suffix}", p.read_bytes()) for p in val]
    (dest / "data" / "val_images.tar.gz").write_bytes(_tar_bytes(files, "w:gz"))
    test = sorted((tree / ilsvrc.SPLIT_DIRS["test"]).iterdir())
    (dest / "data" / "test_images.tar.gz").write_bytes(_tar_bytes([(p.name, p.read_bytes()) for p in test], "w:gz"))
    classes = ", ".join(f"{w!r}: {d!r}" for w, d in zip(m["wnids"], m["descriptions"]))
    (dest / "classes.py").write_text(f"from collections import OrderedDict\n\nIMAGENET2012_CLASSES = "
                                     f"OrderedDict({{{classes}}})\n")
    return dest


def _classes_py(wnids: list[str], names: list[str]) -> str:
    entries = "".join(f"        {w!r}: {n!r},\n" for w, n in zip(wnids, names))
    return f"from collections import OrderedDict\n\nIMAGENET2012_CLASSES = OrderedDict(\n    {{\n{entries}    }}\n)\n"


def hub_parquet(tree: Path, dest: Path, imagenet_names: bool = False, classes_py: bool = True,
                rows_per_group: int = 4, seed: int = 0) -> Path:
    """``imagenet_names``: the label names are the Hub's 1000 (timm's descriptions, ``crane2`` at n03126707) and the
    labels indices into them, as in the real repo; else the tree's classes and descriptions, as ``hub`` has them.
    ``rows_per_group``: rows in a Parquet row group, a few, so that one shard's rows span several."""
    import datasets  # here: the other packagings need no datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCardData

    m = json.loads((tree / MANIFEST).read_text())
    if imagenet_names:
        wnids, lemmas = ilsvrc.imagenet_wnids(), ilsvrc.imagenet_lemmas()
        names = [HUB_RENAMED[w][0] if w in HUB_RENAMED else lemmas[w] for w in wnids]
    else:
        wnids, names = m["wnids"], m["descriptions"]
    index = {w: i for i, w in enumerate(wnids)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    train = [(p, p.parent.name) for p in sorted((tree / ilsvrc.SPLIT_DIRS["train"]).glob("*/*"))]
    val = [(p, m["wnids"][m["val_labels"][p.stem]]) for p in sorted((tree / ilsvrc.SPLIT_DIRS["validation"]).iterdir())]
    test = [(p, None) for p in sorted((tree / ilsvrc.SPLIT_DIRS["test"]).iterdir())]
    order = np.random.default_rng(seed).permutation(len(train))
    parts = {"train": [[train[i] for i in order[k::2]] for k in range(2)], "validation": [val], "test": [test]}
    (dest / "data").mkdir(parents=True)
    for split, files in parts.items():
        for k, part in enumerate(files):
            rows = [{"image": {"bytes": p.read_bytes(), "path": f"{p.stem}_{wnid}{p.suffix}" if wnid else p.name},
                     "label": index[wnid] if wnid else -1} for p, wnid in part]
            pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), row_group_size=rows_per_group,
                           where=dest / "data" / f"{split}-{k:05d}-of-{len(files):05d}.parquet")
    info = {"features": features._to_yaml_list(),
            "splits": [{"name": split, "num_bytes": sum(p.stat().st_size for p in (dest / "data").glob(f"{split}-*")),
                        "num_examples": sum(map(len, files))} for split, files in parts.items()]}
    card = DatasetCardData(pretty_name="ILSVRC/imagenet-1k", configs=[{"config_name": "default", "data_files": [
        {"split": split, "path": f"data/{split}-*"} for split in parts]}], dataset_info=info)
    (dest / "README.md").write_text(f"---\n{card.to_yaml()}\n---\n# ImageNet\n")
    if classes_py:
        (dest / "classes.py").write_text(_classes_py(wnids, names))
    return dest
