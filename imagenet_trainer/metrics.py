"""Top-k accuracy without the Hub: `evaluate.load("accuracy")` downloads its script and fails offline
(huggingface/evaluate #456, #567), and it has no top-5. Counts accumulate on the device; one sync at `compute()`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import normalize


class TopK:
    """Top-1/top-5 (percent) plus the confusion matrix, fed with already-gathered logits and labels."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)):
        self.ks = ks
        self.correct = None  # (len(ks),) correct counts
        self.n = 0
        self.confusion = None  # (num_classes, num_classes) true x predicted, int64
        self.left_out: list[int] = []  # rows whose image does not decode (EvalSet labels them -(row + 1))

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        num_classes = logits.shape[1]
        if self.correct is None:
            self.correct = torch.zeros(len(self.ks), dtype=torch.long, device=logits.device)
            self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=logits.device)
        top = logits.topk(min(max(self.ks), num_classes), dim=1).indices
        hit = top == labels[:, None]
        for i, k in enumerate(self.ks):
            self.correct[i] += hit[:, :k].any(dim=1).sum()
        self.confusion.view(-1).index_add_(0, labels * num_classes + top[:, 0],
                                           torch.ones_like(labels, dtype=torch.long))
        self.n += labels.numel()

    def compute(self) -> dict:
        if self.n == 0:
            return {**{f"top{k}": 0.0 for k in self.ks}, "n": 0, "left_out": len(self.left_out)}
        return {**{f"top{k}": 100.0 * c / self.n for k, c in zip(self.ks, self.correct.tolist())}, "n": self.n,
                "left_out": len(self.left_out)}

    def per_class(self) -> list[dict]:
        """Top-1 accuracy (percent) and count per true class, in label order."""
        cm = self.confusion.cpu()
        total, correct = cm.sum(1), cm.diagonal()
        return [{"label": i, "n": int(t), "top1": (100.0 * float(c) / float(t)) if t else None}
                for i, (c, t) in enumerate(zip(correct.tolist(), total.tolist()))]

    def most_confused(self, k: int = 20) -> list[dict]:
        """The k largest off-diagonal (true, predicted) counts."""
        cm = self.confusion.cpu().clone()
        cm.fill_diagonal_(0)
        values, flat = cm.view(-1).topk(min(k, cm.numel()))
        n = cm.shape[0]
        return [{"true": int(i) // n, "predicted": int(i) % n, "count": int(v)}
                for v, i in zip(values.tolist(), flat.tolist()) if v > 0]


def evaluate(accelerator, net, batches, mean, std, memory_format=torch.channels_last,
             flip: bool = False, on_logits=None) -> tuple[TopK, float]:
    """Top-k counts and mean cross-entropy of ``net`` over uint8 ``batches`` from an Accelerate-prepared loader;
    ``flip`` averages the logits of each image and its mirror (test-time augmentation, FFCV's lr_tta).

    Every rank gets all logits; ``gather_for_metrics`` drops the last batch's padding (repeats that even out the
    ranks' batch counts), so ``n == len(split)`` on any number of processes, less the images that do not decode
    (``topk.left_out``: their rows). Sums stay float32 (MPS has no float64).
    ``on_logits(logits, labels)`` sees every gathered batch whole, in the loader's order, the rows that do not decode
    included (label < 0): ReaL's labels are found by position."""
    topk, loss_sum = TopK(), torch.zeros((), device=accelerator.device)
    full_batch = None
    with torch.no_grad():
        for x, y in batches:
            x = normalize(x, mean, std).contiguous(memory_format=memory_format)
            full_batch = full_batch or x.shape[0]
            # a compiled net (static shapes) runs the smaller last batch eagerly instead of compiling another graph
            run = net if x.shape[0] == full_batch else getattr(net, "_orig_mod", net)
            with accelerator.autocast():
                logits = run(x)
                if flip:
                    logits = (logits + run(x.flip(3))) / 2
            logits, y = accelerator.gather_for_metrics((logits.float(), y))
            if on_logits is not None:
                on_logits(logits, y)
            bad = y < 0  # an image that does not decode: scored by no one, its row reported
            if bad.any():
                topk.left_out.extend((-y[bad] - 1).tolist())
                logits, y = logits[~bad], y[~bad]
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            topk.update(logits, y)
    return topk, loss_sum.item() / max(1, topk.n)
