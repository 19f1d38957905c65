"""The DataLoader workers' processes, the part that needs no torch: how many a process gets by default
(auto_workers), the context they start from with its fork server (worker_context), and that server's start as a
script's first step (start_early), before the script's own imports.

Why early: the server imports what the workers run (WORKER_PRELOAD: torch, timm, accelerate, datasets), seconds of
work. A server started with the loaders imports them after the script has imported the same modules, and the first
batch waits for those seconds; started first, the two processes import side by side (BENCHMARKS.md, "GPU check").
"""
from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import time
from pathlib import Path

import yaml

from .stop_signals import STOP_SIGNALS

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of imagenet_trainer/ and modeling/
WORKER_START = "forkserver"  # workers are forked from a server process that runs no other thread, never from the
# training process: a fork copies each lock as the process's other threads hold it at that instant, and gloo's and
# NCCL's threads take the interpreter's thread-state lock whenever they drop a tensor Python made; before Python
# 3.11.10 and 3.12 a worker forked at that instant hangs before it starts, and every rank with it (CPython gh-112275)
WORKER_PRELOAD = ["imagenet_trainer.data", "accelerate", "timm", "modeling",  # what the server imports once: the
                  # pipeline, and what train.py's and validate.py's imports add, which each worker meets when it runs
                  # the main script again as "__mp_main__" (multiprocessing's way for forkserver and spawn)
                  "imagenet_trainer.fork_server"]  # and the server's own quick end (that module says why)

started_at: list[float] = []  # time.monotonic() when this process started its server (none yet: empty)


def local_processes() -> int:
    """Processes launched on this machine: torchrun (and accelerate launch through it) sets LOCAL_WORLD_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def available_cores() -> int:
    """The cores this process may run on: its affinity (taskset, SLURM's cpuset, docker --cpuset-cpus), capped by
    its cgroup's CPU quota (docker --cpus, a Kubernetes CPU limit), which leaves the affinity at every core of the
    host: 63 workers on a 64-core node with a limit of 8 CPUs would be throttled, and hold 8x the memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))  # whole CPUs, as Java's and automaxprocs do


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs this process's cgroups allow (quota / period), the smallest along its cgroup's path up to the root;
    None without a quota, or off Linux. cgroup v2: ``cpu.max`` ("max 100000" or "50000 100000"); v1: the cpu
    controller's ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``. A path that is not under ``root`` (a
    v1 container shows the host's /docker/<id>, its own cgroup mounted as the root) is walked up to what is."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        controllers, path = fields[1:]
        if controllers == "":  # v2's unified hierarchy
            bases, read = [root], _v2_limit
        elif "cpu" in controllers.split(","):
            bases, read = [root / name for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu")], _v1_limit
        else:
            continue
        for base in bases:
            folder = base / path.lstrip("/")
            while True:
                limits.append(read(folder))
                if folder == base:
                    break
                folder = folder.parent
    found = [limit for limit in limits if limit]
    return min(found) if found else None


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def auto_workers() -> int:
    """--num_workers -1: the cores this process may run on shared among this machine's processes, less one for the
    process itself (it runs the step)."""
    return max(0, available_cores() // local_processes() - 1)


def worker_context():
    """The multiprocessing context of every DataLoader with workers, and of the BatchRing they write into, its server
    started (or already running, as start_early leaves it): WORKER_START where the platform has it (Linux, macOS),
    else the platform's default (spawn on Windows). The server's imports run in the background: the first worker to
    start waits for them."""
    if WORKER_START not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context()
    context = multiprocessing.get_context(WORKER_START)
    context.set_forkserver_preload(WORKER_PRELOAD)  # for a server not yet started: one process has one server
    # the server and every worker it forks start with the stop signals blocked (a mask outlives fork and exec):
    # SLURM's preemption signals every process of the job, and they must load on until train.py has checkpointed
    # and closes them (torch's own handler ends a worker on a SIGTERM from any process but its parent)
    multiprocessing.resource_tracker.ensure_running()  # before the mask: starting it unblocks SIGTERM on its way
    # the server imports WORKER_PRELOAD with the sys.path of a fresh `python -c` in the current folder (Python 3.11's
    # server ignores the sys.path it is sent; later versions apply it): the project's folder goes first on its
    # PYTHONPATH, so the project's modules load there whichever folder the launch started in
    environ = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (PROJECT, environ)))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop signal that came meanwhile reaches this process now
        if environ is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = environ
    if not started_at:
        started_at.append(time.monotonic())
    return context


def start_early(argv: list[str], default_workers: int = -1) -> None:
    """worker_context, as a script's first step, when its command line gives it DataLoader workers: --num_workers, else
    a --config YAML's num_workers, else `default_workers` (the script's default; -1: auto_workers' count); not for
    --help. The scripts' own parsers come after their imports, too late for this. A wrong guess is cheap: a server
    nobody uses costs its imports' CPU time and idles until the script ends, and one not started here starts with
    the loaders."""
    parser = _Quiet(add_help=False, allow_abbrev=False)
    parser.add_argument("--num_workers", type=int)
    parser.add_argument("--config")
    parser.add_argument("-h", "--help", action="store_true")  # the script prints its help and ends: no loaders
    try:
        args, _ = parser.parse_known_args(argv)
        if args.help:
            return
        workers = args.num_workers
        if workers is None and args.config:
            workers = (yaml.safe_load(Path(args.config).read_text()) or {}).get("num_workers")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # the script's own parser says what is wrong
        return
    workers = default_workers if workers is None else workers
    if workers == -1:
        workers = auto_workers()
    if isinstance(workers, int) and workers > 0:
        worker_context()


class _Quiet(argparse.ArgumentParser):
    def error(self, message):  # no usage printed: the script's own parser reports a bad command line
        raise ValueError(message)
