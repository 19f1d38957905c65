"""A preprocess.py dataset as a Hub dataset repo: Parquet shards, class names and provenance in its card.

    python -m imagenet_trainer.hub_dataset --dataset OUT --output_dir OUT-parquet                  # local copy only
    python -m imagenet_trainer.hub_dataset --dataset OUT --output_dir OUT-parquet --push_to_hub you/imagenet-1k

The folder it writes is what the Hub repo holds (``data/<split>-NNNNN-of-NNNNN.parquet``, ``README.md`` with the
``configs``/``dataset_info`` front matter, ``class_descriptions.json``, ``source.json``,
``preprocess_report.json``), so ``train.py --dataset OUT-parquet`` and, once pushed, ``train.py --dataset
you/imagenet-1k`` on another machine train with the same labels (ClassLabel names = wnids, in the same order) and
the same human names. Parquet keeps the ClassLabel names in its schema but not ``DatasetInfo.description``, where
preprocess.py keeps the human names: they travel in ``class_descriptions.json``, which ``load_image_dataset`` reads
back. ImageNet's terms of access allow research use and no redistribution, so the repo is created private unless
``--public`` is given.

The export resumes: shards are written into ``.OUT.tmp`` beside OUT, each under a ``.part`` name until it is
complete, and a job record ``.OUT.export.json`` (which data, which shard size) lets a rerun of the same command keep
the finished shards. SIGTERM (a scheduler's preemption) stops it after the shard being written, and a push at once.
A rerun once OUT is complete writes nothing (a file of the user's in it stays), so after a failed push the same
command only pushes. An earlier OUT that an export replaces is moved aside as ``.OUT.old`` with runinfo's note in it
(``runinfo.replace_dir(..., by=REPLACED_BY)``, as preprocess.py's --overwrite marks its own); a later run deletes a
``.OUT.old`` a kill left only with that note. An OUT this tool did not write, or holding a file of the user's, is
never replaced: a one-line error.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet as pq
from huggingface_hub import DatasetCardData, HfApi, get_token, metadata_load

from imagenet_trainer import ilsvrc, stop_signals
from imagenet_trainer.checkpoints import fsync_dir, fsync_tree
from imagenet_trainer.config import parse_config
from imagenet_trainer.manifest import MANIFEST, SOURCE_FILE
from imagenet_trainer.runinfo import (REPLACED_NOTE, ReplacedInTheWay, atomic_write_text, delete_replaced,
                                      is_replaced, replace_dir, replaced_folder, share_tree)
from imagenet_trainer.runlock import FolderLock

SHARD_BYTES = 500 * 2**20  # Parquet shard size: the Hub's dataset viewer and datasets' streaming like ~500 MB files
JOB_FORMAT = 1  # of the job record
# in the note (runinfo.mark_replaced) an OUT this tool replaces holds once moved aside as .OUT.old: a later run deletes
# a .OUT.old a kill left only with it, so a user's folder of that name is never deleted
REPLACED_BY = "imagenet_trainer.hub_dataset"
# what an export writes into the repo (patterns as upload_folder's delete_patterns reads them): a push deletes
# those of them the pushed folder lacks; a user's other files stay
REPORT = "preprocess_report.json"  # preprocess.py's: settings, skipped files with reasons; carried into the repo
HUB_FILES = ("data/*.parquet", "README.md", ilsvrc.DESCRIPTIONS_FILE, SOURCE_FILE, REPORT)


@dataclass(kw_only=True)  # kw_only: required fields stand among fields with defaults
class HubDatasetConfig:
    dataset: str  # preprocess.py output folder (a saved DatasetDict)
    output_dir: str  # the Parquet repo folder to write (replaced once complete)
    push_to_hub: str = ""  # Hub dataset id OWNER/NAME to upload output_dir to; empty: write it only
    public: bool = False  # create the Hub repo public; ImageNet's terms forbid redistributing its images


class Stopped(KeyboardInterrupt):
    """A stop signal (imagenet_trainer/stop_signals.py) ended the export between two shards, or after its last one
    before the push; the message says where the finished ones are kept."""


# beside data/: what refresh_small may rewrite
SMALL_FILES = (ilsvrc.DESCRIPTIONS_FILE, SOURCE_FILE, REPORT, "README.md")


def work_folder(output_dir: Path) -> Path:
    """Where the export of ``output_dir`` is built: beside it (the same filesystem, so it moves into place by a
    rename), one fixed name, so a rerun finds the shards a cut run finished."""
    return output_dir.with_name(f".{output_dir.name}.tmp")


def in_folder(folder: Path) -> bool:
    """Whether this process runs in ``folder`` (absolute) or below it."""
    try:
        here = Path(os.getcwd())
    except FileNotFoundError:  # in a deleted folder
        return False
    return here == folder or folder in here.parents


def job_record(output_dir: Path) -> Path:
    """The job record: beside OUT, not in it, because OUT is uploaded as it is."""
    return output_dir.with_name(f".{output_dir.name}.export.json")


def export_parquet(dataset_dir, output_dir, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the Hub layout of a preprocess.py DatasetDict into ``output_dir`` (atomically); returns it. A rerun
    resumes a cut export of the same data and shard size, and leaves a finished one as it is."""
    return _export(dataset_dir, output_dir, shard_bytes)[0]


