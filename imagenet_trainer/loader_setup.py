"""The host side of train.py's DataLoaders: how many worker processes (loader_workers), how they start
(worker_context), whether /dev/shm holds their batches (check_shm), and the batches' copy to the device, overlapped
with the step (on_device).
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import shutil
import signal

import torch

from .data.ring import RingBatch, device_tensors, host_tensors
from .stop_signals import STOP_SIGNALS

PREFETCH_FACTOR = 4  # batches each DataLoader worker keeps ready: covers a slow sample without idling the step
RING_SLOTS = PREFETCH_FACTOR + 2  # batch slots per train worker (data.ring): its prefetched batches, the one the
# step uses and the one being copied out
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of imagenet_trainer/ and modeling/
SHM = "/dev/shm"  # where worker processes hand batches to the main process (shared memory)
WORKER_START = "forkserver"  # workers are forked from a server process that runs no other thread, never from the
# training process: a fork copies each lock as the process's other threads hold it at that instant, and gloo's and
# NCCL's threads take the interpreter's thread-state lock whenever they drop a tensor Python made; before Python
# 3.11.10 and 3.12 a worker forked at that instant hangs before it starts, and every rank with it (CPython gh-112275)
WORKER_PRELOAD = ["imagenet_trainer.data", "accelerate", "timm", "modeling",  # what the server imports once: the
                  # pipeline, and what train.py's and validate.py's imports add, which each worker meets when it runs
                  # the main script again as "__mp_main__" (multiprocessing's way for forkserver and spawn)
                  "imagenet_trainer.fork_server"]  # and the server's own quick end (that module says why)


def local_processes() -> int:
    """Processes launched on this machine: torchrun (and accelerate launch through it) sets LOCAL_WORLD_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def loader_workers(requested: int, print_fn=print) -> int:
    """--num_workers, or for -1 the cores this process may run on (its affinity: taskset, SLURM's cpuset, a
    container's --cpus) shared among this machine's processes, less one for the process itself (it runs the step);
    says what it chose."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(0, cores // local_processes() - 1)
    print_fn(f"--num_workers {workers}: {cores} cores for {local_processes()} process(es) on this machine, one each "
             "for the process itself")
    return workers


def worker_context():
    """The multiprocessing context of every DataLoader with workers, and of the BatchRing they write into: the
    WORKER_START server where the platform has one (Linux, macOS), else the platform's default (spawn on Windows).
    The server starts now, so its imports overlap what the caller does before the first worker starts."""
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
    return context


def check_shm(workers: int, batch_bytes: int, processes: int, shm: str = SHM) -> None:
    """Refuse to start when `shm` cannot hold what the workers of this machine's processes keep there: each train
    worker's ring slots (allocated for the whole run) and, during evaluation, each eval worker's prefetched batches
    (Docker gives containers 64 MB by default: the workers would die with a bus error mid-epoch)."""
    if not workers or not os.path.isdir(shm):
        return
    batches = RING_SLOTS + PREFETCH_FACTOR
    need, free = processes * workers * batches * batch_bytes, shutil.disk_usage(shm).free
    if free < need:
        raise SystemExit(f"error: {shm} has {free / 2**20:.0f} MiB free; {processes} process(es) x {workers} "
                         f"DataLoader workers x {batches} batches ({RING_SLOTS} train slots, {PREFETCH_FACTOR} eval) "
                         f"of {batch_bytes / 2**20:.1f} MiB need {need / 2**20:.0f} MiB: give the container more "
                         f"(docker run --shm-size={need // 2**30 + 1}g) or lower --num_workers / --batch_size")


def on_device(batches, device: torch.device):
    """The loader's (images, labels) on `device`. On CUDA the next batch's copy is issued on a side stream as soon as
    the current one is handed out, so it overlaps the step's compute (pinned batches: a true async copy) instead of
    queueing behind it; the compute stream waits for it only when it uses it. A batch in a ring slot (data.ring)
    frees its slot once its pixels have left it: copied out on the host, or the side-stream copy done on CUDA."""
    if device.type != "cuda":
        for batch in batches:
            yield tuple(t.to(device) for t in host_tensors(batch))
        return
    stream, copying = torch.cuda.Stream(device), []  # copying: ring batches whose slot the side stream may read

    def copy(batch):
        with torch.cuda.stream(stream):
            if isinstance(batch, RingBatch):
                copying.append(batch)
            return device_tensors(batch, device, stream) if batch is not None else ()

    batches = iter(batches)
    pending = copy(next(batches, None))
    while pending:
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        for t in pending:
            t.record_stream(current)  # its memory is the compute stream's to free, not the side stream's
        ready, pending = pending, copy(next(batches, None))
        while copying and copying[0].event.query():  # the side stream finishes its copies in order
            copying.pop(0).release()
        yield ready
