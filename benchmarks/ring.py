"""The cost of handing training batches from DataLoader workers to the main process: fresh shared memory per batch
(data.batch.collate) against reused ring slots (data.ring), in the same run, passes alternating.

    python benchmarks/ring.py [--num_workers 2] [--batch_size 128] [--image_size 192] [--passes 6] [--batches 40]

The samples are ready-made uint8 images (HWC memory viewed as CHW, as the resize kernel leaves them), so only the
hand-off is timed: CPU us per image inside the workers' collate_fn (allocation, mapping, copy) and in the main
process, either receiving a batch and copying its pixels out (the host path; on a GPU box the pin thread's copy of a
fresh batch) or only receiving it (a ring slot reaches a GPU by DMA from the pinned slot), medians over the passes.
Prints one JSON object.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagenet_trainer.config import parse_config  # noqa: E402
from imagenet_trainer.data import collate  # noqa: E402
from imagenet_trainer.data.ring import BatchRing, RingBatch, RingCollate, host_tensors  # noqa: E402
from imagenet_trainer.loader_setup import PREFETCH_FACTOR, RING_SLOTS  # noqa: E402

POOL = 64  # distinct ready-made images the samples cycle through (enough to defeat nothing but the cache's luck)


@dataclass
class RingBenchConfig:
    num_workers: int = 2  # DataLoader worker processes, each with its own ring slots
    batch_size: int = 128  # images per batch (train.py's default)
    image_size: int = 192  # px, square: a progressive-resizing size of FFCV's ResNet recipes
    passes: int = 6  # passes per side, alternating ring and fresh: other jobs on the machine hit both alike
    batches: int = 40  # batches per pass


class Ready(torch.utils.data.Dataset):
    """Index i -> (uint8 CHW view of HWC memory, label, replaced None), as TrainSet.sample gives them."""

    def __init__(self, size: int):
        hwc = torch.randint(0, 256, (POOL, size, size, 3), dtype=torch.uint8)
        self.images = hwc.permute(0, 3, 1, 2)

    def __getitem__(self, i: int):
        return self.images[i % POOL], i, None

    def __len__(self):
        return 10**9


class TimedCollate:
    """A collate_fn's CPU seconds, summed per worker into shared memory the main process reads."""

    def __init__(self, collate_fn, workers: int):
        self.collate_fn, self.cpu_s = collate_fn, torch.zeros(workers, dtype=torch.float64).share_memory_()

    def __call__(self, batch):
        start = time.thread_time()
        out = self.collate_fn(batch)
        self.cpu_s[torch.utils.data.get_worker_info().id] += time.thread_time() - start
        return out


def one_pass(loader, timed: TimedCollate, start: int, copy: bool, cfg: RingBenchConfig) -> tuple[float, float]:
    """(worker us, main-process us) per image of one pass over ``cfg.batches`` batches; ``copy``: the main process
    copies each batch's pixels out (as on a CPU, or the pin thread's copy of a fresh batch on a GPU box), else it
    only receives and lets go (a ring slot's copy to a GPU is DMA from the pinned slot)."""
    loader.batch_sampler.start = start
    worker_before, main_before = timed.cpu_s.sum().item(), time.process_time()
    for batch in loader:
        if copy:
            images = host_tensors(batch)[0] if isinstance(batch, RingBatch) else batch[0].clone()
            del images
        del batch
    main = time.process_time() - main_before
    images = cfg.batches * cfg.batch_size
    return 1e6 * (timed.cpu_s.sum().item() - worker_before) / images, 1e6 * main / images


class Keys(torch.utils.data.Sampler):
    def __init__(self, cfg: RingBenchConfig):
        self.cfg, self.start = cfg, 0

    def __iter__(self):
        size = self.cfg.batch_size
        return iter([list(range(self.start + b * size, self.start + (b + 1) * size)) for b in range(self.cfg.batches)])

    def __len__(self):
        return self.cfg.batches


def main(argv=None) -> None:
    cfg = parse_config(RingBenchConfig, argv, description=__doc__)
    data = Ready(cfg.image_size)
    ring = BatchRing(cfg.num_workers, RING_SLOTS, (cfg.batch_size, cfg.image_size, cfg.image_size, 3))
    sides = {}
    for name, fn in (("ring", RingCollate(ring)), ("fresh", collate)):
        timed = TimedCollate(fn, cfg.num_workers)
        loader = torch.utils.data.DataLoader(data, batch_sampler=Keys(cfg), collate_fn=timed,
                                             num_workers=cfg.num_workers, prefetch_factor=PREFETCH_FACTOR,
                                             persistent_workers=True)
        sides[name] = (loader, timed)
    results = {(name, copy): [] for name in sides for copy in (True, False)}
    for p in range(1 + cfg.passes):  # pass 0 starts the workers and maps the ring: not counted
        for (name, copy), measured in results.items():
            loader, timed = sides[name]
            us = one_pass(loader, timed, p * cfg.batches * cfg.batch_size, copy, cfg)
            if p:
                measured.append(us)
    report = {"config": asdict(cfg), "ring_fallbacks": int(ring.fallbacks.sum())}
    for (name, copy), measured in results.items():
        report[f"{name}, main {'copies out' if copy else 'only receives'}"] = {
            "worker_us_per_image": round(statistics.median(w for w, _ in measured), 1),
            "main_us_per_image": round(statistics.median(m for _, m in measured), 1)}
    for copy in ("copies out", "only receives"):
        fresh, ring_side = report[f"fresh, main {copy}"], report[f"ring, main {copy}"]
        report[f"fresh / ring, main {copy}"] = {k: round(fresh[k] / max(ring_side[k], 1e-9), 2) for k in fresh}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
