"""Stage 5 of the input pipeline: samples -> one batch, handed from a DataLoader worker without a copy.

In: a list of ``samples`` outputs: (uint8 CHW, label) or ``TrainSet.sample``'s (uint8 CHW, label, replaced).
Out: (uint8 NCHW in channels_last memory, int64 labels), a ``Batch`` carrying the replaced rows for training.
NHWC is the layout ``decode.resize_uint8`` writes (one memcpy per image) and the layout train.py wants on the
device; in a worker the batch is allocated straight in shared memory, its pages mapped by one ``madvise`` call
instead of a page fault per 4 KiB. Next stage, on the accelerator: ``device``.
"""
from __future__ import annotations

import ctypes
import functools
import math
import mmap
import sys

import torch

def collate(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[(uint8 CHW, label)] -> (uint8 NCHW in channels_last memory, int64 labels); TrainSet.sample's triples give
    a ``Batch`` of the same two.

    NHWC is the layout the resize kernel writes, so each image is one memcpy (an NCHW batch costs a transposing copy
    per image), and train.py wants NHWC on the device anyway. Inside a DataLoader worker the batch is allocated
    straight in shared memory, so sending it to the main process copies nothing (as default_collate does)."""
    shape = nhwc_shape(batch)
    if torch.utils.data.get_worker_info() is None:
        nhwc = torch.empty(shape, dtype=torch.uint8)
    else:
        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        nhwc = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        _prefault(nhwc)
    return fill(nhwc, batch)


def nhwc_shape(batch) -> tuple[int, int, int, int]:
    """The (N, H, W, C) of the batch ``collate`` makes of these samples; ValueError unless one uint8 CHW shape."""
    kinds = {(tuple(sample[0].shape), sample[0].dtype) for sample in batch}
    image = batch[0][0]
    if len(kinds) > 1 or image.dtype != torch.uint8 or image.dim() != 3:  # copy_ would broadcast or cast
        raise ValueError(f"collate takes uint8 CHW images of one shape, got {sorted(map(str, kinds))}")
    channels, height, width = image.shape
    return len(batch), height, width, channels


def fill(nhwc: torch.Tensor, batch):
    """Copy the samples' images into ``nhwc`` (one memcpy each): ``collate``'s result, its images viewing ``nhwc``."""
    out = nhwc.permute(0, 3, 1, 2)
    for i, sample in enumerate(batch):
        out[i].copy_(sample[0])
    labels = torch.tensor([sample[1] for sample in batch], dtype=torch.int64)
    if len(batch[0]) > 2:  # TrainSet.sample's: (image, label, replaced or None)
        return Batch((out, labels), [s[2] for s in batch if s[2] is not None])
    return out, labels


class Batch(tuple):
    """(images, labels) of a training batch, and ``replaced``: [(row, replacement row, error)] of its samples that
    did not decode, the news a DataLoader worker sends the main process (bad_samples.RecordingLoader). A tuple, so
    ``x, y = batch`` works; torch's pin_memory calls an object's own ``pin_memory`` first, which keeps the news."""

    def __new__(cls, items, replaced=()):
        batch = super().__new__(cls, items)
        batch.replaced = list(replaced)
        return batch

    def pin_memory(self):
        return Batch((t.pin_memory() for t in self), self.replaced)


MADV_POPULATE_WRITE = 23  # Linux >= 5.14: map a range's pages in one call


@functools.cache
def _madvise():
    if not sys.platform.startswith("linux"):  # the advice number is Linux's; elsewhere pages fault in as usual
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


def _prefault(x: torch.Tensor) -> None:
    """Map a fresh shared-memory tensor's pages with one madvise call instead of one page fault per 4 KiB page on
    first write (37 of them for a 150 KB image, each costly in a VM). Best effort: kernels before Linux 5.14 refuse
    the advice, and the pages fault in one by one."""
    madvise = _madvise()
    if madvise is not None:
        page = mmap.PAGESIZE
        start = x.data_ptr() - x.data_ptr() % page
        madvise(ctypes.c_void_p(start), ctypes.c_size_t(x.data_ptr() + x.numel() - start), MADV_POPULATE_WRITE)

