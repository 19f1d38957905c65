"""The signals that ask train.py to checkpoint and stop, and the record it leaves. Imports nothing heavy: train.py
installs the handlers before it imports torch, so a signal in the first seconds of a launch is remembered, not fatal.

- SIGUSR1: what slurm/train.sbatch asks SLURM to send ahead of the time limit (``--signal=USR1@300``).
- SIGTERM: what SLURM preemption, Kubernetes and cloud spot reclaims send, followed by SIGKILL after a grace time
  (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds: 30 s by default; accelerate 1.16's launcher, passing
  it on: 5 s on one process, 30 s under torchrun).
- SIGINT (Ctrl-C), in train.py (``install(ctrl_c=True)``): the same, so the work since the last checkpoint is kept; a
  second one ends the process at once, without that checkpoint. Left alone where the process started with it ignored
  (``nohup``, a non-interactive shell's background job): whoever started it chose that. Elsewhere Ctrl-C stays a
  KeyboardInterrupt; DataLoader workers block it with the others (worker_processes), as a terminal sends it to all.
"""
from __future__ import annotations

import os
import signal
import time

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
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


def quit_while_importing(line: str, signals=(signal.SIGINT,)):
    """preprocess.py's and validate.py's first step: a stop signal while their heavy imports run (seconds: torch,
    datasets, pyarrow), before anything is read or written, prints ``line`` (``{signal}``: Ctrl-C or the signal's name)
    and ends the process with the shell's status for it, not the traceback of whichever library was loading. A signal
    started ignored (``nohup``) stays ignored. Returns the handler, which the script replaces once its imports are
    done."""
    def quit_now(signum, frame):
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        os.write(2, (line.format(signal=name) + "\n").encode())  # os.write: print is not safe in a handler
        os._exit(128 + signum)

    for stop in signals:
        if signal.getsignal(stop) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(stop, quit_now)
    return quit_now


def _interrupt(signum, frame) -> None:
    """Ctrl-C: the first is a stop signal; the second ends the process now, as Ctrl-C's default does (status 130)."""
    if signal.SIGINT in received:
        os.write(2, b"\nSIGINT again: stopping now, without a checkpoint; --resume_from_checkpoint latest continues "
                    b"from the last one\n")  # os.write: print is not safe in a handler
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    _remember(signum, frame)
    os.write(2, b"\nSIGINT: saving a checkpoint, then exiting (Ctrl-C again: stop now, without it)\n")


def install(ctrl_c: bool = False) -> None:
    """Remember STOP_SIGNALS instead of dying of them (idempotent); SIGINT only with ``ctrl_c``, and an ignored one
    stays ignored."""
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT:
            signal.signal(sig, _remember)
        elif ctrl_c and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
