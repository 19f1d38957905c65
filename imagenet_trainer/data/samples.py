"""Stage 4 of the input pipeline: one training or evaluation sample.

In: a sampler key (``sampling``): ``(epoch, index)`` for ``TrainSet``, ``index`` for ``EvalSet``. Out: (uint8 CHW
crop, label); ``TrainSet.sample`` adds which row stood in for one that does not decode. Next stage: ``batch``.

- ``TrainSet``: RandomResizedCrop (the box drawn on the full-resolution frame from the JPEG header, then only that
  part decoded: ``decode``) + horizontal flip [+ RandAugment / TrivialAugment]. Every random draw comes from the
  sample's own stream, ``sampling.sample_rng(seed, epoch, index)``, so a resumed run and any number of workers or
  processes see exactly the samples an uninterrupted run would.
- A row that does not decode (or cannot be read) is replaced by another row (``replacement_row``), chosen by a
  hash of (seed, row, try) and cropped with the failed row's own random stream: the same choice on resume and on
  any process count. The main process records it (``bad_samples.py``).
- ``EvalSet``: timm's eval transform, the classic Resize(shorter side to image_size / crop_pct) + CenterCrop or its
  ``crop_mode`` squash / border (crop_pct > 1: padded, as timm pads); a row that does not decode (or whose image
  is null or its file unreadable) comes back with label ``-(index + 1)``, left out of the scores and reported
  (``metrics.evaluate``).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re

import datasets
import torch
from torchvision import transforms

from imagenet_trainer.data.decode import (decode_scaled, dct_factor, header_segments, probe, region, tile_grid,
                                          resize_uint8)
from imagenet_trainer.data.rows import Rows, UnreadableRow
from imagenet_trainer.data.sampling import sample_rng

def random_resized_crop_params(height: int, width: int, scale, ratio, rng: random.Random):
    """(top, left, h, w) with torchvision ``RandomResizedCrop.get_params``' rules: 10 tries of area ~ U(scale),
    log-aspect ~ U(log ratio), then a centre crop clamped to ``ratio`` as the fallback; the draws come from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainSet(torch.utils.data.Dataset):
    """Key ``(epoch, index)`` -> (uint8 CHW RandomResizedCrop + flip [+ RandAugment/TrivialAugment], label).

    The sample is a pure function of ``(seed, epoch, index)``: its random stream is seeded with that triple,
    never with global state, so exact resume and any number of workers give the same samples."""

    def __init__(self, split: datasets.Dataset, image_size: int, seed: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 hflip: float = 0.5, auto_augment: str | None = None, progressive: tuple[int, int, int] | None = None,
                 mean: tuple = (0.485, 0.456, 0.406)):
        if auto_augment not in (None, "ra", "ta"):
            raise ValueError(f"auto_augment={auto_augment!r}: use None, 'ra' (RandAugment n=2 m=9) or 'ta' "
                             "(TrivialAugmentWide)")
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale={scale}, ratio={ratio}: each must be an increasing pair of positive numbers")
        if progressive is not None and not (0 < progressive[0] <= image_size and 0 <= progressive[1] <= progressive[2]):
            raise ValueError(f"progressive={progressive}: want (min size <= image_size, start epoch <= end epoch)")
        self.progressive = progressive
        self.rows = Rows(split)
        self.image_size, self.seed, self.scale, self.ratio, self.hflip = image_size, seed, scale, ratio, hflip
        # torchvision's v1 ops take uint8 CHW tensors. RandAugment: 2 ops at magnitude 9 on timm's 0-10 scale, the
        # strength of timm's rand-m9 (ConvNeXt, DeiT); torchvision's default 31 bins would make m9 ~3x weaker.
        # timm's mstd0.5 (magnitude noise) and inc1 (increasing-severity ops) are not reproduced. Rotations, shears
        # and translations resample bilinear (torchvision's references; torchvision's default NEAREST leaves jagged
        # edges) and fill the uncovered border with the model's ``mean`` in 0..255 (timm's img_mean fill: 124, 116,
        # 104 for the ImageNet mean, 128 for a ViT's 0.5; the default black border is a strong artificial edge at
        # magnitude 9: 27 degrees, ~30 % of the side). One value (a one-channel model's) is every channel's.
        geometry = dict(interpolation=transforms.InterpolationMode.BILINEAR,
                        fill=[round(255 * m) for m in (mean if len(mean) == 3 else mean[:1] * 3)])
        self.augment = {None: None,
                        "ra": transforms.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11, **geometry),
                        "ta": transforms.TrivialAugmentWide(**geometry)}[auto_augment]

    def __len__(self) -> int:
        return len(self.rows)

    def size_at(self, epoch: int) -> int:
        """The crop side (px) of an epoch. With ``progressive=(min_size, start, end)`` (progressive resizing, FFCV;
        fast.ai's DAWNBench entry): min_size up to epoch ``start``, then a linear ramp in 32 px steps that reaches
        ``image_size`` at epoch ``end``, as FFCV's ``get_resolution`` computes it (the interpolated side rounded to
        a multiple of 32, halves to even as numpy's round: 176 px -> 192). Low-resolution epochs cost
        ~(size / image_size)^2 of the compute."""
        if self.progressive is None:
            return self.image_size
        low, start, end = self.progressive
        if epoch <= start:
            return low
        if epoch >= end:
            return self.image_size
        side = low + (epoch - start) / (end - start) * (self.image_size - low)
        return min(self.image_size, max(low, round(side / 32) * 32))

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        image, label, _ = self.sample(key)
        return image, label

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[torch.Tensor, int, tuple | None]]:
        """What a DataLoader worker fetches for a batch: ``sample`` of each key, replacements included. An
        UnreplaceableRow carries the rows the batch replaced before it: the batch never reaches the main process."""
        samples = []
        for key in keys:
            try:
                samples.append(self.sample(key))
            except UnreplaceableRow as error:
                raise error.carrying([s[2] for s in samples if s[2] is not None]) from None
        return samples

    def sample(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple | None]:
        """(image, label, None), or, when the row does not decode, another row's (image, label) with (row,
        replacement row, error): the replacement is ``replacement_row`` of (seed, row, try), with the row's own
        random stream, so resume and any process count make the same choice. UnreplaceableRow when the
        REPLACEMENT_TRIES rows tried fail too (a dataset that mostly does not decode)."""
        epoch, index = key
        try:
            return (*self._load(epoch, index, index), None)
        except Exception as e:  # noqa: BLE001 (flipped bytes can break any parser on the way: tiles, EXIF, codec)
            error = one_line(e)
        tries = REPLACEMENT_TRIES if len(self) > 1 else 0  # a one-row split has no other row
        failures = set()
        for attempt in range(1, tries + 1):
            other = replacement_row(self.seed, index, attempt, len(self))
            try:
                return (*self._load(epoch, other, index), (index, other, error))
            except Exception as e:  # noqa: BLE001
                failures.add("cannot be read" if isinstance(e, UnreadableRow) else "do not decode")
        # one line: a DataLoader worker's copy of the error ends with it (UnreplaceableRow.row_and_reason)
        raise UnreplaceableRow(f"row {index}: {error.removeprefix(f'row {index}: ')}; and " + (
            f"{tries} rows tried in its place {' or '.join(sorted(failures))} either" if tries else "the split has "
            "no other row to take its place")) from None

    def _load(self, epoch: int, index: int, stream: int) -> tuple[torch.Tensor, int]:
        """Row ``index``'s crop, drawn from the random stream of row ``stream`` (itself, unless replacing it)."""
        size = self.size_at(epoch)
        rng = sample_rng(self.seed, epoch, stream)
        data, label = self.rows[index]
        try:
            segments = header_segments(data)  # walked once, for the EXIF check and the tiles
            height, width, fast_ok = probe(data, segments)
            top, left, h, w = random_resized_crop_params(height, width, self.scale, self.ratio, rng)
            tiles = tile_grid(data, segments) if fast_ok and segments is not None else None
            oy = ox = 0  # where the decoded part starts in the file (full-resolution px)
            if tiles is not None:  # a tiled JPEG (preprocess.py --restart_tile): decode the tiles under the crop
                data, height, width, oy, ox = region(data, tiles, top, left, h, w)
            pixels, sy, sx = decode_scaled(data, height, width, dct_factor(min(h, w), size), fast_ok, fast_dct=True)
        except OSError as e:  # PIL's UnidentifiedImageError / truncated file
            raise ValueError(f"row {index}: the image does not decode ({one_line(e)})") from None
        # Rounded in the whole image's decoded pixels, then shifted to the part's (tile origins are whole decoded
        # pixels): rounding after the shift would round halves to even differently, a one-pixel-off crop
        dy, dx = round(oy * sy), round(ox * sx)
        y0 = min(round(top * sy), dy + pixels.shape[0] - 1) - dy
        x0 = min(round(left * sx), dx + pixels.shape[1] - 1) - dx
        y1, x1 = max(y0 + 1, round((top + h) * sy) - dy), max(x0 + 1, round((left + w) * sx) - dx)
        out = resize_uint8(torch.from_numpy(pixels)[y0:y1, x0:x1], (size, size), "bilinear")
        if rng.random() < self.hflip:
            out = out.flip(-1)
        if self.augment is not None:
            # torchvision's ops draw from torch's global RNG: fork it and seed it from this sample's key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng.getrandbits(63))
                out = self.augment(out)
        return out, label


