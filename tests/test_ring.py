"""data.ring: DataLoader workers writing batches into reused shared-memory slots, with real worker processes."""
from __future__ import annotations

import collections
import multiprocessing

import pytest
import torch

from imagenet_trainer.data import Batch
from imagenet_trainer.data.ring import BatchRing, RingBatch, RingCollate, host_tensors
from imagenet_trainer.loader_setup import PREFETCH_FACTOR, RING_SLOTS, on_device
from imagenet_trainer.worker_processes import worker_context

BATCH, SIDE = 4, 8


class Filled(torch.utils.data.Dataset):
    """Key (side, i) -> (3 x side x side image of i % 251, label i, replaced): row i "did not decode" when
    i % 7 == 3, as TrainSet.sample reports it."""

    def __getitem__(self, key):
        side, i = key
        replaced = (i, i + 1000, "broken") if i % 7 == 3 else None
        return torch.full((3, side, side), i % 251, dtype=torch.uint8), i, replaced

    def __len__(self):
        return 10**6


def epoch_keys(epoch: int, batches: int) -> list[list[tuple[int, int]]]:
    """Keys of an epoch's batches: the side changes with the epoch (progressive resizing) and the last batch is
    short, so both use a prefix of a slot."""
    side = SIDE - 2 * (epoch % 2)
    start = epoch * batches * BATCH
    keys = [[(side, start + b * BATCH + j) for j in range(BATCH)] for b in range(batches)]
    keys[-1] = keys[-1][:BATCH - 1]
    return keys


class Epochs(torch.utils.data.Sampler):
    """A batch sampler whose epoch the test sets between iterators of one persistent loader."""

    def __init__(self, batches: int):
        self.epoch, self.batches = 0, batches

    def __iter__(self):
        return iter(epoch_keys(self.epoch, self.batches))

    def __len__(self):
        return self.batches


def ring_and_context(workers: int, slots: int, start: str = "train.py's", **kw):
    """A BatchRing and the context of its loader's workers: train.py's (worker_context), or `start`'s."""
    context = worker_context() if start == "train.py's" else multiprocessing.get_context(start)
    return BatchRing(workers, slots, (BATCH, SIDE, SIDE, 3), context=context, **kw), context


def loader(ring: BatchRing, context, sampler: Epochs) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Filled(), batch_sampler=sampler, collate_fn=RingCollate(ring),
                                       num_workers=ring.workers, prefetch_factor=PREFETCH_FACTOR,
                                       persistent_workers=True, multiprocessing_context=context)


def check(images: torch.Tensor, labels, keys, replaced) -> None:
    side = keys[0][0]
    assert images.shape == (len(keys), 3, side, side)
    assert images.is_contiguous(memory_format=torch.channels_last)
    for image, (_, i) in zip(images, keys):
        assert (image == i % 251).all(), f"image of row {i} overwritten or misplaced"
    assert list(labels) == [i for _, i in keys]
    assert list(replaced) == [(i, i + 1000, "broken") for _, i in keys if i % 7 == 3]


# 3 slots: fewer than the prefetch, workers wait for the consumer; fork: a loader of the user's own, on Linux
@pytest.mark.parametrize("slots,start", [(RING_SLOTS, "train.py's"), (3, "train.py's"), (3, "fork")])
def test_workers_reuse_their_slots_and_never_overwrite_a_held_one(slots, start):
    ring, context = ring_and_context(2, slots, start)
    sampler = Epochs(batches=12)
    data = loader(ring, context, sampler)
    used = set()
    for epoch in range(4):
        sampler.epoch = epoch
        keys = epoch_keys(epoch, sampler.batches)
        held = collections.deque()  # the consumer lets a batch go only two batches later
        for n, batch in enumerate(data):
            assert isinstance(batch, RingBatch)
            used.add(batch.slot)
            held.append((batch, keys[n]))
            if len(held) > 2:
                old, old_keys = held.popleft()
                check(old.images(), old.labels, old_keys, old.replaced)  # still intact after two more arrived
                x, y = host_tensors(old)
                assert old.ring is None  # released: the slot is the worker's again
                check(x, y, old_keys, old.replaced)
            if epoch == 2 and n == 5:
                break  # an abandoned epoch: its unread batches free their slots when dropped
        for batch, batch_keys in held:
            check(*host_tensors(batch), batch_keys, batch.replaced)
        held.clear()
    assert ring.fallbacks.tolist() == [0, 0]  # every batch went through a slot...
    assert used == set(range(2 * slots))  # ...and the workers went round all of theirs, reusing each


def test_a_consumer_that_never_lets_go_still_gets_every_batch():
    ring, context = ring_and_context(2, 2, wait_s=0.2)
    sampler = Epochs(batches=10)
    keys = epoch_keys(0, sampler.batches)
    kept = list(loader(ring, context, sampler))  # holds every batch: the slots are never released
    assert sum(isinstance(b, RingBatch) for b in kept) == 4 and ring.fallbacks.sum() == 6
    for batch, batch_keys in zip(kept, keys):
        if isinstance(batch, RingBatch):
            check(batch.images(), batch.labels, batch_keys, batch.replaced)
        else:
            assert isinstance(batch, Batch)
            check(*batch, batch_keys, batch.replaced)


def test_on_device_copies_ring_batches_out_on_the_host():
    ring, context = ring_and_context(1, RING_SLOTS)
    sampler = Epochs(batches=20)
    keys = epoch_keys(0, sampler.batches)
    out = list(on_device(loader(ring, context, sampler), torch.device("cpu")))  # every batch kept: each is its own copy
    assert len(out) == len(keys) and ring.fallbacks.item() == 0
    for (x, y), batch_keys in zip(out, keys):
        check(x, y, batch_keys, [(i, i + 1000, "broken") for _, i in batch_keys if i % 7 == 3])
    assert len({x.data_ptr() for x, _ in out}) == len(out)


def test_without_workers_it_collates_in_process():
    ring = BatchRing(1, 1, (BATCH, SIDE, SIDE, 3))
    keys = epoch_keys(0, 1)[0]
    batch = RingCollate(ring)([Filled()[k] for k in keys])
    assert isinstance(batch, Batch)
    check(*batch, keys, batch.replaced)


def test_a_refused_pin_clears_cudas_last_error_or_stops_in_one_line(monkeypatch):
    """cudaHostRegister's refusal stays CUDA's last error, which torch raises after the next kernel launch as that
    kernel's: the ring clears it through the runtime torch loaded, or stops before training in one line."""
    from imagenet_trainer.data import ring as ring_module

    # the runtime torch links is found and called (a CPU-only build of torch has none to call)
    assert ring_module.clear_cuda_error() == (torch.version.cuda is not None)

    class Refusing:  # no GPU here: what torch.cuda.cudart() answers on a host whose locked-memory limit is too low
        @staticmethod
        def cudaHostRegister(pointer, size, flags):
            return 2  # cudaErrorMemoryAllocation

    monkeypatch.setattr(torch.cuda, "cudart", lambda: Refusing)
    monkeypatch.setattr(ring_module, "clear_cuda_error", lambda: False)
    ring = BatchRing(1, 1, (2, 8, 8, 3), context=multiprocessing.get_context("fork"))
    with pytest.raises(SystemExit) as e:
        ring.pin()
    assert str(e.value).startswith("error: cannot pin the ") and "ulimit -l" in str(e.value)
    assert "\n" not in str(e.value)
