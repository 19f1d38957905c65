"""Images that fail to decode cost one image each, not the run: a training sample is replaced by another row
(``TrainSet.sample``: the same choice on resume and on any process count), an evaluation image is left out of the
scores (``EvalSet`` labels it ``-(row + 1)``, ``metrics.evaluate`` drops it). This module records them: which
split, row, image_id and Arrow file (or the image file a row only references), and stops the run past a limit,
since many bad images mean a damaged copy, which a preprocess.py output's ``preprocess.py --verify`` names file by
file. A train row that no other row can stand in for stops the run at once (``unreplaceable``); the rank that meets
it adds its finds to the record itself (``write``: several may, at once).

DataLoader workers cannot write the main process's state: a training batch carries its replaced rows
(``data.Batch.replaced``), which ``RecordingLoader`` hands to ``BadSamples`` as the batch arrives; evaluation's
left-out rows arrive through the gathered labels, on every rank. Training judges the limit on the finds every rank
shares (``over_limit``), at the points where the ranks talk anyway, so all of them stop at the same optimizer step,
after a checkpoint.

A resume first re-checks the rows its record names (``load_run_record``): once ``preprocess.py --verify`` has named
the bad files and they were copied again (or preprocess.py rerun), they decode, stop counting against the limit and
leave the record, and the same --max_bad_samples lets the run go on.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

import datasets
import pyarrow as pa

from .data.decode import decode_scaled, probe
from .data.rows import Rows
from .data.samples import UnreplaceableRow
from .loader_setup import WatchedLoader
from .manifest import MANIFEST
from .runinfo import atomic_write_text

RECORD = "bad_samples.json"  # in the run folder: every undecodable image met so far, with where it lives
# an entry's error that says its row's own image could not be read (data.rows.UnreadableRow), not that it did not
# decode: "row N: the image cannot be read: ...", "row N: the image file PATH cannot be read (...)"
UNREAD = re.compile(r"row \d+: the image (file .+ )?cannot be read")
LEFT_OUT = "does not decode"  # the error of an evaluated row left out: evaluation learns no more than that


def arrow_file(split: datasets.Dataset, row: int) -> str | None:
    """The Arrow file that holds ``row`` of ``split`` (through select/shuffle indices); None for in-memory data."""
    files = [f["filename"] for f in split.cache_files]
    if not files:
        return None
    indices = split._indices  # set by select/shuffle; datasets has no public accessor for it
    physical = row if indices is None else indices.column(0)[row].as_py()
    for name in files:
        with pa.memory_map(name) as source:
            rows = pa.ipc.open_stream(source).read_all().num_rows
        if physical < rows:
            return name
        physical -= rows
    return None


def describe(split_name: str, split: datasets.Dataset, row: int, rows: Rows | None = None) -> dict:
    """split, row, image_id (when the split has one) and Arrow file of one image, and the image file it is read
    from when the row only references one (``rows``: the split's)."""
    image_id = split.select_columns(["image_id"])[row]["image_id"] if "image_id" in split.column_names else None
    image_file = rows.image_file(row) if rows is not None else None
    return {"split": split_name, "row": row, "image_id": image_id, "arrow_file": arrow_file(split, row),
            **({"image_file": image_file} if image_file else {})}


def preprocess_output(split: datasets.Dataset | None) -> Path | None:
    """The preprocess.py output folder ``split`` was loaded from (its manifest beside the split's folder), or None:
    an image folder, a Hub dataset, data in memory."""
    for file in (split.cache_files[:1] if split is not None else []):
        folder = Path(file["filename"]).parent.parent
        if (folder / MANIFEST).is_file():
            return folder
    return None


LOCK_WAIT_S = 10  # s: a rank's read-and-write of RECORD takes milliseconds; longer means a lock held elsewhere


def read_record(path: Path) -> dict[tuple[str, int], dict] | None:
    """RECORD's entries by (split, row): {} when there is none, None when it is damaged."""
    if not path.is_file():
        return {}
    try:
        return {(e["split"], e["row"]): e for e in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def record_lock(folder: Path):
    """An exclusive flock on ``folder`` itself, for reading RECORD and writing it anew: two ranks that each meet
    an unreplaceable row write at once. The folder, not a file of its own: a run folder holds only run_folder's
    RUN_FILES. Best effort: where the filesystem refuses a folder's flock (NFS takes it as a write lock, which a
    folder cannot hold) it goes on unlocked, and so after LOCK_WAIT_S where another process holds it (a wrapper's
    `flock $OUT accelerate launch ...` holds it for the whole run)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # held elsewhere: another rank's write takes milliseconds
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            except OSError:  # refused by the filesystem
                break
        yield
    finally:
        os.close(fd)  # and the flock with it


class BadSamples:
    """The undecodable images of a run (or a validation), keyed by (split, row); ``limit`` is --max_bad_samples.
    ``add`` takes this process's finds; ``share`` merges every rank's and writes RECORD (main process); ``check``
    stops past the limit."""

    def __init__(self, splits: dict[str, datasets.Dataset], limit: int, folder: Path | None = None):
        self.splits, self.limit, self.folder = splits, limit, folder
        found = read_record(folder / RECORD) if folder is not None else {}
        if found is None:
            print(f"warning: {folder / RECORD} is damaged; it is written anew", file=sys.stderr)
        self.shared: dict[tuple[str, int], dict] = found or {}  # every rank's, this launch's and earlier launches'
        self.seen = dict(self.shared)  # and this process's finds since
        self.unshared: list[dict] = []  # this process's finds since the last share
        self.rows: dict[str, Rows] = {}  # by split, made on the first find

    def add_left_out(self, split_name: str, rows: list[int], warn: bool) -> None:
        """Evaluation's left-out rows (known on every rank: ``warn`` on one)."""
        for row in rows:
            self.add(split_name, row, LEFT_OUT, warn=warn)

    def add(self, split_name: str, row: int, error: str, replaced_by: int | None = None, warn: bool = True) -> None:
        if (split_name, row) in self.seen:
            return
        split = self.splits[split_name]
        if split_name not in self.rows:
            self.rows[split_name] = Rows(split)
        entry = {**describe(split_name, split, row, self.rows[split_name]), "error": error,
                 **({"replaced_by": replaced_by} if replaced_by is not None else {})}
        self.seen[split_name, row] = entry
        self.unshared.append(entry)
        if warn:
            print(f"warning: {self.line(entry)}", file=sys.stderr)

    def add_batch(self, replaced) -> None:
        """A training batch's [(row, replacement row, error)]; the limit is judged once every rank's are shared."""
        for row, other, error in replaced:
            self.add("train", row, error, replaced_by=other)

    def share(self, accelerator) -> list[dict]:
        """Every rank's finds since the last call, on every rank (a collective); the main process rewrites RECORD.
        Returns those no earlier call returned, for the epoch log."""
        from accelerate.utils import gather_object  # noqa: PLC0415

        mine, self.unshared = self.unshared, []
        found = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
        new = {}
        for entry in (e for part in found for e in part):
            if (entry["split"], entry["row"]) not in self.shared:
                new.setdefault((entry["split"], entry["row"]), entry)
        self.shared.update(new)
        self.seen.update(new)
        if accelerator.is_main_process and new:
            self.write()
        return list(new.values())

    def write(self, entries=None, forgotten=()) -> None:
        """RECORD anew, atomically (a kill never leaves half a list): what it holds, less the ``forgotten`` keys,
        with ``entries`` (by default every rank's shared finds; main process) added. Read and written under
        ``record_lock``: a rank that meets an unreplaceable row writes while another may too, and neither's row
        may be lost."""
        if self.folder is None:
            return
        with record_lock(self.folder):
            merged = {key: e for key, e in (read_record(self.folder / RECORD) or {}).items() if key not in forgotten}
            merged.update(((e["split"], e["row"]), e) for e in (self.shared.values() if entries is None else entries))
            atomic_write_text(self.folder / RECORD, json.dumps(sorted(merged.values(), key=lambda e: (
                e["split"], e["row"])), indent=1) + "\n")

    def repaired(self) -> list[tuple[str, int]]:
        """The recorded rows of the splits this run reads that decode now (whole image, the strictest check):
        the data was repaired since. Decodes only the recorded rows."""
        rows = {name: Rows(split) for name, split in self.splits.items()}
        return [(name, row) for name, row in sorted(self.shared)
                if name in rows and row < len(rows[name]) and row_decodes(rows[name], row)]

    def forget(self, keys: list[tuple[str, int]], write: bool) -> None:
        """Rows that decode again count no more; ``write``: one line each and RECORD rewritten (main process)."""
        for key in keys:
            entry = self.shared.pop(key)
            self.seen.pop(key, None)
            if write:
                print(self.repaired_line(entry), flush=True)
        if write and keys:
            self.write(forgotten=keys)

    def check(self) -> None:
        """SystemExit past the limit: one flipped byte is one image, many are a damaged copy of the dataset."""
        if len(self.seen) > self.limit:
            raise SystemExit(self.error(self.seen))

    def over_limit(self) -> bool:
        """Whether the finds shared so far pass the limit: the same answer on every rank between two ``share``s."""
        return len(self.shared) > self.limit

    def error(self, found: dict[tuple[str, int], dict], then: str | None = None) -> str:
        """The one line that stops a run or a validation with ``found`` (more than the limit) undecodable images,
        ending with how to mend the files and ``then`` what to run."""
        where = f"; listed in {self.folder / RECORD}" if self.folder is not None else ""
        example = next(iter(found.values()))
        return (f"error: {len(found)} images do not decode, more than --max_bad_samples {self.limit} "
                f"(e.g. {self.line(example)}){where}. {self.damaged(example, then)}")

    def damaged(self, entry: dict | None, then: str | None = None) -> str:
        """What to do about a damaged dataset whose row ``entry`` (RECORD's) does not decode, then ``then``: a
        preprocess.py output's --verify names every bad file to copy again; rows that reference image files (an
        image folder) want those files restored; other Arrow files (a Hub dataset or Parquet folder in datasets'
        cache, a save_to_disk copy) are copied or downloaded again; data in memory is built again."""
        then = f", then {then}" if then else ""
        folder = preprocess_output(self.splits.get(entry["split"])) if entry else None
        if folder is not None:
            return (f"The dataset is damaged: `python preprocess.py --verify {folder}` names every bad file; copy "
                    f"them again or rerun preprocess.py{then}")
        if entry and entry.get("image_file"):
            return f"The dataset is damaged: check or restore the image files{then}"
        if entry and entry.get("arrow_file"):
            return (f"The dataset is damaged: copy {Path(entry['arrow_file']).parent} again (a copy in datasets' "
                    f"cache: delete it and load the dataset again, which downloads or converts it anew){then}")
        return f"The dataset is damaged: build it again{then}"

    def unreplaceable(self, error: UnreplaceableRow) -> str:
        """The one line that stops training at a train row that does not decode and whose stand-ins do not either.
        RECORD gets the row, the rows its batch replaced before it, and every find this process knows of first,
        from whichever rank meets it: the others may wait in a collective and never share."""
        row, reason = error.row_and_reason()
        self.add_batch(error.replaced())
        if row is not None:
            self.add("train", row, reason, warn=False)
        self.write(self.seen.values())
        listed = f"; listed in {self.folder / RECORD}" if self.folder is not None else ""
        which, entry = "train", None
        if row is not None:
            entry = self.seen["train", row]
            which = f"train row {row}{self.where(entry)}"
            if entry.get("image_file"):  # named once, before the colon
                reason = reason.replace(f"the image file {entry['image_file']} ", "the image file ", 1)
        return f"error: {which}: {reason.removeprefix(f'row {row}: ')}{listed}. {self.damaged(entry)}"

    @staticmethod
    def where(entry: dict, arrow: bool = True) -> str:
        """What follows an entry's row in a line: "(image_id, file)", the file being the image file the row is read
        from, or else (``arrow``) its Arrow file; what the entry lacks is left out (nothing: no brackets)."""
        file = entry.get("image_file") or (entry.get("arrow_file") if arrow else None)
        named = [f"image_id {entry['image_id']}"] * (entry.get("image_id") is not None) + [file] * bool(file)
        return f" ({', '.join(named)})" if named else ""

    @staticmethod
    def trained(entry: dict) -> bool:
        """Whether an entry is a training sample's (replaced, or one no row could stand in for), not an evaluated
        row left out: by its split, and by its error where a validation reads a split named train."""
        return "replaced_by" in entry or entry["split"] == "train" and entry.get("error") != LEFT_OUT

    @staticmethod
    def line(entry: dict) -> str:
        if not BadSamples.trained(entry):
            fate = "left out of the scores"
        elif "replaced_by" in entry:
            fate = f"replaced by row {entry['replaced_by']}"
        else:
            fate = "no row could stand in for it, and the run stopped"
        what = "cannot be read" if UNREAD.match(entry.get("error", "")) else "does not decode"
        return f"{entry['split']} row {entry['row']}{BadSamples.where(entry)} {what}: {fate}"

    @staticmethod
    def repaired_line(entry: dict) -> str:
        # A train row's stand-in is a function of (seed, row, try) alone (data.samples.replacement_row), so a row
        # that decodes again is simply no longer replaced: the run's earlier steps saw the stand-in
        if not BadSamples.trained(entry):
            change = "it is scored again"
        elif "replaced_by" in entry:
            change = (f"from here on it is sampled itself instead of row {entry['replaced_by']}, so this run is not "
                      "bit-identical to one on the repaired data from the start")
        else:
            change = "it is sampled itself again"
        return (f"{entry['split']} row {entry['row']}{BadSamples.where(entry, arrow=False)} decodes now: no longer "
                f"counted; {change}")


def decodes(data) -> bool:
    """Whether an encoded image decodes whole, at full scale, with the decoders training and evaluation use."""
    try:
        height, width, fast_ok = probe(data)
        decode_scaled(data, height, width, 1, fast_ok, fast_dct=False)
    except Exception:  # noqa: BLE001 (flipped bytes can break any parser on the way: EXIF, codec)
        return False
    return True


def row_decodes(rows: Rows, row: int) -> bool:
    """``decodes`` of a row's image; False for one that cannot be read (a null image, a referenced file gone)."""
    try:
        data = rows[row][0]
    except ValueError:
        return False
    return decodes(data)


def load_run_record(accelerator, splits: dict[str, datasets.Dataset], limit: int, folder: Path) -> BadSamples:
    """A run's BadSamples at start-up, from its RECORD: the main process re-checks the recorded rows and every rank
    forgets those that decode now (so a resume after a repair counts only what is still broken)."""
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415

    bad = BadSamples(splits, limit, folder)
    repaired = bad.repaired() if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        repaired = broadcast_object_list([repaired])[0]
    bad.forget(repaired, write=accelerator.is_main_process)
    return bad


class RecordingLoader(WatchedLoader):
    """A DataLoader over ``TrainSet`` whose batches' replaced rows go to ``bad`` as they arrive (and whose wait for a
    batch notices a dead worker in seconds: ``WatchedLoader``)."""

    def __init__(self, *args, bad: BadSamples, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad = bad

    def __iter__(self):
        for batch in super().__iter__():
            if getattr(batch, "replaced", None):
                self.bad.add_batch(batch.replaced)
            yield batch
