"""The order of the input pipeline, and every seed in it: a pure function of the run's place, never of global state.

In: the split's size, the run's seed and the batching (``--batch_size``, processes, accumulation). Out: each
rank's batches of keys ``(epoch, index)`` for ``samples.TrainSet`` (``ResumableSampler``), the random stream of
one sample (``sample_rng``), the seed of one global micro-batch's device-side randomness (``micro_batch_seed``, for
``device``), and a checkpoint's position on another process count (``elastic_position``). Because everything the
samples depend on is keyed by (seed, epoch, index) or by the micro-batch's number in the run, a resumed run sees
exactly the batches an uninterrupted one would, and skipping already-seen batches reads nothing.
"""
from __future__ import annotations

import hashlib
import random

import torch

def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one training sample. Python's Mersenne Twister: it seeds and draws several times faster
    than a numpy Generator, and a sample seeds once and draws a handful of times. The key is
    injective for |seed| < 2**63, 0 <= epoch < 2**32 and 0 <= index < 2**40 (the seed is taken mod 2**64 because
    ``random.Random`` seeds from the absolute value: -s and s would collide)."""
    return random.Random(((seed % 2**64) * 2**32 + epoch) * 2**40 + index)


class ResumableSampler(torch.utils.data.Sampler):
    """Batch sampler of keys ``(epoch, index)``, rank ``rank``'s share of the run's global micro-batches.

    Per epoch a permutation seeded by (seed, epoch) is cut into optimizer steps of ``batch_size * grad_accum_steps
    * num_replicas`` samples (the tail that fills no step is dropped, so every rank runs the same number of full
    steps), and those into *global micro-batches* of ``batch_size``, numbered within the epoch. Rank r's b-th batch
    is global micro-batch ``b * num_replicas + r`` (``global_micro_batch``), so the micro-batches, and so the
    optimizer steps, depend only on (seed, epoch, batch_size), not on how they are dealt out: N processes x A
    accumulation and M x A' with N * A = M * A' compute the same steps from the same batches. That is what lets a
    checkpoint resume on another process count (``elastic_position``; MosaicML streaming's "elastic
    determinism").

    ``set_position(epoch, batch)`` makes the next iteration start at that batch without reading the skipped
    samples (unlike re-iterating, transformers #21934), and only for that epoch (accelerate #1451)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, grad_accum_steps: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if num_samples < batch_size * num_replicas * grad_accum_steps:
            raise ValueError(f"{num_samples} samples do not fill one optimizer step of {batch_size} x "
                             f"{num_replicas} processes x {grad_accum_steps} accumulation")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.num_replicas, self.rank, self.shuffle, self.accum = num_replicas, rank, shuffle, grad_accum_steps
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        """Batches per epoch on each rank: whole optimizer steps x accumulation."""
        return self.num_samples // (self.batch_size * self.num_replicas * self.accum) * self.accum

    def global_micro_batch(self, batch_in_epoch: int) -> int:
        """The number, within its epoch, of the global micro-batch that is this rank's ``batch_in_epoch``-th."""
        return batch_in_epoch * self.num_replicas + self.rank

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, batch_in_epoch: int) -> None:
        if epoch < 0 or not 0 <= batch_in_epoch <= len(self):
            raise ValueError(f"position (epoch {epoch}, batch {batch_in_epoch}) is outside 0..{len(self)} batches")
        self.epoch, self.start = epoch, batch_in_epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of all sample indices (identical on every rank)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator()
        generator.manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self):
        epoch, start = self.epoch, self.start
        order = self.order(epoch).numpy()  # sliced per batch as numpy: no torch op between the steps
        for b in range(start, len(self)):
            first = self.global_micro_batch(b) * self.batch_size
            yield [(epoch, i) for i in order[first:first + self.batch_size].tolist()]
        self.epoch, self.start = epoch + 1, 0  # a finished epoch never leaves its skip behind


def micro_batch_seed(seed: int, epoch: int, micro_batch: int) -> int:
    """The seed of one global micro-batch's own randomness (mixup/cutmix, erasing, drop-path), keyed by its place in
    the run (``ResumableSampler.global_micro_batch``), not by the rank or accumulation step that computes it: a
    global batch draws the same however it is split. A 63-bit hash, in ``torch.manual_seed``'s range."""
    key = f"micro-batch {seed} {epoch} {micro_batch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


BATCHING_KEYS = ("num_processes", "batch_size", "grad_accum_steps")


def elastic_position(batch_in_epoch: int, saved: dict, now: dict) -> int:
    """A checkpoint's per-rank batch position (``saved`` batching: ``BATCHING_KEYS``) as this launch's (``now``).

    The global micro-batches must stay the same, so the same --batch_size and processes x accumulation (hence the
    same global batch): 16 GPUs x accumulation 1 resume on 8 x 2. --batch_size is kept rather than the global batch
    alone because a micro-batch is BatchNorm's and mixup's unit: another split would compute other steps. Anything
    else is a ValueError whose message has the arithmetic and the flags that fit."""
    n, b, a = (saved[k] for k in BATCHING_KEYS)
    m, b2, a2 = (now[k] for k in BATCHING_KEYS)
    if b == b2 and n * a == m * a2:
        return batch_in_epoch * n // m  # a step boundary: n * a * steps global micro-batches, m * a2 per rank
    fit = (f"--batch_size {b} --grad_accum_steps {n * a // m}" if n * a % m == 0 else
           f"--batch_size {b} on a process count that divides {n * a}")
    processes = f"{n} process{'es' if n > 1 else ''}"
    raise ValueError(f"it was saved with {processes} x --batch_size {b} x --grad_accum_steps {a} = {n * b * a} "
                     f"images per step, this launch has {m} x {b2} x {a2} = {m * b2 * a2}; resume with {fit} "
                     f"(the same {b}-image micro-batches, processes x accumulation = {n * a})")

