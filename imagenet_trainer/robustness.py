"""How the papers score a 1000-class ImageNet model on their sets: 200-class masks, ReaL labels, ImageNet-C's mCE,
plus timm's results columns and benchmark numbers (throughput, params, GMACs).

- ImageNet-R / -A (Hendrycks et al. 2021): the logits are restricted to the set's 200 classes and the labels
  renumbered 0..199, as both papers' code does (``output[:, indices_in_1k]``); top-1/top-5 are over the 200.
- ImageNet-R / -A "clean" (timm's ``results-imagenet-{r,a}-clean.csv``; Hendrycks et al. 2021's ImageNet-200): the
  ILSVRC-2012 validation images of the set's 200 classes, scored with the same mask and renumbering: the
  in-distribution figure R and A are compared with.
- ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): ``real.json`` holds one list of 1k labels per validation
  image, in file-name order (entry i is ``ILSVRC2012_val_{i+1:08d}``); a prediction is right when it is in the list;
  images with an empty list are left out (timm's ``RealLabelsImagenet`` does the same).
- ImageNet-C (Hendrycks & Dietterich 2019): E(c, s) = top-1 error at corruption c, severity s; the corruption error
  CE_c = sum_s E(c, s) / sum_s E_AlexNet(c, s), and mCE = the mean of CE_c over the 15 benchmark corruptions.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from imagenet_trainer.eval_sets import C_CORRUPTIONS, corruption_of
from imagenet_trainer.metrics import TopK

# AlexNet's top-1 error on each corruption, averaged over severities 1-5 (fractions), in C_CORRUPTIONS order: the
# normaliser of mCE, as published with ImageNet-C (Hendrycks & Dietterich 2019, ICLR; github.com/hendrycks/robustness)
# and reused verbatim by AugMix (Hendrycks et al. 2020, google-research/augmix imagenet.py ``ALEXNET_ERR``).
ALEXNET_ERRORS = dict(zip(C_CORRUPTIONS, (0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
                                          0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840,
                                          0.606500)))
# timm's results/*.csv columns, in its order; "dataset" (timm's name of the set) leads so one file holds every set
RESULTS_COLUMNS = ("dataset", "model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct",
                   "interpolation", "top1_diff", "top5_diff")


class ClassSubset(torch.nn.Module):
    """``net``'s logits restricted to ``indices`` (ImageNet-R/-A's 200 classes, in 1k index order)."""

    def __init__(self, net: torch.nn.Module, indices: list[int], device):
        super().__init__()
        self.net = net
        self.indices = torch.tensor(indices, device=device)

    def forward(self, x):
        return self.net(x)[:, self.indices]


def subset_labels(batches, indices: list[int], num_classes: int, device):
    """(x, y) batches with y renumbered to its position in ``indices`` (every label must be in it). A negative label,
    an image that does not decode (``-(row + 1)``: metrics.evaluate leaves it out and reports its row), stays as it
    is: as an index it would read the table from its end."""
    lookup = subset_lookup(indices, num_classes, device)
    for x, y in batches:
        yield x, torch.where(y < 0, y, lookup[y.clamp(min=0)])


def subset_lookup(indices: list[int], num_classes: int, device) -> torch.Tensor:
    """A 1k label's position in ``indices`` (the renumbered label), -1 for a class outside them."""
    lookup = torch.full((num_classes,), -1, dtype=torch.long, device=device)
    lookup[torch.tensor(indices, device=device)] = torch.arange(len(indices), device=device)
    return lookup


