"""When train.py checkpoints and stops, decided alike on every rank: a stop signal (stop_signals.py), the
--save_every_minutes clock, the NaN guard and the undecodable images past --max_bad_samples (StopSignal), and the
stop itself after its checkpoint (exit_stopped, exit_bad_samples). In: the ranks' signal flags, the loss so far, the
weights and the bad images found, once per --log_every_steps, and the signal flags at each batch of an evaluation
(StopSignal.until_signal). Out: whether to checkpoint, whether to stop, and the mean train loss.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from imagenet_trainer import checkpoints, stop_signals
from imagenet_trainer.bad_samples import BadSamples
from imagenet_trainer.runinfo import atomic_write_text
from imagenet_trainer.stop_signals import STOPPED_RECORD, STOPPED_STATUS


class StoppedDuringEval(Exception):
    """A stop signal came during an evaluation (StopSignal.until_signal): every rank left it at the same batch."""


class StopSignal:
    """When to checkpoint and stop: a stop signal (imagenet_trainer/stop_signals.py), the --save_every_minutes clock,
    and the NaN guard, decided alike on every rank. `check` is the one host sync of a log interval: one all-reduce of
    [non-finite count, loss sum, one count per stop signal, save-due flag, ranks with unshared bad images], read
    once; only when some rank met an undecodable image do the ranks also share them (BadSamples.share). One process
    also reads its own signal flag every step (no device round trip); several act on it at the next check, so all
    stop at the same step, and every rank knows which signal it was, wherever it arrived."""

    def __init__(self, save_every_minutes: float):
        stop_signals.install(ctrl_c=True)
        self.save_every_s = save_every_minutes * 60
        self.last_save = time.monotonic()
        self.signals, self.save_due = [], False  # what the ranks agreed at the last check

    def requested(self, num_processes: int) -> bool:
        return bool(stop_signals.received) if num_processes == 1 else bool(self.signals)

    def signal_name(self) -> str:
        return "+".join(sig.name for sig in self.signals or dict.fromkeys(stop_signals.received))

    def saved(self) -> None:
        self.last_save, self.save_due = time.monotonic(), False

    def check(self, accelerator: Accelerator, model, loss_sum: torch.Tensor, loss_count: int, step: int,
              ckpt_dir: Path, bad: BadSamples) -> float:
        """The mean train loss so far (over ranks); updates `signals`/`save_due` and `bad`'s shared finds; stops the
        run, before a NaN/inf reaches a checkpoint, when the loss or a weight is not finite (the last checkpoint stays
        the last good one)."""
        nonfinite_count = (~torch.isfinite(loss_sum)).sum()
        for p in model.parameters():  # under FSDP2 each rank checks its own shard (DTensor.to_local)
            nonfinite_count += (~torch.isfinite(p.to_local() if hasattr(p, "to_local") else p)).sum()
        due = 0 < self.save_every_s <= time.monotonic() - self.last_save
        host = queued_copy([*self._local_counts(), float(due), float(bool(bad.unshared))], accelerator.device)
        flags = torch.cat([nonfinite_count.float().view(1), loss_sum.float().view(1), host])
        nonfinite, total_loss, *counts, save_due, new_bad = accelerator.reduce(flags, "sum").tolist()
        if new_bad:  # every rank learned it from the same sum, so all of them enter the gather
            bad.share(accelerator)
        loss = total_loss / accelerator.num_processes / max(1, loss_count)
        if nonfinite:
            try:
                last_good = checkpoints.newest_complete(ckpt_dir)[0]
                then = (f"then --resume_from_checkpoint {last_good}" if last_good else
                        "then run again (no checkpoint was saved yet)")
            except ValueError as e:  # a checkpoint that cannot be read now: the NaN is still the news
                last_good, then = f"unknown: {e}", "then --resume_from_checkpoint latest"
            raise SystemExit(f"error: loss is {loss} at step {step} ({int(nonfinite)} non-finite values in the loss "
                             f"and weights); stopping. Last good checkpoint: {last_good or 'none'}. "
                             f"Lower --lr, raise --warmup_epochs or set --clip_grad, {then}.")
        self.signals = [sig for sig, n in zip(stop_signals.STOP_SIGNALS, counts) if n]
        self.save_due = save_due > 0
        return loss

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank got a stop signal, asked of all of them now (a collective on several processes)."""
        if accelerator.num_processes == 1:
            return bool(stop_signals.received)
        counts = queued_copy(self._local_counts(), accelerator.device)
        self.signals = [sig for sig, n in zip(stop_signals.STOP_SIGNALS,
                                              accelerator.reduce(counts, "sum").tolist()) if n]
        return bool(self.signals)

    def until_signal(self, accelerator: Accelerator, batches):
        """`batches` (an evaluation's) for as long as no rank got a stop signal, asked of every rank at each batch,
        so all of them leave at the same one: StoppedDuringEval. A whole ImageNet evaluation takes tens of seconds,
        more than a launcher's or a container's grace time (5-30 s) may leave after a SIGTERM. On one process the
        check reads a flag; on several it is one small all-reduce a batch, beside the batch's own gather."""
        for batch in batches:
            if self.agreed(accelerator):
                raise StoppedDuringEval
            yield batch

    @staticmethod
    def _local_counts() -> list[float]:
        return [float(sig in stop_signals.received) for sig in stop_signals.STOP_SIGNALS]


