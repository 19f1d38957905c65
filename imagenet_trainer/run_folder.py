"""train.py's --output_dir: what a run folder holds (RUN_FILES), which folders a run may start or continue in
(check_output_dir), and the lock that keeps it one run's (hold_output_dir, and still_held before each checkpoint and
export), under which what a killed export or checkpoint left is put back (clean_export_leftovers,
checkpoints.clean_leftovers). A refusal is decided on the main process and raised on every rank (refuse_together), so
all of them exit with the same line.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from imagenet_trainer import checkpoints
from imagenet_trainer.bad_samples import RECORD as BAD_SAMPLES_RECORD
from imagenet_trainer.runlock import LOCK_FILE, FolderLock, held
from imagenet_trainer.stop_signals import STOPPED_RECORD

EXPORT = "final"  # the export's folder; a kill during one leaves modeling.save_pretrained's .final.tmp-* folders, and
# between runinfo.replace_dir's two renames .final.old (the previous export) with no final/ beside it
EXPORT_LEFTOVERS = (f".{EXPORT}.tmp-", f".{EXPORT}.old")
RUN_FILES = {"config.yaml", "run_info.json", "metrics.jsonl", "checkpoints", EXPORT, "resumes", "imagenet-trainer",
             STOPPED_RECORD}  # what train.py writes into --output_dir (imagenet-trainer/: the trackers' logs)
RUN_FILES |= {BAD_SAMPLES_RECORD, LOCK_FILE}


def launch_config(run_dir: Path) -> Path:
    """The config.yaml of run_dir's last launch (train.py's record_launch): resumes/<UTC time>/config.yaml of the
    newest resume (the names sort in time), else the first launch's config.yaml; what a resume changed (--image_size,
    --eval_split, --lr) is in that one only."""
    resumes = sorted((run_dir / "resumes").glob("*/config.yaml"))
    return resumes[-1] if resumes else run_dir / "config.yaml"


def hold_output_dir(accelerator: Accelerator, run_dir: Path) -> None:
    """One run per folder, fresh or resumed, from its first second: the main process locks run_dir for its lifetime
    (imagenet_trainer/runlock.py), once check_output_dir has found it new, empty or a run's, then cleans up after an
    export or a checkpoint a kill cut short. A folder that refuses these writes (a full disk, a read-only mount) ends
    the launch in one line."""
    refusal = None
    if accelerator.is_main_process:
        try:
            lock = FolderLock(run_dir, "--output_dir").acquire()
            cleaned = [clean_export_leftovers(run_dir), checkpoints.clean_leftovers(run_dir / "checkpoints")]
        except ValueError as e:
            refusal = f"error: {e}"
        except OSError as e:  # a full disk, a read-only mount, a folder of another user
            refusal = cannot_write(run_dir, e)
        else:
            for line in filter(None, (lock.took_over, *cleaned)):
                accelerator.print(line)
    refuse_together(accelerator, refusal)


def still_held(accelerator: Accelerator, run_dir: Path, before: str) -> None:
    """Before a write another run must not mix with (``before``: "checkpoint step_N", "the export"): the main
    process checks that run_dir's lock is still this run's (FolderLock.check). A run.lock deleted by hand is made and
    locked again, in one line; one another launch has made and taken since (it found no lock) ends this run on every
    rank, in one line, before the write: the other run goes on alone."""
    refusal = None
    if accelerator.is_main_process and (lock := held(run_dir)) is not None:
        try:
            retaken = lock.check()
        except ValueError as e:
            refusal = (f"error: --output_dir {run_dir}: {e}; this run stops before {before}, so that two runs do not "
                       f"write into one folder (never delete the {LOCK_FILE} of a live run)")
        except OSError as e:
            refusal = (f"error: --output_dir {run_dir}: {lock.path} was deleted while this run held it and cannot be "
                       f"made again ({e.strerror or e}); this run stops before {before}")
        else:
            if retaken:
                accelerator.print(f"warning: {retaken}")
    refuse_together(accelerator, refusal)


def cannot_write(run_dir: Path, error: OSError) -> str:
    """The one line a run folder that refuses a write at start-up ends the launch with."""
    return (f"error: --output_dir {run_dir}: cannot write there ({error.strerror or error}; "
            f"{checkpoints.free_space(run_dir)}); free space or make it writable, or give another --output_dir")


def clean_export_leftovers(run_dir: Path) -> str | None:
    """Undo what a kill during an export left (EXPORT_LEFTOVERS), under the run's lock: the unfinished temp folders
    (model-sized each) go, and a previous export caught between the renames becomes final/ again (nothing newer was
    checkpointed: the export comes before its epoch's checkpoint), or goes if final/ was replaced already. One line
    saying what was done, or None."""
    final = run_dir / EXPORT
    temps, old = sorted(run_dir.glob(f"{EXPORT_LEFTOVERS[0]}*")), run_dir / EXPORT_LEFTOVERS[1]
    done = [f"removed {', '.join(p.name for p in temps)} (never moved into place)"] if temps else []
    for path in temps:
        shutil.rmtree(path)
    if old.is_dir() and final.is_dir():
        shutil.rmtree(old)
        done.append(f"removed {old.name} (the export before {final.name}/)")
    elif old.is_dir():
        os.replace(old, final)
        done.append(f"moved {old.name} back to {final.name}/ (the export was cut between its renames)")
    return f"{run_dir}: cleaned up after an export a kill cut short: {'; '.join(done)}" if done else None


def refuse_together(accelerator: Accelerator, refusal: str | None) -> None:
    """The main process's refusal (or None) on every rank, so all of them exit with it."""
    if accelerator.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise SystemExit(refusal)


def check_output_dir(run_dir: Path, ckpt_dir: Path, resume_from: str) -> None:
    """A fresh run goes into a new or empty folder, or one holding only what an earlier start of train.py wrote
    before it saved anything (a failed start never blocks its own command). A run needs --resume_from_checkpoint;
    a folder with anything else in it is refused, so a run never mixes with, or overwrites, a user's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SystemExit(f"error: --output_dir {run_dir} is a file; give a new or empty folder")
    names = {p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))
             and not p.name.startswith(EXPORT_LEFTOVERS) and p.name != LOCK_FILE} if run_dir.is_dir() else set()
    # .NAME.*.tmp: an atomic write a kill cut; EXPORT_LEFTOVERS: an export a kill cut (clean_export_leftovers)
    if (run_dir / "metrics.jsonl").exists() or ckpt_dir.exists():
        if not resume_from:
            raise SystemExit(f"error: --output_dir {run_dir} already holds a run; continue it with "
                             "--resume_from_checkpoint latest, or pick a new --output_dir")
        return
    # of train.py, stopped before it saved: run_info.json, or config.yaml beside the lock (a start stopped between
    # the two records; config.yaml alone may be a user's own)
    earlier_start = names <= RUN_FILES and ("run_info.json" in names or "config.yaml" in names
                                            and (run_dir / LOCK_FILE).is_file())
    if names and not earlier_start:
        foreign = sorted(names - RUN_FILES) or sorted(names)
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SystemExit(f"error: --output_dir {run_dir} is not empty and holds no train.py run ({shown}); give a "
                         "new or empty folder (train.py writes only into its own)")
