"""Stage 6's hand-off through memory that stays mapped: DataLoader workers write training batches into slots of one
shared-memory tensor the main process owns and reuses, as FFCV and DALI write into buffers they reuse.

``collate`` gives every batch fresh shared memory, which the kernel allocates, zero-fills and maps in the worker,
the main process maps again (a page fault per 4 KiB on first read) and frees after the step; on CUDA the DataLoader's
pin thread then copies it into pinned memory. Here ``BatchRing`` is made once, before the workers start: K slots
per worker of the largest batch (the main process registers them as pinned once, on CUDA), one semaphore per slot
that is up while the slot is free. ``RingCollate`` (the collate_fn) writes a worker's batches into its slots in
turn and sends a small ``RingBatch`` (slot, shape, labels) instead of a tensor; the main process copies the pixels
out (``host_tensors``, or the side-stream copy of ``device_tensors`` on CUDA) and only then puts the slot's
semaphore up again. A semaphore per slot, not a flag in shared memory: its post and wait order memory across
processes on any CPU (ARM too), and a slot is given back by name, so a batch dropped unread (an iterator abandoned
mid-epoch, a persistent loader's reset) frees its own slot when it is collected, whatever the order.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import multiprocessing
import os
import sys
import weakref

import torch

from .batch import _prefault, collate, fill, nhwc_shape

WAIT_S = 5.0  # s a worker waits for its next slot before collating into fresh shared memory instead: far longer
# than a training step, so a free slot is always met in training, while a consumer that keeps every batch (a loop
# over the loader by hand) still gets them, one wait each
_RINGS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # token -> ring, to resolve batches that arrive
_TOKENS = itertools.count()


class BatchRing:
    """``workers`` x ``slots_per_worker`` uint8 slots of ``max_shape`` (N, H, W, C) in shared memory; a smaller
    batch (the last one, a progressive-resizing epoch) uses a prefix of its slot. Make it in the main process
    before the DataLoader starts its workers (they get it with the collate_fn), with the DataLoader's
    multiprocessing ``context`` (default: multiprocessing's), whose workers can open its semaphores."""

    def __init__(self, workers: int, slots_per_worker: int, max_shape: tuple[int, ...], wait_s: float = WAIT_S,
                 context=None):
        self.workers, self.slots_per_worker, self.wait_s = workers, slots_per_worker, wait_s
        self.slot_bytes = math.prod(max_shape)
        storage = torch.UntypedStorage._new_shared(workers * slots_per_worker * self.slot_bytes)
        self.memory = torch.empty(0, dtype=torch.uint8).set_(storage).view(workers * slots_per_worker, -1)
        _prefault(self.memory)  # mapped once here, in every process, instead of on each batch
        context = context or multiprocessing.get_context()
        self.free = [context.BoundedSemaphore(1) for _ in range(workers * slots_per_worker)]
        self.fallbacks = torch.zeros(workers, dtype=torch.int64).share_memory_()  # batches collated without a slot
        self.owner, self.token = os.getpid(), f"{os.getpid()}-{next(_TOKENS)}"
        self.turn = [0] * workers  # each worker's next slot; each worker process has its own copy
        self.pinned = False
        _RINGS[self.token] = self

    def __getstate__(self):  # the main process's registry and CUDA state do not travel to spawned workers
        return {k: v for k, v in self.__dict__.items() if k != "pinned"} | {"pinned": False}

    def acquire(self, worker: int) -> int | None:
        """The slot ``worker`` writes next (taken), or None when it is still held after ``wait_s``."""
        slot = worker * self.slots_per_worker + self.turn[worker]
        if not self.free[slot].acquire(timeout=self.wait_s):
            return None
        self.turn[worker] = (self.turn[worker] + 1) % self.slots_per_worker
        return slot

    def view(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The first prod(shape) bytes of ``slot`` as an NHWC tensor of ``shape``."""
        return self.memory[slot, :math.prod(shape)].view(shape)

    def pin(self) -> None:
        """Register the slots as page-locked with CUDA once, so copies from them are truly asynchronous (DMA);
        unregistered at exit. When CUDA refuses (e.g. a locked-memory limit), says so once and copies without."""
        if self.pinned:
            return
        self.pinned = True
        cudart, pointer = torch.cuda.cudart(), self.memory.data_ptr()
        error = cudart.cudaHostRegister(pointer, self.memory.numel(), 0)
        if int(error) != 0:
            # the refusal stays CUDA's "last error", which torch's check after the next kernel launch would raise as
            # that kernel's (torch's binding does not clear it): cleared, or the run cannot go on without pinning
            if not clear_cuda_error():
                raise SystemExit(f"error: cannot pin the {self.memory.numel() / 2**20:.0f} MiB of DataLoader batch "
                                 f"slots ({error}); raise the locked-memory limit (ulimit -l, the container's "
                                 "memlock), or train with --num_workers 0")
            print(f"warning: cannot pin the {self.memory.numel() / 2**20:.0f} MiB of DataLoader batch slots "
                  f"({error}); batches are copied to the GPU from pageable memory (slower)", file=sys.stderr)
            return
        weakref.finalize(self, cudart.cudaHostUnregister, pointer)

    def reset(self) -> None:
        """Every slot free again, for the new workers of a DataLoader whose workers are all gone (one died or hung):
        a slot a killed worker held, or one whose batch sat unread in the dropped iterator's queue, is given back by
        no one. Safe only when no RingBatch of this ring is left unreleased (it would give its slot back again)."""
        if self.pinned:
            torch.cuda.synchronize()  # no copy out of a slot is still running
        for free in self.free:
            free.acquire(block=False)  # a BoundedSemaphore(1) at 0 or 1: taken if it was free, then up either way
            free.release()


def clear_cuda_error() -> bool:
    """cudaGetLastError of the CUDA runtime this process loaded (the libcudart torch links, found in /proc/self/maps;
    dlopen of a loaded path returns that library, its state included), which returns the last error and resets it;
    False where no runtime is found to call."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "/libcudart" in line), None)
    except OSError:
        return False
    if path is None:
        return False
    try:
        ctypes.CDLL(path).cudaGetLastError()
    except (OSError, AttributeError):
        return False
    return True


class RingBatch:
    """What a worker sends for a batch written into a ring slot: the slot, the NHWC shape used, the labels and
    ``replaced`` (as ``Batch``). In the main process it resolves to the slot's view (``images``) until ``release``
    (or its collection) frees the slot; a CUDA ``event`` set on it is waited for first."""

    def __init__(self, token: str, slot: int, shape: tuple[int, ...], labels: list[int], replaced: list):
        self.token, self.slot, self.shape, self.labels, self.replaced = token, slot, shape, labels, replaced
        self.ring, self.event = None, None

    def __reduce__(self):
        return _arrived, (self.token, self.slot, self.shape, self.labels, self.replaced)

    def pin_memory(self):  # the DataLoader's pin thread: the slot is registered as pinned memory already
        return self

    def images(self) -> torch.Tensor:
        """uint8 NCHW in channels_last memory, a view of the slot: valid until ``release``."""
        return self.ring.view(self.slot, self.shape).permute(0, 3, 1, 2)

    def release(self) -> None:
        if self.ring is None:
            return
        if self.event is not None:
            self.event.synchronize()  # the side-stream copy still reads the slot
        self.ring.free[self.slot].release()
        self.ring = None

    def __del__(self):
        self.release()


def _arrived(token: str, slot: int, shape: tuple[int, ...], labels: list[int], replaced: list) -> RingBatch:
    """A RingBatch unpickled: in the process that owns its ring it holds the slot until released."""
    batch = RingBatch(token, slot, shape, labels, replaced)
    ring = _RINGS.get(token)
    if ring is not None and ring.owner == os.getpid():
        batch.ring = ring
    return batch


class RingCollate:
    """The collate_fn: in a DataLoader worker, the batch written into the worker's next ring slot (a ``RingBatch``);
    ``collate``'s fresh batch when that slot stays held past the ring's ``wait_s`` (counted in ``ring.fallbacks``)
    or the batch is larger than a slot, and in the main process (num_workers 0)."""

    def __init__(self, ring: BatchRing):
        self.ring = ring

    def __call__(self, batch):
        info = torch.utils.data.get_worker_info()
        if info is None:
            return collate(batch)
        shape = nhwc_shape(batch)
        slot = self.ring.acquire(info.id) if math.prod(shape) <= self.ring.slot_bytes else None
        if slot is None:
            self.ring.fallbacks[info.id] += 1
            return collate(batch)
        made = fill(self.ring.view(slot, shape), batch)
        return RingBatch(self.ring.token, slot, shape, made[1].tolist(), getattr(made, "replaced", []))


def host_tensors(batch) -> tuple[torch.Tensor, ...]:
    """A loader's batch as tensors the caller owns: a RingBatch's pixels copied out of its slot (channels_last
    kept), which is then freed."""
    if not isinstance(batch, RingBatch):
        return tuple(batch)
    images = batch.images().clone()
    batch.release()
    return images, torch.tensor(batch.labels, dtype=torch.int64)


def device_tensors(batch, device: torch.device, stream) -> tuple[torch.Tensor, ...]:
    """A loader's batch copied to CUDA ``device`` on ``stream`` (asynchronously); a RingBatch gets the copy's
    ``event``, which its ``release`` waits for."""
    if not isinstance(batch, RingBatch):
        return tuple(t.to(device, non_blocking=True) for t in batch)
    batch.ring.pin()
    # pinned: a copy from pageable memory may wait for the stream to drain first (CUDA's cudaMemcpyAsync notes)
    labels = torch.tensor(batch.labels, dtype=torch.int64).pin_memory()
    out = batch.images().to(device, non_blocking=True), labels.to(device, non_blocking=True)
    batch.event = torch.cuda.Event()
    batch.event.record(stream)
    return out
