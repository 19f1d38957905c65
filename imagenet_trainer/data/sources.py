"""Stage 1 of the input pipeline: where a dataset comes from.

In: ``--dataset`` as the user gave it: a preprocess.py output folder, a local folder of Parquet/image files (a Hub
clone), or a Hub dataset id. Out: a ``datasets.DatasetDict`` whose splits have ``image`` (encoded bytes) and
``label`` columns (``load_image_dataset``), and a split's class names once every row has a label
(``check_labels``). A preprocess.py output is checked against its manifest (file sizes, no reading) before it is
memory-mapped; every failure is a one-line ValueError naming the folder and what to do. Next stage: ``rows``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from imagenet_trainer import manifest

SCRIPT_HINT = ("datasets 5.x no longer runs loading scripts: convert the images with preprocess.py "
               "(or use a Parquet-backed Hub copy)")



def load_image_dataset(path_or_id: str) -> datasets.DatasetDict:
    """A preprocess.py output folder (``load_from_disk``) or a Parquet-backed Hub dataset id / local clone with
    ``image`` and ``label`` columns. A split named ``val`` is renamed ``validation``. Errors are one-line
    ValueErrors; a preprocess.py output is first checked against its manifest (file sizes, no reading)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = _load_saved(path)
        if not isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path_or_id} holds a single Dataset, not the DatasetDict of splits preprocess.py "
                             "writes; rerun preprocess.py")
    elif path.is_dir():
        scripts = sorted(p.name for p in path.glob("*.py"))
        try:
            ds = datasets.load_dataset(str(path), cache_dir=str(_local_cache_dir(path)))
        except Exception as e:  # datasets raises RuntimeError/FileNotFoundError/EmptyDatasetError here
            if scripts:
                raise ValueError(f"{path_or_id} is a loading-script dataset ({', '.join(scripts)}); "
                                 f"{SCRIPT_HINT}") from None
            raise ValueError(f"{path_or_id}: neither a preprocess.py output nor a folder of Parquet/image files "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _attach_descriptions(ds, path)
    elif path.exists() or path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
        raise ValueError(f"{path_or_id}: no such folder (give preprocess.py's --output_dir or a Hub dataset id)")
    else:
        try:
            ds = datasets.load_dataset(path_or_id)
        except Exception as e:  # offline, not found, gated, script-based: all end in the same one-liner
            if "scripts are no longer supported" in str(e):
                raise ValueError(f"Hub dataset {path_or_id} is script-based; {SCRIPT_HINT}") from None
            raise ValueError(f"{path_or_id}: no such local folder, and the Hub dataset could not be loaded "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _attach_descriptions(ds, path_or_id)
    if "val" in ds and "validation" not in ds:
        ds["validation"] = ds.pop("val")
    for name, split in ds.items():
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(f"{path_or_id}: split '{name}' lacks the column(s) {sorted(missing)} "
                             f"(has {split.column_names}); an image-classification dataset needs image and label")
    return ds


def _local_cache_dir(folder: Path) -> Path:
    """Where datasets keeps its Arrow copy of a local folder of Parquet/image files: keyed by the folder and every
    file's size and mtime. datasets' own key ignores the files when the folder's README lists ``configs`` (the Hub
    layout ``imagenet_trainer.hub_dataset`` writes): a folder exported anew, or another folder of the same name,
    would silently load the first one's cached rows."""
    key = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts)):
        stat = f.stat()
        key.update(f"{f.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return Path(datasets.config.HF_DATASETS_CACHE) / "local" / key.hexdigest()[:16]


def _attach_descriptions(ds: datasets.DatasetDict, folder_or_repo) -> None:
    """Human names from the ``class_descriptions.json`` beside Parquet files (a local folder or a Hub dataset repo
    written by imagenet_trainer.hub_dataset) into each split's DatasetInfo, where ``ilsvrc.class_descriptions``
    finds them: Parquet keeps the ClassLabel names (wnids), not the description preprocess.py keeps them in."""
    from imagenet_trainer.ilsvrc import DESCRIPTIONS_FILE, DESCRIPTIONS_KEY

    if isinstance(folder_or_repo, Path):
        path = folder_or_repo / DESCRIPTIONS_FILE
    else:
        from huggingface_hub import hf_hub_download  # here: local datasets need no Hub client

        try:  # from the Hub, or with HF_HUB_OFFLINE=1 from its cache
            path = Path(hf_hub_download(folder_or_repo, DESCRIPTIONS_FILE, repo_type="dataset"))
        except Exception:  # no such file (another tool's repo), not cached: ClassLabel names or timm's lemmas
            return
    if not path.is_file():
        return
    names = json.loads(path.read_text())
    for split in ds.values():
        label = split.features.get("label")
        if isinstance(label, datasets.ClassLabel) and isinstance(names, list) and len(names) == label.num_classes:
            split.info.description = json.dumps({DESCRIPTIONS_KEY: names})


def _load_saved(path: Path) -> datasets.DatasetDict | datasets.Dataset:
    """``load_from_disk`` of a checked folder; a damaged Arrow file is a ValueError naming it, not pyarrow's
    traceback (which names no file)."""
    listed = manifest.read(path)
    if listed is not None and (problem := manifest.check_sizes(path, listed["files"])):
        raise ValueError(problem)
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, pa.ArrowException, ValueError, KeyError) as e:  # no manifest to name it: find the damaged file
        for arrow in sorted(path.rglob("*.arrow")):
            try:
                with pa.memory_map(str(arrow)) as source:
                    pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowException):
                raise ValueError(f"{arrow}: damaged or truncated Arrow file; copy it again, or rerun "
                                 "preprocess.py") from None
        raise ValueError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None


def check_labels(split: datasets.Dataset, names: list[str] | None = None) -> list[str]:
    """The split's class names, once every row is known to have a label: a ClassLabel column (named like ``names``,
    in the same order, when given), no null and no -1 (unlabelled, as ILSVRC's test split). One-line ValueErrors;
    reads the label column only."""
    label = split.features.get("label")
    if not isinstance(label, datasets.ClassLabel):
        raise ValueError(f"the label column is {label}, not a ClassLabel (datasets' class_encode_column('label') "
                         "makes one; preprocess.py writes one)")
    if names is not None and list(label.names) != list(names):
        raise ValueError("its class names differ from the train split's (other classes or another order), so its "
                         "scores would be against the wrong classes")
    labels = split.with_format("arrow")["label"]
    missing = labels.null_count + (pc.sum(pc.less(labels, 0)).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} of {len(split)} images have no label (null or -1; ILSVRC's test split has "
                         "none)")
    return list(label.names)