def queued_copy(values: list[float], device: torch.device) -> torch.Tensor:
    """`values` as a float32 tensor on `device`, the copy queued behind the device's work rather than waited for. A
    copy from pageable host memory to a CUDA device first waits for the stream to drain: a second wait of the host for
    the GPU at each check, beside the `.tolist()` that reads the reduced flags (torch's sync debug mode counts both).
    From pinned memory the copy is queued like a kernel; CUDA's caching host allocator keeps the buffer until it ran."""
    host = torch.tensor(values, dtype=torch.float32)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def exit_stopped(accelerator: Accelerator, step: int, ckpt_dir: Path, signal_name: str) -> None:
    """After the checkpoint a stop signal asked for: STOPPED_RECORD, then every rank exits with STOPPED_STATUS.
    accelerate launch and torchrun report any rank's non-zero status as 1, so the record (written before any rank
    exits) is what tells slurm/train.sbatch to requeue through them."""
    checkpoint = checkpoints.step_folder(ckpt_dir, step)  # the one just written
    if accelerator.is_main_process:
        # how long the stop took: what a grace time (--signal's lead, KillWait, the launcher's) must exceed
        after = stop_signals.seconds_since_first()
        when = "" if after is None else f" {after} s after the signal"
        try:
            atomic_write_text(ckpt_dir.parent / STOPPED_RECORD, stop_record(signal_name, step, checkpoint, after))
        except OSError as e:  # a disk full right after the checkpoint: the checkpoint is whole, the stop goes on
            accelerator.print(f"{signal_name}: checkpoint {checkpoint} written{when}, but not "
                              f"{ckpt_dir.parent / STOPPED_RECORD} ({e.strerror or e}; "
                              f"{checkpoints.free_space(ckpt_dir)}), which tells slurm/train.sbatch to requeue: free "
                              "space, then --resume_from_checkpoint latest")
        else:
            accelerator.print(f"{signal_name}: checkpoint {checkpoint} written{when}; exiting with status "
                              f"{STOPPED_STATUS}. Continue with --resume_from_checkpoint latest")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    raise SystemExit(STOPPED_STATUS)


def stop_record(signal_name: str, step: int, checkpoint: Path, after: float | None) -> str:
    """STOPPED_RECORD's text: one JSON line. slurm_job_id and slurm_restart_count (null outside SLURM; the count is 0
    before the first requeue, where SLURM leaves SLURM_RESTART_COUNT unset) say which run of which job stopped:
    slurm/train.sbatch requeues on a record of its own run only, not on one another job left in the same
    --output_dir, nor on one an earlier run of its own job left (a requeue that then failed for another reason)."""
    job = os.environ.get("SLURM_JOB_ID")
    restarts = os.environ.get("SLURM_RESTART_COUNT") or "0"
    return json.dumps(
        {"exit_status": STOPPED_STATUS, "signal": signal_name, "step": step, "checkpoint": str(checkpoint),
         "seconds_after_signal": after, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "slurm_job_id": job, "slurm_restart_count": int(restarts) if job and restarts.isdigit() else None}) + "\n"


def exit_bad_samples(accelerator: Accelerator, bad: BadSamples, step: int, ckpt_dir: Path) -> None:
    """After the checkpoint of the step where the ranks' shared finds passed --max_bad_samples: every rank exits with
    BadSamples' error line, which then names that checkpoint and both ways on: repair the files and resume (the resume
    re-checks the recorded rows and counts only those still broken: bad_samples.load_run_record), or resume with a
    --max_bad_samples at their number."""
    checkpoint = checkpoints.step_folder(ckpt_dir, step)  # the one just written
    accelerator.wait_for_everyone()
    accelerator.end_training()
    raise SystemExit(bad.error(bad.shared, then=(
        "--resume_from_checkpoint latest counts only the rows still "
        f"broken; or resume as they are with --max_bad_samples {len(bad.shared)}. Either continues from checkpoint "
        f"{checkpoint}")))