class SubsetScores:
    """Top-1/top-5 (%), n and mean loss of the images of a 1000-class split whose label is in ``indices`` (R/A's 200
    classes), their logits restricted to those classes and the labels renumbered as ClassSubset and subset_labels do:
    the -clean rows, counted from the logits of the split's own pass. ``update`` is metrics.evaluate's
    ``on_logits`` (gathered batches, padding dropped); an image that does not decode (label < 0) is not counted here:
    ``compute`` is told how many of the subset's images were left out. Counted by metrics.TopK, as every split's
    top-k is; the loss sum stays float32 on the device, as metrics.evaluate's."""

    def __init__(self, indices: list[int], num_classes: int, device):
        self.indices = torch.tensor(indices, device=device)
        self.lookup = subset_lookup(indices, num_classes, device)
        self.topk = TopK()
        self.loss_sum = torch.zeros((), device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        renumbered = torch.where(labels < 0, -1, self.lookup[labels.clamp(min=0)])
        keep = renumbered >= 0
        masked, y = logits[keep][:, self.indices], renumbered[keep]
        self.topk.update(masked, y)
        self.loss_sum += torch.nn.functional.cross_entropy(masked, y, reduction="sum")

    def compute(self, left_out: int) -> dict:
        return {**self.topk.compute(), "loss": self.loss_sum.item() / max(1, self.topk.n), "left_out": left_out}


def read_real_labels(path: str) -> list[list[int]]:
    """real.json: a list per ILSVRC-2012 validation image of its 1k labels; a ValueError naming the flag if not."""
    try:
        real = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise ValueError(f"--real_labels {path}: cannot read it as JSON ({why})") from None
    if not isinstance(real, list) or not all(isinstance(r, list) and all(isinstance(i, int) and 0 <= i < 1000
                                                                         for i in r) for r in real):
        raise ValueError(f"--real_labels {path}: expected ReaL's real.json, a list of lists of class indices 0-999")
    return real


class RealLabels:
    """ReaL top-1/top-5 over the images in order; ``update`` is metrics.evaluate's ``on_logits``."""

    def __init__(self, real: list[list[int]], image_ids: list[str]):
        self.sets = []
        for image_id in image_ids:
            stem = image_id.rsplit("/", 1)[-1]
            number = stem.removeprefix("ILSVRC2012_val_")
            if not number.isdigit() or not 0 < int(number) <= len(real):
                raise ValueError(f"--real_labels: image {image_id!r} has no entry in real.json ({len(real)} entries, "
                                 "one per ILSVRC2012_val_NNNNNNNN); give ILSVRC-2012's validation split")
            self.sets.append(set(real[int(number) - 1]))
        self.position, self.correct, self.n, self.left_out = 0, [0, 0], 0, 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """A gathered batch, whole: a row that does not decode (label < 0) takes its place and is left out, as in
        metrics.evaluate's own scores, and counted in ``left_out`` when ReaL scores that image (it has labels)."""
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
        for predicted, label in zip(top, labels.tolist()):
            labels_here = self.sets[self.position]
            self.position += 1
            # an empty list: no label fits, so ReaL leaves the image out decoded or not, and its n + left_out is the
            # number of images with labels, as another row's n + left_out is its split's
            if labels_here and label < 0:
                self.left_out += 1
            elif labels_here:
                self.n += 1
                self.correct[0] += predicted[0] in labels_here
                self.correct[1] += any(p in labels_here for p in predicted)

    def counts(self) -> list:
        """What ``update`` has counted so far, as JSON: the suite keeps it with a scored split (eval_suite)."""
        return [self.position, self.correct, self.n, self.left_out]

    def restore(self, counts: list) -> None:
        self.position, self.correct, self.n, self.left_out = counts

    def compute(self) -> dict:
        if self.position != len(self.sets):
            raise RuntimeError(f"ReaL: scored {self.position} images of {len(self.sets)}")
        return {"top1": 100.0 * self.correct[0] / max(1, self.n), "top5": 100.0 * self.correct[1] / max(1, self.n),
                "n": self.n, "left_out": self.left_out}


def corruption_errors(top1_by_split: dict[str, float]) -> dict[str, list[float]]:
    """{corruption: [top-1 error (%) at severity 1..5]} from {``<corruption>_<severity>``: top-1 (%)}."""
    errors: dict[str, dict[int, float]] = {}
    for split, top1 in top1_by_split.items():
        corruption, severity = corruption_of(split)
        errors.setdefault(corruption, {})[severity] = 100.0 - top1
    return {c: [by_severity[s] for s in sorted(by_severity)] for c, by_severity in errors.items()}


def mean_corruption_error(errors: dict[str, list[float]], reference: dict[str, float] | None = None) -> dict:
    """CE per corruption and their mean (%), normalised by ``reference`` ({corruption: mean error, fraction};
    AlexNet's published errors by default). Only the 15 benchmark corruptions count; ``corruptions`` says how many
    were there (mCE as published needs all 15)."""
    reference = ALEXNET_ERRORS if reference is None else reference
    ce = {c: 100.0 * (sum(e) / len(e) / 100.0) / reference[c] for c, e in errors.items()
          if c in C_CORRUPTIONS and c in reference and len(e) == 5}
    return {"ce": ce, "mce": sum(ce.values()) / len(ce) if ce else None, "corruptions": len(ce)}


def channels(model: torch.nn.Module) -> int:
    """The image channels ``model`` reads, as timm's data config gives them (1 for an in_chans=1 network)."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)["input_size"][0]


def gmacs(model: torch.nn.Module, image_size: int, device) -> float:
    """Multiply-adds (G) of one image, from torch.utils.flop_counter (FLOPs / 2, as timm's benchmark.py reports)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, channels(model), image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def throughput(model: torch.nn.Module, image_size: int, batch_sizes: list[int], device, steps: int, autocast,
               memory_format=torch.channels_last, train: bool = False) -> list[dict]:
    """Images/s per batch size on random input, as timm's benchmark.py measures them (warm-up, then timed steps,
    under ``autocast``, the run's mixed precision): inference, and with ``train`` a training step too (forward,
    cross-entropy, backward, SGD update; batches of 2 or more) on a copy of the model, so the scored weights stay
    as they are."""
    trainee = copy.deepcopy(model).train() if train else None
    optimizer = torch.optim.SGD(trainee.parameters(), lr=1e-4) if train else None
    rows = []
    for batch_size in batch_sizes:
        x = torch.randn(batch_size, channels(model), image_size, image_size,
                        device=device).contiguous(memory_format=memory_format)
        row = {"batch_size": batch_size, "img_size": image_size}
        with torch.no_grad():
            seconds = _timed(lambda: model(x), steps, device, autocast)
        row.update(infer_samples_per_sec=round(steps * batch_size / seconds, 2),
                   infer_step_time_ms=round(1000 * seconds / steps, 3))
        if train and batch_size < 2:  # BatchNorm cannot train on one image
            row.update(train_samples_per_sec=None, train_step_time_ms=None)
        elif train:
            y = torch.randint(0, 2, (batch_size,), device=device)
            seconds = _timed(lambda: _train_step(trainee, optimizer, x, y), steps, device, autocast)
            row.update(train_samples_per_sec=round(steps * batch_size / seconds, 2),
                       train_step_time_ms=round(1000 * seconds / steps, 3))
        rows.append(row)
    return rows


def _train_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    optimizer.step()


def _timed(step, steps: int, device, autocast) -> float:
    """Seconds for ``steps`` calls of ``step`` after a quarter as many warm-up calls (allocator, cuDNN autotuning);
    the device is synchronised around the timed ones."""
    with autocast():
        for _ in range(max(1, steps // 4)):
            step()
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def results_row(dataset: str, model: str, scores: dict, params_m: float, image_size: int, crop_pct: float,
                interpolation: str, baseline: dict | None) -> dict:
    """One row of results.csv in timm's columns and number formats (its results/generate_csv_results.py: 3 places,
    the diffs signed, "+0.500"); the diffs are to ``baseline`` (ImageNet, or for R and A their -clean row, at the
    same size)."""
    top1, top5 = scores.get("top1"), scores.get("top5")
    return {"dataset": dataset, "model": model, "top1": f"{top1:.3f}", "top1_err": f"{100 - top1:.3f}",
            "top5": f"{top5:.3f}", "top5_err": f"{100 - top5:.3f}", "param_count": round(params_m, 2),
            "img_size": image_size, "crop_pct": crop_pct, "interpolation": interpolation,
            "top1_diff": _signed(top1 - baseline["top1"]) if baseline else None,
            "top5_diff": _signed(top5 - baseline["top5"]) if baseline else None}


def _signed(diff: float) -> str:
    """timm's diff format: "+0.500", "-11.500"; a diff that rounds to 0 is "+0.000", as timm writes it."""
    rounded = round(diff, 3)
    return f"+{rounded:.3f}" if rounded >= 0 else f"-{abs(rounded):.3f}"
