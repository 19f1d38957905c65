"""The signals that ask train.py to checkpoint and stop, and the record it leaves. Imports nothing heavy: train.py
installs the handlers before it imports torch, so a signal in the first seconds of a launch is remembered, not fatal.

- SIGUSR1: what slurm/train.sbatch asks SLURM to send ahead of the time limit (``--signal=USR1@300``).
- SIGTERM: what SLURM preemption, Kubernetes and cloud spot reclaims send, followed by SIGKILL after a grace time
  (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds: 30 s by default; accelerate 1.16's launcher, passing
  it on: 5 s on one process, 30 s under torchrun).
"""
from __future__ import annotations

import signal
import time

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STOPPED_STATUS = 75  # exit status after that checkpoint: sysexits.h EX_TEMPFAIL, "temporary failure, try again"
STOPPED_RECORD = "stopped_on_signal.json"  # the same news in the run folder: launchers turn any rank's status into 1

received: list[signal.Signals] = []  # signals that reached this process, in order
received_at: list[float] = []  # when each did, time.monotonic() s: how long the stop took after the first


def _remember(signum, frame) -> None:
    received.append(signal.Signals(signum))
    received_at.append(time.monotonic())


def seconds_since_first() -> float | None:
    """Seconds since the first stop signal reached this process (None: none did; it reached another rank)."""
    return round(time.monotonic() - received_at[0], 2) if received_at else None


def install() -> None:
    """Remember STOP_SIGNALS instead of dying of them (idempotent)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)