REPLACEMENT_TRIES = 8  # rows tried in place of one that does not decode before the batch fails


def one_line(error: Exception) -> str:
    """An error's message on one line, without the object reprs decoders put in it ("cannot identify image file
    <_io.BytesIO object at 0x7f...>": an address says nothing about the image)."""
    return " ".join(OBJECT_REPR.sub("", str(error)).split())


OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class UnreplaceableRow(ValueError):
    """A train row that does not decode (or cannot be read), nor do the rows tried in its place: a dataset that
    mostly does not decode. The message's last line is "row N: why; and ..."; a line before it lists the rows its
    batch replaced before it, as JSON after CARRIED (``carrying``). Raised in a DataLoader worker, it reaches the
    main process rebuilt by torch from the worker's formatted traceback, which ends with the message."""

    CARRIED = "rows replaced before it: "

    def carrying(self, replaced: list[tuple[int, int, str]]) -> UnreplaceableRow:
        """This error with ``replaced``, the batch's [(row, replacement row, error)] before it (none: itself)."""
        return UnreplaceableRow(f"{self.CARRIED}{json.dumps(replaced)}\n{self}") if replaced else self

    def row_and_reason(self) -> tuple[int | None, str]:
        """(the row, or None where the message does not name it; the one-line message), direct or via a worker."""
        line = (str(self).strip().splitlines() or [""])[-1]
        line = line.split(f"{type(self).__name__}: ", 1)[-1]  # a worker's traceback names the class first
        found = re.match(r"row (\d+): ", line)
        return (int(found[1]) if found else None), line

    def replaced(self) -> list[tuple[int, int, str]]:
        """The [(row, replacement row, error)] ``carrying`` added, direct or via a worker."""
        for line in reversed(str(self).splitlines()):
            _, carried, listed = line.partition(self.CARRIED)
            if carried:
                try:
                    return [(int(row), int(other), str(error)) for row, other, error in json.loads(listed)]
                except (ValueError, TypeError):
                    return []
        return []


