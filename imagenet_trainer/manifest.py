"""The manifest of a preprocess.py output: every file's size and SHA-256, and the job that made it.

``OUT/preprocess_manifest.json`` is written last, atomically, so its presence means the output is complete and
preprocess.py's own; the rest of OUT may hold a user's files, which it never lists and never touches.
``check_sizes`` is the start-up check of train.py/validate.py (one stat per file: seconds, no reading), ``verify``
the full one (``preprocess.py --verify OUT``, after copying a dataset to another machine: reads every byte).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MANIFEST = "preprocess_manifest.json"
SOURCE_FILE = "source.json"  # beside the DatasetDict: where the data came from (layout, name, counts, split seed)
FORMAT = 1  # of the manifest itself


def file_entry(path) -> dict:
    """{"bytes", "sha256"} of one file; read in 1 MiB blocks, so memory stays flat on a 500 MB shard."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": digest}


def sealed(m: dict) -> dict:
    """``m`` with "sha256", the SHA-256 of its own content: a damaged manifest (a flipped byte in its job record or a
    file entry) is then told from a complete output of another job, and never taken for one."""
    return {**m, "sha256": _digest(m)}


def _digest(m: dict) -> str:
    content = json.dumps({k: v for k, v in m.items() if k != "sha256"}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def read(folder) -> dict | None:
    """The manifest of ``folder``, or None when it has none, or a damaged one (then the output is not complete): not
    the JSON preprocess.py writes, or not matching its own SHA-256 (a manifest without one: its entries' form is
    checked)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or ("sha256" in m and m["sha256"] != _digest(m)):
        return None
    well_formed = all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
                      and len(e["sha256"]) == 64 for e in m["files"].values())
    return m if well_formed else None


def check_sizes(folder, files: dict) -> str | None:
    """The first missing file or file of the wrong size, as one line saying what to do; None when all are right."""
    folder = Path(folder)
    for rel, entry in files.items():
        try:
            size = (folder / rel).stat().st_size
        except FileNotFoundError:
            return (f"{folder / rel} is missing (listed in {MANIFEST}); copy it again from where the dataset was "
                    "made, or rerun preprocess.py")
        if size != entry["bytes"]:
            return (f"{folder / rel} has {size:,} bytes, {MANIFEST} says {entry['bytes']:,} (a truncated or "
                    f"interrupted copy?); copy it again, then check with: preprocess.py --verify {folder}")
    return None


def verify(folder, threads: int | None = None) -> tuple[list[str], int]:
    """([one line per bad file], number of files checked): every listed file re-read and hashed."""
    folder = Path(folder)
    m = read(folder)
    if m is None and (folder / MANIFEST).is_file():
        raise ValueError(f"{folder / MANIFEST}: damaged (not the JSON preprocess.py writes, or not matching its own "
                         "SHA-256): nothing to verify against; copy it again from where the dataset was made")
    if m is None:
        raise ValueError(f"{folder / MANIFEST}: not found or unreadable; it is not a complete preprocess.py output "
                         "(or one made before manifests): nothing to verify against")

    def check(item):
        rel, entry = item
        try:
            got = file_entry(folder / rel)
        except FileNotFoundError:
            return f"{folder / rel}: missing"
        except OSError as e:
            return f"{folder / rel}: cannot read it ({e.strerror or e})"
        if got["bytes"] != entry["bytes"]:
            return f"{folder / rel}: {got['bytes']:,} bytes, expected {entry['bytes']:,} (truncated or damaged)"
        if got["sha256"] != entry["sha256"]:
            return f"{folder / rel}: SHA-256 differs from {MANIFEST} (damaged)"
        return None

    # hashlib releases the GIL on large buffers: threads hash several shards at once
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        bad = [line for line in pool.map(check, sorted(m["files"].items())) if line]
    unlisted = [f"{folder / rel}: not in {MANIFEST} (an edited manifest, or a file added since)"
                for rel in dataset_files(folder) if rel not in m["files"]]
    return bad + unlisted, len(m["files"]) + len(unlisted)


def dataset_files(folder: Path) -> list[str]:
    """The files the dataset itself is made of, relative to ``folder``: dataset_dict.json and every file in its
    split folders. Other files in ``folder`` may be a user's, which the manifest never lists."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
    except (OSError, ValueError, AttributeError):
        return []
    found = ["dataset_dict.json"]
    for split in splits:
        found += sorted(str(p.relative_to(folder)) for p in (folder / str(split)).rglob("*") if p.is_file())
    return found
