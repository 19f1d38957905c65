"""The host side of train.py's (and validate.py's) DataLoaders: how many worker processes (loader_workers), whether
/dev/shm holds their batches (check_shm), and the batches' copy to the device, overlapped with the step
(on_device). How the workers start: worker_processes.worker_context.
"""
from __future__ import annotations

import os
import shutil
import time

import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from .data.ring import RingBatch, device_tensors, host_tensors
from .worker_processes import auto_workers, available_cores, local_processes

PREFETCH_FACTOR = 4  # batches each DataLoader worker keeps ready: covers a slow sample without idling the step
RING_SLOTS = PREFETCH_FACTOR + 2  # batch slots per train worker (data.ring): its prefetched batches, the one the
# step uses and the one being copied out
SHM = "/dev/shm"  # where worker processes hand batches to the main process (shared memory)


class WatchedLoader(DataLoader):
    """A DataLoader whose wait for a batch notices a dead worker within MP_STATUS_CHECK_INTERVAL (5 s), its
    ``timeout`` kept for hung ones. torch's waits out the whole ``timeout`` first (its dead-worker check runs when a
    wait ends, and no SIGCHLD reaches this process: the fork server is the workers' parent), so a worker the OOM killer
    takes would cost a rank the full 300 s of train.py's LOADER_TIMEOUT_S while the other ranks sit in a collective."""

    def _get_iterator(self):
        if self.num_workers == 0 or self.timeout <= 0:  # torch's own loop already looks every 5 s
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _WatchedIter(self)


class _WatchedIter(_MultiProcessingDataLoaderIter):
    def _get_data(self):
        deadline = time.monotonic() + self._timeout
        while (left := deadline - time.monotonic()) > 0:
            # raises torch's "DataLoader worker (pid(s) ...) exited unexpectedly" when a wait finds one dead
            success, data = self._try_get_data(min(left, MP_STATUS_CHECK_INTERVAL))
            if success:
                return data
            # after the workers' check: a worker's death can end the pin thread too (a batch it cannot unpickle),
            # and the restart reads the worker's message
            if self._pin_memory and not self._pin_memory_thread.is_alive():
                raise RuntimeError("Pin memory thread exited unexpectedly")
        raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")


def loader_workers(requested: int, print_fn=print) -> int:
    """--num_workers, or for -1 auto_workers' count (the cores per local process less one), saying what it chose."""
    if requested >= 0:
        return requested
    workers = auto_workers()
    print_fn(f"--num_workers {workers}: {available_cores()} cores for {local_processes()} process(es) on this machine, "
             "one each for the process itself")
    return workers


def check_shm(workers: int, batch_bytes: int, processes: int, shm: str = SHM, ring_slots: int = RING_SLOTS) -> None:
    """Refuse to start when `shm` cannot hold what the workers of this machine's processes keep there: each train
    worker's ``ring_slots`` (allocated for the whole run; 0 for an evaluation alone, validate.py) and, during
    evaluation, each eval worker's prefetched batches (Docker gives containers 64 MB by default: the workers would die
    with a bus error mid-epoch)."""
    if not workers or not os.path.isdir(shm):
        return
    batches = ring_slots + PREFETCH_FACTOR
    need = processes * shm_need(workers, batch_bytes, ring_slots)
    free = shutil.disk_usage(shm).free
    if free < need:
        held = f"{ring_slots} train slots, {PREFETCH_FACTOR} eval" if ring_slots else "prefetched"
        raise SystemExit(f"error: {shm} has {free / 2**20:.1f} MiB free; {processes} process(es) x ({workers} "
                         f"DataLoader workers x {batches} batches ({held}) "
                         f"+ {IN_HAND} in hand) of {batch_bytes / 2**20:.1f} MiB need {need / 2**20:.1f} MiB: give "
                         f"the container more (docker run --shm-size={need // 2**30 + 1}g) or lower --num_workers / "
                         "--batch_size")


def shm_need(workers: int, batch_bytes: int, ring_slots: int) -> int:
    """Bytes of shared memory one process's loader holds with ``workers``: each worker's ring slots (train) and
    prefetched batches, + IN_HAND: a batch the process reads while the next one's memory is already taken."""
    return (workers * (ring_slots + PREFETCH_FACTOR) + IN_HAND) * batch_bytes if workers else 0


IN_HAND = 2  # eval batches in the training process's hands beside the workers' prefetched ones: the one it reads and
# the one freed after it (measured: a /dev/shm 1 MiB over workers x (slots + prefetch) batches failed at evaluation)


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
