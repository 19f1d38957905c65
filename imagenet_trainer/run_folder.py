"""train.py's --output_dir: what a run folder holds (RUN_FILES), which folders a run may start or continue in
(check_output_dir), and the lock that keeps it one run's (hold_output_dir). A refusal is decided on the main process
and raised on every rank (refuse_together), so all of them exit with the same line.
"""
from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from imagenet_trainer.bad_samples import RECORD as BAD_SAMPLES_RECORD
from imagenet_trainer.runlock import LOCK_FILE, FolderLock
from imagenet_trainer.stop_signals import STOPPED_RECORD

RUN_FILES = {"config.yaml", "run_info.json", "metrics.jsonl", "checkpoints", "final", "resumes", "imagenet-trainer",
             STOPPED_RECORD}  # what train.py writes into --output_dir (imagenet-trainer/: the trackers' logs)
RUN_FILES |= {BAD_SAMPLES_RECORD, LOCK_FILE}


def hold_output_dir(accelerator: Accelerator, run_dir: Path) -> None:
    """One run per folder, fresh or resumed, from its first second: the main process locks run_dir for its lifetime
    (imagenet_trainer/runlock.py), once check_output_dir has found it new, empty or a run's."""
    refusal = None
    if accelerator.is_main_process:
        try:
            lock = FolderLock(run_dir, "--output_dir").acquire()
        except ValueError as e:
            refusal = f"error: {e}"
        else:
            if lock.took_over:
                accelerator.print(lock.took_over)
    refuse_together(accelerator, refusal)


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
             and p.name != LOCK_FILE} if run_dir.is_dir() else set()  # .NAME.*.tmp: an atomic write a kill cut
    if (run_dir / "metrics.jsonl").exists() or ckpt_dir.exists():
        if not resume_from:
            raise SystemExit(f"error: --output_dir {run_dir} already holds a run; continue it with "
                             "--resume_from_checkpoint latest, or pick a new --output_dir")
        return
    earlier_start = "run_info.json" in names and names <= RUN_FILES  # of train.py, stopped before it saved
    if names and not earlier_start:
        foreign = sorted(names - RUN_FILES) or sorted(names)
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SystemExit(f"error: --output_dir {run_dir} is not empty and holds no train.py run ({shown}); give a "
                         "new or empty folder (train.py writes only into its own)")
