"""Images that fail to decode cost one image each, not the run: a training sample is replaced by another row
(``TrainSet.sample``: the same choice on resume and on any process count), an evaluation image is left out of the
scores (``EvalSet`` labels it ``-(row + 1)``, ``metrics.evaluate`` drops it). This module records them: which
split, row, image_id and Arrow file, and stops the run past a limit, since many bad images mean a damaged copy
that ``preprocess.py --verify`` names file by file.

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

import json
import sys
from pathlib import Path

import datasets
import pyarrow as pa

from .data.decode import decode_scaled, probe
from .data.rows import Rows
from .loader_setup import WatchedLoader
from .runinfo import atomic_write_text

RECORD = "bad_samples.json"  # in the run folder: every undecodable image met so far, with where it lives


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


def describe(split_name: str, split: datasets.Dataset, row: int) -> dict:
    """split, row, image_id (when the split has one) and Arrow file of one image."""
    image_id = split.select_columns(["image_id"])[row]["image_id"] if "image_id" in split.column_names else None
    return {"split": split_name, "row": row, "image_id": image_id, "arrow_file": arrow_file(split, row)}


class BadSamples:
    """The undecodable images of a run (or a validation), keyed by (split, row); ``limit`` is --max_bad_samples.
    ``add`` takes this process's finds; ``share`` merges every rank's and writes RECORD (main process); ``check``
    stops past the limit."""

    def __init__(self, splits: dict[str, datasets.Dataset], limit: int, folder: Path | None = None):
        self.splits, self.limit, self.folder = splits, limit, folder
        self.shared: dict[tuple[str, int], dict] = {}  # every rank's, this launch's and earlier launches'
        record = folder / RECORD if folder is not None else None
        if record is not None and record.is_file():
            try:
                self.shared = {(e["split"], e["row"]): e for e in json.loads(record.read_text())}
            except (ValueError, KeyError, TypeError):
                print(f"warning: {record} is damaged; it is written anew", file=sys.stderr)
        self.seen = dict(self.shared)  # and this process's finds since
        self.unshared: list[dict] = []  # this process's finds since the last share

    def add_left_out(self, split_name: str, rows: list[int], warn: bool) -> None:
        """Evaluation's left-out rows (known on every rank: ``warn`` on one)."""
        for row in rows:
            self.add(split_name, row, "does not decode", warn=warn)

    def add(self, split_name: str, row: int, error: str, replaced_by: int | None = None, warn: bool = True) -> None:
        if (split_name, row) in self.seen:
            return
        entry = {**describe(split_name, self.splits[split_name], row), "error": error,
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

    def write(self, entries=None) -> None:
        """RECORD anew with ``entries`` (by default every rank's shared finds; main process), atomically: a kill
        never leaves half a list."""
        if self.folder is not None:
            entries = self.shared.values() if entries is None else entries
            atomic_write_text(self.folder / RECORD, json.dumps(sorted(entries, key=lambda e: (
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
            self.write()

    def check(self) -> None:
        """SystemExit past the limit: one flipped byte is one image, many are a damaged copy of the dataset."""
        if len(self.seen) > self.limit:
            raise SystemExit(self.error(self.seen))

    def over_limit(self) -> bool:
        """Whether the finds shared so far pass the limit: the same answer on every rank between two ``share``s."""
        return len(self.shared) > self.limit

    def error(self, found: dict[tuple[str, int], dict],
              remedy: str = "copy them again or rerun preprocess.py") -> str:
        """The one line that stops a run or a validation with ``found`` (more than the limit) undecodable images,
        ending with ``remedy``."""
        where = f"; listed in {self.folder / RECORD}" if self.folder is not None else ""
        return (f"error: {len(found)} images do not decode, more than --max_bad_samples {self.limit} "
                f"(e.g. {self.line(next(iter(found.values())))}){where}. The dataset is damaged: "
                f"`python preprocess.py --verify DATASET` names every bad file; {remedy}")

    def unreplaceable(self, row: int | None, reason: str) -> str:
        """The one line that stops training at a train ``row`` that does not decode and whose stand-ins do not
        either (``reason``: ``data.UnreplaceableRow``'s message). RECORD gets the row and every find this process
        knows of first, from whichever rank meets it: the others may wait in a collective and never share."""
        if row is not None:
            self.add("train", row, reason, warn=False)
        self.write(self.seen.values())
        where = f"; listed in {self.folder / RECORD}" if self.folder is not None else ""
        which = "train" if row is None else f"train row {row} (image_id {self.seen['train', row]['image_id']})"
        return (f"error: {which}: {reason.removeprefix(f'row {row}: ')}{where}. The dataset is damaged: `python "
                "preprocess.py --verify DATASET` names every bad file; copy them again or rerun preprocess.py")

    @staticmethod
    def line(entry: dict) -> str:
        fate = (f"replaced by row {entry['replaced_by']}" if "replaced_by" in entry else "left out of the scores")
        return (f"{entry['split']} row {entry['row']} (image_id {entry['image_id']}, {entry['arrow_file']}) does "
                f"not decode: {fate}")

    @staticmethod
    def repaired_line(entry: dict) -> str:
        # A train row's stand-in is a function of (seed, row, try) alone (data.samples.replacement_row), so a row
        # that decodes again is simply no longer replaced: the run's earlier steps saw the stand-in
        change = (f"from here on it is sampled itself instead of row {entry['replaced_by']}, so this run is not "
                  "bit-identical to one on the repaired data from the start" if "replaced_by" in entry
                  else "it is scored again")
        return (f"{entry['split']} row {entry['row']} (image_id {entry['image_id']}) decodes now: no longer "
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