def replacement_row(seed: int, row: int, attempt: int, num_rows: int) -> int:
    """The row that stands in for ``row`` on its ``attempt``-th try: any other row, a hash of (seed, row,
    attempt), so the choice depends on neither epoch, rank, worker nor process count."""
    if num_rows < 2:
        return row
    key = f"replace {seed} {row} {attempt}".encode()
    return (row + 1 + int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (num_rows - 1)
            ) % num_rows


INTERPOLATIONS = ("bilinear", "bicubic")
# timm's eval crop modes (timm.data.transforms_imagenet_eval, pretrained_cfg["crop_mode"]): center for most weights,
# squash for 131 of timm 1.0's tags (tf_efficientnetv2_*, convnext_*_384, maxvit_*_tf_*), border for 6
CROP_MODES = ("center", "squash", "border")


class EvalSet(torch.utils.data.Dataset):
    """index -> (uint8 CHW crop, label) in timm's eval transform (``transforms_imagenet_eval``), with s =
    floor(image_size / crop_pct) (timm's ``scale_size``), by ``crop_mode``:

    - center: the shorter side resized to s, centre crop (the classic ``Resize + CenterCrop``);
    - squash: both sides resized to s, the aspect ratio not kept, centre crop;
    - border: the longer side resized to s, the aspect ratio kept, padded to at least image_size with the mean
      colour (``round(255 * mean)``, timm's fill), centre crop (timm's ``ResizeKeepRatio(longest=1)`` +
      ``CenterCropOrPad``).

    crop_pct > 1 (timm's volo_d4_448, volo_d5_448, volo_d5_512: 1.15) makes s smaller than image_size: center and
    squash then pad the resized image with black (0), as torchvision's ``CenterCrop`` does, before the crop; border
    pads with its mean colour. Every image decodes at full scale (no DCT reduction: see ``__getitem__``)."""

    def __init__(self, split: datasets.Dataset, image_size: int, crop_pct: float = 0.875,
                 interpolation: str = "bilinear", crop_mode: str = "center", mean=(0.485, 0.456, 0.406)):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: use one of {INTERPOLATIONS}")
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode={crop_mode!r}: use one of timm's {', '.join(CROP_MODES)}")
        if not 0 < crop_pct <= image_size:  # NaN included; above image_size the resized side would be 0 px
            raise ValueError(f"crop_pct={crop_pct}: must be > 0 (the crop side over the resized side: 0.875 typical, "
                             f"above 1 pads the crop) and at most the image size, {image_size}")
        self.rows = Rows(split)
        self.image_size, self.interpolation, self.crop_mode = image_size, interpolation, crop_mode
        self.resize_size = math.floor(image_size / crop_pct)
        # the padding colour, 0..255: timm's CenterCropOrPad fill in border mode, CenterCrop's black otherwise
        fill = [round(255 * m) for m in mean] if crop_mode == "border" else [0, 0, 0]
        self.fill = torch.tensor(fill, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.rows)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of ``height`` x ``width`` px is resized to before the crop."""
        size = self.resize_size
        if self.crop_mode == "squash":
            return size, size
        if self.crop_mode == "border":  # timm's ResizeKeepRatio.get_params at longest=1: the larger of the ratios
            ratio = max(height / size, width / size)  # at least 1 px: a strip thinner than ratio / 2 px is not empty
            return max(1, round(height / ratio)), max(1, round(width / ratio))
        # torchvision Resize(int): the shorter side becomes size, the longer int(size * long / short)
        return (size, int(size * width / height)) if height <= width else (int(size * height / width), size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):  # an IndexError, not a left-out row: the end of a sequence
            raise IndexError(f"row {index} is outside 0..{len(self) - 1}")
        try:
            data, label = self.rows[index]  # a null image, or a referenced file gone or unreadable: left out too
            height, width, fast_ok = probe(data)
            new_h, new_w = self.resized_shape(height, width)
            # Full scale: the same pixels as timm's create_transform up to rounding (mean 0.002-0.014 grey levels, max
            # 1, on photos of 1200x1050 to 2048x1365 px). A DCT reduction differs from the antialiased resize on
            # sharp detail and edges, and only slowly less as the resize after it grows: at 1/2 scale 0.4-0.7 grey
            # levels on average (max 14-19) with 5-8x left to resize, 1.05-2.19 with 2x. The cost falls only on
            # photos whose short side is >= 4x the resized one (1024 px at 224 px; ImageNet's are ~500x375), which
            # decode in ~1.4-1.7x the time of a 1/2-scale decode
            pixels, _, _ = decode_scaled(data, height, width, 1, fast_ok, fast_dct=False)
        except Exception:  # noqa: BLE001 (flipped bytes can break any parser on the way: EXIF, codec)
            # scored by no one: metrics.evaluate leaves it out and reports the row (bad_samples.py)
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), -(index + 1)
        # Resizing the whole (reduced) image then cropping reproduces the classic pipeline exactly, borders included
        resized = resize_uint8(torch.from_numpy(pixels), (new_h, new_w), self.interpolation).permute(1, 2, 0)
        size = self.image_size
        if new_h < size or new_w < size:  # border mode or crop_pct > 1: pad, the smaller half top/left (torchvision)
            pad_h, pad_w = max(size - new_h, 0), max(size - new_w, 0)
            canvas = self.fill.expand(new_h + pad_h, new_w + pad_w, 3).clone()
            canvas[pad_h // 2:pad_h // 2 + new_h, pad_w // 2:pad_w // 2 + new_w] = resized
            resized, new_h, new_w = canvas, new_h + pad_h, new_w + pad_w
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        crop = resized[top:top + size, left:left + size]
        return crop.contiguous().permute(2, 0, 1), label  # compact, still HWC in memory (collate's layout)