def _export(dataset_dir, output_dir, shard_bytes: int) -> tuple[Path, bool]:
    """(``output_dir``, whether this call wrote it: False when it held this export already)."""
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    check_paths(dataset_dir, output_dir)
    # absolute: "." (the folder the user is in) has no name to put the work folder, lock and job record beside
    output_dir = Path(os.path.abspath(output_dir))
    signals_before = len(stop_signals.received)  # a signal that an earlier job in this process took is not ours
    from imagenet_trainer.data.sources import load_saved  # torch loads with imagenet_trainer.data: here only

    # checked against preprocess.py's manifest first, as train.py loads it: a truncated Arrow file would otherwise
    # export short, with a card that agrees, or fail naming no file
    ds = load_saved(dataset_dir)
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{dataset_dir}: a single Dataset, not preprocess.py's DatasetDict of splits")
    descriptions = ilsvrc.class_descriptions(ds)
    source_path = dataset_dir / SOURCE_FILE
    source = json.loads(source_path.read_text()) if source_path.is_file() else {}
    report_text, report = read_report(dataset_dir)
    job = {"format": JOB_FORMAT, "data": data_identity(dataset_dir, ds), "shard_bytes": shard_bytes,
           # the Parquet bytes a shard holds depend on the writers' versions too
           "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}
    plan = [(name, i, count, f"data/{name}-{i:05d}-of-{count:05d}.parquet") for name, split in ds.items()
            for count in [max(1, min(len(split), math.ceil(split.data.nbytes / shard_bytes)))] for i in range(count)]
    data_files = [{"split": name, "path": f"data/{name}-*.parquet"} for name in ds]
    small = {ilsvrc.DESCRIPTIONS_FILE: json.dumps(descriptions, indent=1) + "\n",
             **({SOURCE_FILE: json.dumps(source, indent=2) + "\n"} if source else {}),
             **({REPORT: report_text} if report_text else {}),
             "README.md": dataset_card(ds, descriptions, source, data_files, report)}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # one run per OUT: two would write the same shards' .part files
    lock = FolderLock(output_dir, "--output_dir", path=output_dir.with_name(f".{output_dir.name}.lock")).acquire()
    if lock.took_over:
        print(lock.took_over)
    try:
        remove_stale(output_dir)
        if is_finished(output_dir, job, small):
            return output_dir, False
        check_replaceable(output_dir)
        if output_dir.exists() and os.path.lexists(replaced_folder(output_dir)):  # the name the swap needs: refused
            raise ValueError(in_the_way(output_dir))                             # now, not after hours of export
        work = start_or_resume(output_dir, job, {rel for *_, rel in plan})
        done = [rel for name, i, count, rel in plan if (work / rel).exists()
                and is_complete(work / rel, len(ds[name].shard(count, i, contiguous=True)))]
        if done:
            print(f"resuming {work}: {len(done)} of {len(plan)} shards already done")
        for name, i, count, rel in plan:
            if rel in done:
                continue
            if len(stop_signals.received) > signals_before:
                signal_name = stop_signals.received[-1].name
                raise Stopped(f"{signal_name}: stopped with {len(done)} of {len(plan)} shards done; they are kept in "
                              f"{work}: run the same command to resume")
            write_shard(ds[name].shard(count, i, contiguous=True), work / rel)
            done.append(rel)
        for rel, text in small.items():
            (work / rel).write_text(text)
        share_tree(work)
        fsync_tree(work)
        files = {p.relative_to(work).as_posix(): p.stat().st_size for p in sorted(work.rglob("*")) if p.is_file()}
        # recorded before the move: a run cut between the two finds the same job and moves the finished folder
        atomic_write_text(job_record(output_dir), json.dumps({"job": job, "done": True, "files": files}, indent=1))
        try:
            replace_dir(work, output_dir, by=REPLACED_BY)
        except ReplacedInTheWay:  # checked at the start, but a user may have put it there since
            raise ValueError(f"{in_the_way(output_dir)} (the finished export waits in {work}: the same command then "
                             "only moves it)") from None
        fsync_dir(output_dir.parent)
    finally:
        lock.release()
    return output_dir, True


def check_paths(dataset_dir: Path, output_dir: Path) -> None:
    """One-line ValueErrors for an --output_dir that an export, which replaces it whole, must not take: a file (the
    move into place would fail only after the whole export), the --dataset folder, a folder inside it or one that
    holds it (replace_dir would delete the dataset with it)."""
    if os.path.lexists(output_dir) and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; choose a folder")
    out, data = output_dir.resolve(), dataset_dir.resolve()
    if not Path(os.path.abspath(output_dir)).name:
        raise ValueError(f"--output_dir {output_dir} is the filesystem's root; choose a folder in it")
    if out == data:
        raise ValueError(f"--output_dir {output_dir} is the --dataset folder; choose another one")
    if data in out.parents:
        raise ValueError(f"--output_dir {output_dir} is inside --dataset {dataset_dir}; choose a folder outside it")
    if out in data.parents:
        raise ValueError(f"--output_dir {output_dir} holds --dataset {dataset_dir}, which an export there would "
                         "delete; choose another one")


def check_replaceable(output_dir: Path) -> None:
    """One-line ValueErrors for an ``output_dir`` that holds what a new export would delete and cannot write again,
    as preprocess.py refuses a foreign --output_dir: a folder that is not an export (preprocess.py's output, a
    folder of the user's) or a file of the user's in an earlier export. Judged by what it holds, not by the job
    record beside it, which a copy or move of the export leaves behind. An empty folder (mkdir, a mount point) has
    nothing to lose."""
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not job_record(output_dir).is_file() and not is_our_card(output_dir / "README.md"):
        raise ValueError(f"--output_dir {output_dir} exists and is not an export of this tool (no card of its, "
                         "README.md tagged imagenet-trainer); it writes only into a new or empty folder or its own "
                         "earlier export: choose another one")
    foreign = user_files(output_dir)
    if foreign:
        raise ValueError(f"--output_dir {output_dir}: {output_dir / foreign[0]} is not an export's file "
                         f"({len(foreign)} such paths), and a new export replaces the folder whole; move them out, "
                         "then run again")


def is_our_card(readme: Path) -> bool:
    """Whether ``readme`` is a card ``dataset_card`` wrote (its front matter's tags hold imagenet-trainer): what
    tells an export copied without its job record from another dataset of the Hub's layout, or a user's notes."""
    try:
        tags = metadata_load(readme).get("tags") or []
    except Exception:  # absent, unreadable, no front matter or no mapping there: not ours
        return False
    return isinstance(tags, list) and "imagenet-trainer" in tags


SHARD_NAME = re.compile(r"data/[^/]+-\d{5}-of-\d{5}\.parquet")  # _export's plan: a thesis.parquet is not one


def is_export_path(rel: str, path: Path) -> bool:
    """Whether ``path`` (``rel`` in OUT) is one an export writes: its cards, ``data/`` and the shards in it, or the
    note replace_dir leaves in a folder it moves aside; a link never is."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return rel in ("data", Path(REPLACED_NOTE).parent.as_posix())
    return rel in EXPORT_FILES or rel == REPLACED_NOTE or SHARD_NAME.fullmatch(rel) is not None


def user_files(output_dir: Path) -> list[str]:
    """The paths in ``output_dir`` an export does not write (a LICENSE.md, notes), relative to it."""
    return sorted(rel for path in output_dir.rglob("*")
                  if not is_export_path(rel := path.relative_to(output_dir).as_posix(), path))


def data_identity(dataset_dir: Path, ds: datasets.DatasetDict) -> dict:
    """What tells this dataset from another in the job record: the SHA-256 of preprocess.py's manifest (which holds
    every file's), else each split's fingerprint and Arrow files (name, bytes, mtime in ns)."""
    manifest = dataset_dir / MANIFEST
    if manifest.is_file():
        return {"manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    splits = {}
    for name, split in ds.items():
        stats = [(f["filename"], os.stat(f["filename"])) for f in split.cache_files]
        splits[name] = {"fingerprint": split._fingerprint,
                        "files": [[os.path.basename(f), st.st_size, st.st_mtime_ns] for f, st in stats]}
    return {"splits": splits}


def read_record(output_dir: Path) -> dict:
    try:
        record = json.loads(job_record(output_dir).read_text())
    except (OSError, ValueError):  # none, or damaged: no job of ours to resume
        return {}
    return record if isinstance(record, dict) else {}


def is_finished(output_dir: Path, job: dict, small: dict[str, str]) -> bool:
    """Whether ``output_dir`` holds this job's finished export: the record says so, every file it lists is there at
    its size and no other, and the cards and JSON files are what this source gives now (a source.json edited since
    is written anew)."""
    record = read_record(output_dir)
    if not record.get("done") or record.get("job") != job or not output_dir.is_dir():
        return False
    # a file of the user's (a LICENSE.md) is not the export's: kept as it is, and pushed with it
    present = {rel: p.stat().st_size for p in output_dir.rglob("*")
               if p.is_file() and is_export_path(rel := p.relative_to(output_dir).as_posix(), p)}
    listed = record.get("files")
    if not isinstance(listed, dict):
        return False
    shards = {rel: size for rel, size in present.items() if rel not in SMALL_FILES}
    if shards != {rel: size for rel, size in listed.items() if rel not in SMALL_FILES}:
        return False
    return refresh_small(output_dir, small, record)


def refresh_small(output_dir: Path, small: dict[str, str], record: dict) -> bool:
    """The cards and JSON files of a finished export made anew where they differ from what the source gives now (an
    edited or added source.json, a card written by another version, a file deleted by hand), and those the source no
    longer gives removed, the shards kept: they are the hours of an ImageNet export, these a few KB. True:
    ``output_dir`` is this job's finished export."""
    changed = [rel for rel, text in small.items() if not (output_dir / rel).is_file()
               or (output_dir / rel).read_text(errors="replace") != text]
    gone = [rel for rel in SMALL_FILES if rel not in small and (output_dir / rel).is_file()]
    for rel in changed:
        atomic_write_text(output_dir / rel, small[rel])
    for rel in gone:
        (output_dir / rel).unlink()
    if changed or gone:
        files = {rel: size for rel, size in record["files"].items() if rel not in SMALL_FILES}
        files |= {rel: (output_dir / rel).stat().st_size for rel in small}
        atomic_write_text(job_record(output_dir), json.dumps({**record, "files": files}, indent=1))
        said = [f"wrote {', '.join(changed)} anew"] * bool(changed) + [f"removed {', '.join(gone)}"] * bool(gone)
        print(f"{output_dir}: {'; '.join(said)}; its Parquet shards were already this export's")
    return True


def remove_stale(output_dir: Path) -> None:
    """Work folders that exports into ``output_dir`` made under random names (``.OUT.tmp-XXXXXXXX``, earlier versions)
    and never finished, and the earlier export a run killed inside ``replace_dir`` left as ``.OUT.old``: each as large
    as the dataset, and no run will pick them up. Only what this tool left goes: a ``.OUT.old`` with the note
    ``replace_dir`` marks the folder it replaces with, a ``.OUT.tmp-*`` folder holding nothing but an export's files;
    a user's folder, link or file of either name is left as it is."""
    older = replaced_folder(output_dir)
    if is_replaced(older, output_dir, REPLACED_BY):
        size = folder_bytes(older)
        delete_replaced(older)
        print(f"removed {older} ({size / 1e9:.1f} GB): an earlier export, replaced")
    for stale in sorted(output_dir.parent.glob(f".{output_dir.name}.tmp-*")):
        if stale.is_dir() and not stale.is_symlink() and is_export_work(stale):
            size = folder_bytes(stale)
            shutil.rmtree(stale)
            print(f"removed {stale} ({size / 1e9:.1f} GB): the work folder of an export that never finished")


EXPORT_FILES = {ilsvrc.DESCRIPTIONS_FILE, SOURCE_FILE, REPORT, "README.md"}


def is_export_work(folder: Path) -> bool:
    """Whether ``folder`` holds only what an export writes (its cards, ``data/`` and the shards in it, whole or
    ``.part``), as real files and folders: a user's folder holds something else."""
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (rel == "data" and path.is_dir() or path.is_file() and (
                rel in EXPORT_FILES or rel.startswith("data/") and "/" not in rel[5:]
                and rel.endswith((".parquet", ".parquet.part")))):
            return False
    return True


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def in_the_way(output_dir: Path) -> str:
    return (f"--output_dir {output_dir}: an export replaces it by moving it to {replaced_folder(output_dir)} first, "
            "which holds something else (a file, link or folder of yours?); move it away or rename it, then run "
            "again")


def start_or_resume(output_dir: Path, job: dict, planned: set[str]) -> Path:
    """The work folder, holding only the planned shards (finished or not) a cut run of this job left there; a work
    folder of another job is removed, and the record says which job the folder now holds."""
    work = work_folder(output_dir)
    if work.exists() and read_record(output_dir).get("job") != job:
        print(f"{work}: left by an export of other data, another shard size or other library versions; starting "
              f"over")
        shutil.rmtree(work)
    for path in sorted(work.rglob("*"), reverse=True) if work.is_dir() else ():
        if path.is_file() and path.relative_to(work).as_posix() not in planned:
            path.unlink()  # a cut shard's .part, cards from before the cut: written anew
    (work / "data").mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_record(output_dir), json.dumps({"job": job, "done": False}, indent=1))
    return work


