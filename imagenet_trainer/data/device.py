"""Stage 6 of the input pipeline, on the accelerator: uint8 batch -> the network's input and the loss's targets.

In: a ``batch`` (uint8 NCHW, int64 labels) on the device, and a CPU ``torch.Generator`` seeded with
``sampling.micro_batch_seed``. Out: the normalised float batch (``normalize``; the luminance for a one-channel
network), with random erasing
(``random_erasing``) and then batch mixup/CutMix (``mixup_cutmix``) in timm's order, and soft targets: one-hot
labels mixed with the same weights, each row summing to 1. Label smoothing is the loss's job: train.py passes
these targets to ``F.cross_entropy(..., label_smoothing=...)``, which smooths soft targets the same way
(``targets * (1 - eps) + eps / num_classes``). Every random draw comes from the generator, so a global micro-batch
draws the same on any rank and process count; a CPU generator keeps the draws off the device queue.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

@functools.lru_cache(maxsize=16)
def _stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if max(mean) > 1 or max(std) > 1:
        raise ValueError(f"mean={mean}, std={std}: give them in 0..1 units like timm's data config")
    to = dict(device=device, dtype=torch.float32)
    return torch.tensor(mean, **to).view(1, -1, 1, 1) * 255, torch.tensor(std, **to).view(1, -1, 1, 1) * 255


def _floats(values) -> tuple[float, ...]:
    """mean/std as a hashable tuple; a plain sequence (timm's data config) never becomes a tensor on the step's path."""
    return tuple(values.flatten().tolist()) if torch.is_tensor(values) else tuple(map(float, values))


def normalize(x_uint8: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x - mean) / std of a uint8 NCHW batch, computed in float32 on x's device (cast to ``dtype`` after, e.g. the
    autocast dtype); the memory format of x (channels_last included) is kept. mean/std in 0..1 units (timm). One
    mean and std value (a network that reads one channel, timm's in_chans=1): the RGB batch becomes its luminance
    first (``luminance``), as timm's validate.py feeds such a network (input_img_mode "L")."""
    mean, std = _floats(mean), _floats(std)
    if len(mean) == 1 and x_uint8.shape[1] == 3:
        x_uint8 = luminance(x_uint8)
    m, s = _stats(mean, std, x_uint8.device)
    return (x_uint8.float() - m).div_(s).to(dtype)


_LUMA = (19595, 38470, 7471)  # PIL's convert("L"): ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B in 16-bit fixed point


def luminance(x_uint8: torch.Tensor) -> torch.Tensor:
    """The uint8 N1HW luminance of a uint8 N3HW RGB batch, equal to PIL's ``convert("L")`` of each image (rounded
    as PIL rounds), on x's device and in its memory format."""
    x = x_uint8.to(torch.int32)
    # Python scalars, not a weights tensor: building one on CUDA each call would be a blocking copy, a host sync a step
    luma = x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2]
    return luma.add_(1 << 15).bitwise_right_shift_(16).to(torch.uint8)


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded from one draw of ``generator`` (no host sync when it is a CPU generator)."""
    seed = torch.randint(2**62, (1,), generator=generator, device=generator.device).item()
    return np.random.default_rng(seed)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019) of x with x.flip(0), as timm's Mixup
    ``mode="batch"``: one lambda ~ Beta(alpha, alpha) per batch, CutMix lambda corrected to the clipped box area,
    a 0.5 switch when both are on. Returns (x, soft targets: the one-hot labels mixed with the images'
    weights, each row summing to 1; the loss applies label smoothing to them). The randomness comes only from
    ``generator``; a CPU generator keeps it off the device queue."""
    targets = F.one_hot(y, num_classes).to(torch.float32)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    rng = _numpy_rng(generator)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    if use_cutmix:
        height, width = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        y0, y1 = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, height)  # timm's rand_bbox, odd sizes too
        x0, x1 = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, width)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1 - float((y1 - y0) * (x1 - x0)) / (height * width)
    else:
        x = x * lam + x.flip(0) * (1 - lam)
    return x, targets * lam + targets.flip(0) * (1 - lam)


def random_erasing(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """timm's RandomErasing(mode="pixel") on a normalised batch (Zhong et al. 2017): each image, with ``prob``, gets
    one rectangle of area U(0.02, 1/3) and log-aspect U(log 0.3, log 1/0.3) (10 tries to fit) filled with N(0, 1)
    noise. Vectorised on x's device; all draws come from ``generator`` (through a seed when it lives elsewhere)."""
    if prob <= 0:
        return x
    n, c, height, width = x.shape
    device_rng = generator
    if generator.device != x.device:
        device_rng = torch.Generator(device=x.device)
        device_rng.manual_seed(int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item()))
    u = torch.rand((n, 10, 4), generator=device_rng, device=x.device)
    area = height * width * (0.02 + u[..., 0] * (1 / 3 - 0.02))
    aspect = torch.exp(math.log(0.3) + u[..., 1] * (math.log(1 / 0.3) - math.log(0.3)))
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    fits = (h < height) & (w < width)
    first = fits.float().argmax(1, keepdim=True)  # the first try that fits, as timm's loop takes it
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top = torch.floor(u[..., 2].gather(1, first)[:, 0] * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, first)[:, 0] * (width - w + 1))
    apply = (torch.rand(n, generator=device_rng, device=x.device) < prob) & fits.any(1)
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]
    noise = torch.empty_like(x).normal_(generator=device_rng)  # empty_like keeps channels_last
    return torch.where(mask, noise, x)