def is_complete(path: Path, rows: int) -> bool:
    """A shard a cut run finished: a Parquet footer that reads, with the rows planned."""
    try:
        return pq.read_metadata(path).num_rows == rows
    except (OSError, pyarrow.ArrowException):
        return False


def write_shard(part: datasets.Dataset, path: Path) -> None:
    """Write ``part`` to ``path`` under a ``.part`` name, on disk, then rename it: a shard of that name is whole."""
    tmp = path.with_name(path.name + ".part")
    try:
        part.to_parquet(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(f"writing {tmp} failed ({e.strerror or e}); the finished shards are kept in {path.parent.parent}"
                      f": once that is fixed (space freed), run the same command to resume") from None
    os.replace(tmp, path)


def arrow_bytes(split: datasets.Dataset) -> int:
    """The split's uncompressed Arrow bytes, what datasets' SplitInfo.num_bytes counts (its ArrowWriter sums each
    written table's ``nbytes``); for a selection (an indices mapping), its rows' share of the table, as datasets'
    ``push_to_hub`` estimates it."""
    nbytes = split.data.nbytes
    return nbytes if len(split) == len(split.data) else nbytes * len(split) // max(len(split.data), 1)


def read_report(dataset_dir: Path) -> tuple[str, dict]:
    """preprocess.py's report beside the dataset, as the text the repo gets (``shared_report``) and parsed; ("", {})
    without one (a dataset saved by other means, or by an older preprocess.py)."""
    try:
        report = json.loads((dataset_dir / REPORT).read_text())
    except (OSError, ValueError):  # none, or not JSON: the card says only what source.json says
        return "", {}
    return (shared_report(report), report) if isinstance(report, dict) else ("", {})


# the report's parts that stay on this machine: where the data and the output were (a home folder's name, a
# cluster's mounts), how the run was launched, and the list of every re-encoded file (1.28 M entries, ~100 MB of
# JSON for a --shorter_side copy of ImageNet; its counts per split stay)
LOCAL_ONLY = ("reencoded_files",)
LOCAL_CONFIG = ("data_dir", "output_dir", "num_proc", "overwrite", "verify")


def shared_report(report: dict) -> str:
    """The report as the repo holds it: the settings that made the data and every file left out, with their paths
    relative to the data folder as preprocess.py writes them; the local folders named only as <data_dir> and
    <output_dir> wherever a message holds them."""
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    shared = {k: v for k, v in report.items() if k not in LOCAL_ONLY}
    shared["config"] = {k: v for k, v in config.items() if k not in LOCAL_CONFIG}
    text = json.dumps(shared, indent=1)
    # absolute ones only: a relative name ("data") would be replaced inside words and paths it is no folder of
    local = [(p, k) for k in ("data_dir", "output_dir") if isinstance(v := config.get(k), str)
             for p in {v, os.path.expanduser(v)} if os.path.isabs(p) and p.strip("/")]
    for path, key in sorted(local, key=lambda pair: -len(pair[0])):  # the longer first: one may hold the other
        text = text.replace(json.dumps(path)[1:-1], f"<{key}>")
    # what is left: the messages name the folders resolved (a relative --data_dir, a link) and their parents (the
    # Kaggle root above a CLS-LOC/train given alone); paths in the data folder are relative
    return LOCAL_PATH.sub("<local folder>", text) + "\n"


LOCAL_PATH = re.compile(r"(?<![\w.<>/~-])~?/[^\s\"',;:()\[\]]+")  # /home/me/x, ~/data: an absolute path in text


# what archives.detect found (source.json's "packaging"): ImageNet read in place, each giving Kaggle's tree's rows
PACKAGINGS = {"kaggle-zip": "Kaggle's imagenet-object-localization-challenge zip",
              "kaggle-tar-gz": "Kaggle's older ILSVRC-2012 release (imagenet_object_localization_patched2019.tar.gz)",
              "image-net.org": "image-net.org's ILSVRC-2012 tars and devkit",
              "hub-imagenet-1k": "a snapshot of the Hub's ILSVRC/imagenet-1k (its tar.gz shards and classes.py)",
              "hub-imagenet-1k-parquet": "a snapshot of the Hub's ILSVRC/imagenet-1k (its Parquet files)",
              "webdataset": "WebDataset shards of ILSVRC-2012"}
LAYOUTS = {"ilsvrc-kaggle": "Kaggle's ILSVRC-2012 tree (imagenet-object-localization-challenge)",
           "class-folders": "one folder per class",
           "class-folders-split": "one folder per class, validation split carved from train"}
SHOWN_ARCHIVES = 6  # archive names the card lists; a Hub or WebDataset snapshot has hundreds


def layout_name(source: dict) -> str:
    """What preprocess.py read: the packaging and its archives when it read archives in place, else the tree."""
    packaging = source.get("packaging")
    if not packaging:
        return LAYOUTS.get(source.get("layout"), source.get("layout"))
    archives = [str(a) for a in source.get("archives") or []]
    listed = ", ".join(archives[:SHOWN_ARCHIVES]) + (f", ... ({len(archives)} archives)"
                                                     if len(archives) > SHOWN_ARCHIVES else "")
    return f"{PACKAGINGS.get(packaging, packaging)}, read in place" + (f" ({listed})" if listed else "")


def is_imagenet_images(names: list[str], source: dict) -> bool:
    """Whether the images are ImageNet's, whose terms forbid redistributing them: every class is an ImageNet-1k wnid
    (Kaggle's tree, an ImageFolder copy, a subset), unless they are a demo tree's generated images or an evaluation
    set (ImageNet-V2, -R, ...: other collections, under their own terms)."""
    if source.get("generated") or source.get("eval_set") or not names:
        return False
    try:
        known = set(ilsvrc.imagenet_wnids())
    except (ValueError, OSError):  # timm's synset list absent: wnid-shaped names have to do
        return all(ilsvrc.is_wnid(n) for n in names)
    return set(names) <= known


def columns_line(features: datasets.Features, source: dict) -> str:
    cols = ["`image` (the encoded JPEG)", "`label` (ClassLabel; names are the class ids, human names are in "
            "`class_descriptions.json` and the table below)"]
    if "image_id" in features:
        layout = str(source.get("layout"))
        cols.append("`image_id` (" + ("the source file's name without its extension: n01440764_10026, "
                                      "ILSVRC2012_val_00000001" if layout == "ilsvrc-kaggle" else
                                      "the source file as <class folder>/<name without extension>"
                                      if layout.startswith("class-folders") else "the source file of the row") + ")")
    if "objects" in features:
        cols.append("`objects` (bounding boxes: a list of {`bbox`: [xmin, ymin, xmax, ymax] in pixels of the stored "
                    "image, `label`}; empty where the source has none)")
    return "Columns: " + ", ".join(cols) + "."


def storage_lines(source: dict, report: dict) -> list[str]:
    """The card's lines on what was stored: the --shorter_side/--quality preprocess.py ran with and the files it
    skipped, per split, from its report; none without one."""
    cfg = report.get("config")
    if not isinstance(cfg, dict):
        return []
    reencoded = sum(sum(c.values()) for c in (report.get("reencoded") or {}).values() if isinstance(c, dict))
    if cfg.get("shorter_side"):
        stored = (f"downscaled: shorter side at most {cfg['shorter_side']} px, re-encoded as JPEG at quality "
                  f"{cfg.get('quality')} (not the original files)")
    else:
        stored = ("the original files (their JPEG data kept losslessly" + (", re-coded with restart markers for fast "
                  "crops" if cfg.get("restart_tile") else "") + ")" + (f"; {reencoded:,} files that were not plain "
                  f"JPEGs re-encoded at quality {cfg.get('quality')}" if reencoded else ""))
    skipped = Counter(e.get("split") for e in report.get("skipped") or [] if isinstance(e, dict))
    order = [*source.get("counts", {}), *sorted(set(map(str, skipped)) - set(source.get("counts", {})))]
    per_split = ", ".join(f"{skipped[split]:,} {split}" for split in order)  # 0 where a split lost none
    return [f"- **Storage:** {stored}",
            f"- **Skipped at conversion:** {per_split} files that did not decode (listed with reasons in {REPORT})"
            if skipped else "- **Skipped at conversion:** none"]


def dataset_card(ds: datasets.DatasetDict, descriptions: list[str], source: dict, data_files: list[dict],
                 report: dict | None = None) -> str:
    """README.md: front matter that datasets and the Hub read (configs, features, splits), then the provenance
    (``source``: source.json; ``report``: preprocess_report.json, for the storage settings and skipped files), how to
    train on it, and the class table."""
    report = report or {}
    first = next(iter(ds.values()))
    names = first.features["label"].names
    # datasets reads the splits block only when each entry has name, num_bytes and num_examples; without all three
    # it warns "Ignoring part of dataset_info" on every load
    splits = [{"name": n, "num_bytes": arrow_bytes(s), "num_examples": len(s)} for n, s in ds.items()]
    info = {"features": first.features._to_yaml_list(), "splits": splits,
            "dataset_size": sum(s["num_bytes"] for s in splits)}
    pretty = source.get("name") or "image classification data"
    imagenet_images = is_imagenet_images(names, source)
    data = DatasetCardData(pretty_name=pretty, task_categories=["image-classification"], tags=["imagenet-trainer"],
                           license="other" if imagenet_images else None,
                           configs=[{"config_name": "default", "data_files": data_files}], dataset_info=info)
    counts = ", ".join(f"{len(s):,} {n}" for n, s in ds.items())
    lines = ["---", data.to_yaml(), "---", "", f"# {pretty}", "",
             f"{len(names)} classes; {counts} images. {columns_line(first.features, source)}", "", "## Source", ""]
    if source:
        skipped = len(report.get("skipped") or [])
        full = (" (the full ILSVRC-2012" + (f" download, less {skipped:,} files that did not decode)" if skipped
                                           else ")")) if source.get("ilsvrc2012_full") else ""
        lines += [f"- **Data:** {source.get('name')}{full}", f"- **Layout converted:** {layout_name(source)}",
                  *([f"- **Images:** {source['generated']}"] if source.get("generated") else []),
                  "- **Counts at conversion:** "
                  + ", ".join(f"{n:,} {k}" for k, n in source.get("counts", {}).items()),
                  *storage_lines(source, report)]
        if source.get("val_fraction"):
            lines.append(f"- **Validation split:** {source['val_fraction']:.0%} of each class, seed "
                         f"{source.get('split_seed')}")
    else:
        lines.append("Converted with imagenet-trainer's preprocess.py (no source.json was recorded).")
    if imagenet_images:
        lines += ["", "ImageNet's terms of access (image-net.org) allow non-commercial research use and forbid "
                  "redistributing the images: keep this repository private to those who accepted them."]
    lines += ["", "## Use", "", "```bash", "accelerate launch train.py --dataset OWNER/NAME --model resnet50 ...",
              "```", "", "```python", "from imagenet_trainer.data import load_image_dataset",
              "from imagenet_trainer.ilsvrc import class_descriptions",
              'ds = load_image_dataset("OWNER/NAME")  # a DatasetDict; the same labels as the preprocess.py output',
              "names = class_descriptions(ds)  # human names in label order", "```", "",
              "## Classes", "", f"<details><summary>{len(names)} classes (index, id, name)</summary>", "",
              "| index | id | name |", "|---|---|---|"]
    lines += [f"| {i} | {n} | {str(d).replace('|', '/')} |" for i, (n, d) in enumerate(zip(names, descriptions))]
    return "\n".join([*lines, "", "</details>", ""])


def push_dataset(folder, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a folder written by ``export_parquet`` to the Hub dataset repo ``repo_id``; returns its URL. The repo's
    ``HUB_FILES`` the folder lacks (an earlier export's shards) are deleted in the same commit. ``private`` asked
    of a repo that exists and is public is a one-line ValueError before any upload; a failed upload (or a stall of
    ``modeling.hub.HUB_STALL_S`` seconds) raises a one-line OSError naming the push (the folder is left as it
    was)."""
    folder = Path(folder)
    if not (folder / "README.md").is_file() or not list((folder / "data").glob("*.parquet")):
        raise ValueError(f"{folder}: no README.md and data/*.parquet; write it with export_parquet first")
    if not (token or get_token()):
        raise ValueError(f"cannot push to '{repo_id}': no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    from modeling.hub import HUB_STALL_S, NotPrivate, push_failed, refuse_public, stall_limit  # torch, timm: here only

    api = HfApi(token=token)
    try:
        with stall_limit(HUB_STALL_S):
            url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if private:
                refuse_public(api, url.repo_id, "dataset", HUB_STALL_S)
            # in the same commit, an earlier export's files this folder lacks go: the card's data/ globs would
            # match old and new shards alike (load_dataset: NonMatchingSplitsSizesError, or every image twice)
            api.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=str(folder),
                              commit_message="Upload dataset converted with imagenet-trainer",
                              delete_patterns=list(HUB_FILES))
    except NotPrivate:
        raise
    except Exception as e:  # HTTP, network and auth errors come from several libraries; all end the same way

        # from None: the chained error's text is not ours to vet for secrets
        raise push_failed(e, f"{folder} to dataset '{repo_id}'", token,
                          "the same python -m imagenet_trainer.hub_dataset command (it finds the finished export "
                          "and only pushes)") from None
    return str(url)


def push_stopped(what: str, output_dir: Path) -> str:
    return f"{what}: the export is complete in {output_dir}; run the same command to push it"


def stop_while_pushing(output_dir: Path, signals_before: int) -> None:
    """From here on a stop signal (a scheduler's SIGTERM) ends the process at once, in one line: the export is on
    disk, and the upload, hours for ImageNet, keeps nothing a rerun would not send again. os._exit, not an
    exception: huggingface_hub's upload threads would hold the exit until their files are sent. A signal that came
    while the export finished stops it here, before the upload."""
    def stop(signum, frame):
        line = push_stopped(f"{signal.Signals(signum).name} during the push", output_dir)
        os.write(2, f"\n{line}\n".encode())  # os.write: print is not safe in a handler
        os._exit(1)  # the status of a stop during the export (Stopped)

    sys.stdout.flush()  # os._exit drops what print has buffered
    for sig in stop_signals.STOP_SIGNALS:
        if sig != signal.SIGINT:  # Ctrl-C stays a KeyboardInterrupt: main says where the export is
            signal.signal(sig, stop)
    if len(stop_signals.received) > signals_before:
        raise Stopped(push_stopped(f"{stop_signals.received[-1].name} before the push", output_dir))


def main(argv=None) -> None:
    cfg = parse_config(HubDatasetConfig, argv, description=__doc__.split("\n")[0])
    try:
        output_dir = Path(os.path.abspath(cfg.output_dir))  # "." included: the messages name the folder itself
    except FileNotFoundError:  # a relative path from a folder that is gone: the one an earlier export replaced
        raise SystemExit(f"error: --output_dir {cfg.output_dir}: the folder this command runs in no longer exists "
                         "(replaced by an export?): cd into it again") from None
    # a scheduler's SIGTERM stops the export between two shards, whose files are then whole
    handlers = ({sig: signal.getsignal(sig) for sig in stop_signals.STOP_SIGNALS}
                if threading.current_thread() is threading.main_thread() else {})
    if handlers:
        stop_signals.install()
    signals_before, pushing = len(stop_signals.received), False
    try:
        if cfg.push_to_hub:  # before hours of export, not after
            from modeling.hub import check_hub_ready  # torch and timm load only on this path

            check_hub_ready(cfg.push_to_hub, private=not cfg.public, repo_type="dataset")
        ran_in = in_folder(output_dir)
        folder, wrote = _export(cfg.dataset, cfg.output_dir, SHARD_BYTES)
        print(f"wrote {folder}" if wrote else f"{folder}: already holds this export of {cfg.dataset} (same data and "
                                              f"shard size, every file present); nothing to write")
        if wrote and ran_in:  # the shell is left in the folder moved aside and deleted: it shows nothing
            print(f"the folder this command ran in was replaced by the export: `cd {folder}` to see it")
        if cfg.push_to_hub:
            pushing = True
            if handlers:
                stop_while_pushing(folder, signals_before)
            print(f"pushed to {push_dataset(folder, cfg.push_to_hub, private=not cfg.public)}")
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}".splitlines()[0]) from None
    except KeyboardInterrupt as e:  # Stopped, or Ctrl-C
        if pushing and not str(e):
            raise SystemExit(push_stopped("interrupted during the push", output_dir)) from None
        raise SystemExit(str(e) or f"interrupted: finished shards are kept in {work_folder(output_dir)}; run the same "
                                   f"command to resume") from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, handler)


if __name__ == "__main__":
    main(sys.argv[1:])
