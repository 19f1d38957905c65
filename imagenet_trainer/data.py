"""The input pipeline: Arrow rows -> uint8 crops on the CPU, normalisation and batch augmentations on the device.

Why it is fast (benchmarks/loader.py measures it against torchvision's ImageFolder + PIL pipeline):

- JPEG bytes are zero-copy views of the memory-mapped Arrow table (``Rows``), so no per-row Python dicts or PIL
  decoding inside ``datasets``' formatter (slow formatting: datasets #7753, #5669) and no copy of the bytes.
- The random-resized-crop box is drawn on the full-resolution frame from the JPEG header alone, then the image is
  decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the crop at least ``image_size`` pixels wide
  and high: libjpeg-turbo skips most of the IDCT and colour conversion work (FFCV decodes the same way).
- Files that preprocess.py stored as tiles (restart markers every few MCUs: ``jpeg_tiles``) decode only the tiles
  under the crop: entropy decoding, which no other lever touches, shrinks with the crop (~half the file on average).
- simplejpeg (libjpeg-turbo) decodes into a numpy array (~25% faster than PIL, which also unpacks RGB from 4-byte
  pixels); the crop is copied into the channels_last layout that torch's vectorised uint8 antialiased kernel
  needs (vision #7497; any other layout silently takes a kernel ~1.6x slower) and resized once. No float tensor
  ever exists on the CPU: ``normalize`` runs on the device.
- Batches are NHWC uint8 (the layout the kernel writes: one memcpy per image), allocated in a DataLoader worker
  straight in shared memory with its pages mapped by one ``madvise`` call instead of a page fault per 4 KiB.
- Everything the samples depend on is a pure function of ``(seed, epoch, index)`` (``sample_rng``), so a resumed
  run sees exactly the samples an uninterrupted one would, and skipping already-seen batches reads nothing
  (``ResumableSampler``).

Images that simplejpeg cannot take (PNG named .JPEG, CMYK/YCCK JPEGs, EXIF-rotated photos) go through PIL with
the same crop logic, EXIF orientation applied like ``datasets.Image`` decoding does.
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import hashlib
import io
import math
import mmap
import random
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import transforms

from imagenet_trainer import jpeg_tiles, manifest

DCT_FACTORS = (8, 4, 2, 1)  # the scales libjpeg-turbo decodes with SIMD; 3/8, 5/8... exist but decode slower here
EXIF_ORIENTATION = 0x0112
SCRIPT_HINT = ("datasets 5.x no longer runs loading scripts: convert the images with preprocess.py "
               "(or use a Parquet-backed Hub copy)")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_image_dataset(path_or_id: str) -> datasets.DatasetDict:
    """A preprocess.py output folder (``load_from_disk``) or a Parquet-backed Hub dataset id / local clone with
    ``image`` and ``label`` columns. A split named ``val`` is renamed ``validation``. Errors are one-line
    ValueErrors; a preprocess.py output is first checked against its manifest (file sizes, no reading)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = _load_saved(path)
        if not isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path_or_id} holds a single Dataset, not the DatasetDict of splits preprocess.py "
                             "writes; rerun preprocess.py")
    elif path.is_dir():
        scripts = sorted(p.name for p in path.glob("*.py"))
        try:
            ds = datasets.load_dataset(str(path), cache_dir=str(_local_cache_dir(path)))
        except Exception as e:  # datasets raises RuntimeError/FileNotFoundError/EmptyDatasetError here
            if scripts:
                raise ValueError(f"{path_or_id} is a loading-script dataset ({', '.join(scripts)}); "
                                 f"{SCRIPT_HINT}") from None
            raise ValueError(f"{path_or_id}: neither a preprocess.py output nor a folder of Parquet/image files "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _attach_descriptions(ds, path)
    elif path.exists() or path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
        raise ValueError(f"{path_or_id}: no such folder (give preprocess.py's --output_dir or a Hub dataset id)")
    else:
        try:
            ds = datasets.load_dataset(path_or_id)
        except Exception as e:  # offline, not found, gated, script-based: all end in the same one-liner
            if "scripts are no longer supported" in str(e):
                raise ValueError(f"Hub dataset {path_or_id} is script-based; {SCRIPT_HINT}") from None
            raise ValueError(f"{path_or_id}: no such local folder, and the Hub dataset could not be loaded "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _attach_descriptions(ds, path_or_id)
    if "val" in ds and "validation" not in ds:
        ds["validation"] = ds.pop("val")
    for name, split in ds.items():
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(f"{path_or_id}: split '{name}' lacks the column(s) {sorted(missing)} "
                             f"(has {split.column_names}); an image-classification dataset needs image and label")
    return ds


def _local_cache_dir(folder: Path) -> Path:
    """Where datasets keeps its Arrow copy of a local folder of Parquet/image files: keyed by the folder and every
    file's size and mtime. datasets' own key ignores the files when the folder's README lists ``configs`` (the Hub
    layout ``imagenet_trainer.hub_dataset`` writes): a folder exported anew, or another folder of the same name,
    would silently load the first one's cached rows."""
    key = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts)):
        stat = f.stat()
        key.update(f"{f.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return Path(datasets.config.HF_DATASETS_CACHE) / "local" / key.hexdigest()[:16]


def _attach_descriptions(ds: datasets.DatasetDict, folder_or_repo) -> None:
    """Human names from the ``class_descriptions.json`` beside Parquet files (a local folder or a Hub dataset repo
    written by imagenet_trainer.hub_dataset) into each split's DatasetInfo, where ``ilsvrc.class_descriptions``
    finds them: Parquet keeps the ClassLabel names (wnids), not the description preprocess.py keeps them in."""
    import json

    from imagenet_trainer.ilsvrc import DESCRIPTIONS_FILE, DESCRIPTIONS_KEY

    if isinstance(folder_or_repo, Path):
        path = folder_or_repo / DESCRIPTIONS_FILE
    else:
        from huggingface_hub import hf_hub_download  # here: local datasets need no Hub client

        try:  # from the Hub, or with HF_HUB_OFFLINE=1 from its cache
            path = Path(hf_hub_download(folder_or_repo, DESCRIPTIONS_FILE, repo_type="dataset"))
        except Exception:  # no such file (another tool's repo), not cached: ClassLabel names or timm's lemmas
            return
    if not path.is_file():
        return
    names = json.loads(path.read_text())
    for split in ds.values():
        label = split.features.get("label")
        if isinstance(label, datasets.ClassLabel) and isinstance(names, list) and len(names) == label.num_classes:
            split.info.description = json.dumps({DESCRIPTIONS_KEY: names})


def _load_saved(path: Path) -> datasets.DatasetDict | datasets.Dataset:
    """``load_from_disk`` of a checked folder; a damaged Arrow file is a ValueError naming it, not pyarrow's
    traceback (which names no file)."""
    listed = manifest.read(path)
    if listed is not None and (problem := manifest.check_sizes(path, listed["files"])):
        raise ValueError(problem)
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, pa.ArrowException, ValueError, KeyError) as e:  # no manifest (older or foreign): find the file
        for arrow in sorted(path.rglob("*.arrow")):
            try:
                with pa.memory_map(str(arrow)) as source:
                    pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowException):
                raise ValueError(f"{arrow}: damaged or truncated Arrow file; copy it again, or rerun "
                                 "preprocess.py") from None
        raise ValueError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None


class Rows:
    """(encoded image bytes, label) by row of a split, read straight from its memory-mapped Arrow table: a zero-copy
    view of the bytes in ~1 us (a slice of the chunk's data buffer at its offsets), against ~25 us and a copy
    through ``Dataset.__getitem__``. Honours select/shuffle indices. Pickles as the split does (by file reference);
    the array views are rebuilt in each process."""

    def __init__(self, split: datasets.Dataset):
        if not isinstance(split, datasets.Dataset):
            raise ValueError(f"expected a datasets.Dataset split, got {type(split).__name__}")
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(f"the split lacks the column(s) {sorted(missing)} (has {split.column_names})")
        kind = split.features["image"]
        if not (isinstance(kind, datasets.Image) or getattr(kind, "dtype", None) in ("binary", "large_binary")
                or (isinstance(kind, dict) and "bytes" in kind)):  # the last: an Image struct read without features
            raise ValueError(f"the image column is {kind}: expected encoded images (datasets.Image, or binary bytes)")
        self.split, self._arrays = split, None

    def __getstate__(self):
        return {"split": self.split, "_arrays": None}

    def __len__(self) -> int:
        return len(self.split)

    def _build(self):
        table = self.split.data.table  # the pyarrow.Table over the memory map (no copy)
        images, labels = table.column("image"), table.column("label")  # columns may be chunked differently
        indices = self.split._indices  # set by select/shuffle; datasets has no public accessor for it
        if pa.types.is_struct(images.type):  # datasets.Image: {bytes, path}
            # flatten(), not field(): it carries a null image struct down to its fields (field() shows stale bytes)
            fields = [dict(zip([f.name for f in c.type], c.flatten())) for c in images.chunks]
            data, paths = [f["bytes"] for f in fields], [f["path"] for f in fields]
        else:  # a plain binary column (Parquet written by pandas, a cast): the bytes themselves
            data, paths = images.chunks, [None] * images.num_chunks
        self._arrays = ([_binary_parts(c) for c in data], paths, _chunk_starts(images),
                        [c.to_numpy(zero_copy_only=False) for c in labels.chunks], _chunk_starts(labels),
                        None if indices is None else indices.column(0).to_numpy())
        return self._arrays

    def __getitem__(self, index: int) -> tuple[memoryview | bytes, int]:
        data, paths, starts, labels, label_starts, indices = self._arrays or self._build()
        if not 0 <= index < len(self.split):
            raise IndexError(f"row {index} is outside 0..{len(self.split) - 1}")
        row = index if indices is None else int(indices[index])
        k = bisect.bisect_right(starts, row) - 1
        i = row - starts[k]
        offsets, buffer, valid = data[k]
        if valid is None or valid[i]:
            image = buffer[offsets[i]:offsets[i + 1]]
        else:  # rows that only reference a file (e.g. an unembedded imagefolder copy)
            path = paths[k][i].as_py() if paths[k] is not None else None
            if not path:
                raise ValueError(f"row {index}: the image has neither bytes nor a path")
            image = Path(path).read_bytes()
        j = bisect.bisect_right(label_starts, row) - 1
        return image, int(labels[j][row - label_starts[j]])


def _binary_parts(chunk: pa.Array) -> tuple[np.ndarray, memoryview, np.ndarray | None]:
    """(value offsets, the data as a memoryview of unsigned bytes, validity or None when no value is null) of a
    binary chunk, straight over its buffers: a row is then one slice (~1 us) instead of a pyarrow scalar (~6 us)."""
    if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
        chunk = chunk.cast(pa.large_binary())  # e.g. binary_view: a copy, for columns that are not what datasets writes
    if len(chunk) == 0:
        return np.zeros(1, np.int64), memoryview(b""), None
    _, offsets, values = chunk.buffers()
    kind = np.dtype(np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
    offsets = np.frombuffer(offsets, kind, len(chunk) + 1, chunk.offset * kind.itemsize)
    values = memoryview(values if values is not None else b"").cast("B")  # pyarrow exports signed chars
    return offsets, values, None if chunk.null_count == 0 else chunk.is_valid().to_numpy(zero_copy_only=False)


def check_labels(split: datasets.Dataset, names: list[str] | None = None) -> list[str]:
    """The split's class names, once every row is known to have a label: a ClassLabel column (named like ``names``,
    in the same order, when given), no null and no -1 (unlabelled, as ILSVRC's test split). One-line ValueErrors;
    reads the label column only."""
    label = split.features.get("label")
    if not isinstance(label, datasets.ClassLabel):
        raise ValueError(f"the label column is {label}, not a ClassLabel (datasets' class_encode_column('label') "
                         "makes one; preprocess.py writes one)")
    if names is not None and list(label.names) != list(names):
        raise ValueError("its class names differ from the train split's (other classes or another order), so its "
                         "scores would be against the wrong classes")
    labels = split.with_format("arrow")["label"]
    missing = labels.null_count + (pc.sum(pc.less(labels, 0)).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} of {len(split)} images have no label (null or -1; ILSVRC's test split has "
                         "none)")
    return list(label.names)


def _chunk_starts(column) -> list[int]:
    """The first row of each chunk of a pyarrow ChunkedArray, and the row count last (bisect's boundaries)."""
    starts = [0]
    for chunk in column.chunks:
        starts.append(starts[-1] + len(chunk))
    return starts


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _exif_orientation(data: bytes, segments=None) -> int:
    """EXIF orientation tag (1 = upright). A JPEG's header segments are walked first (or given: ``header_segments``),
    so only files that carry an Exif block (or XMP's tag) pay for PIL's parser; other files go to PIL directly."""
    segments = jpeg_tiles.header_segments(data) if segments is None else segments
    if segments is not None and not any(m == 0xE1 and data[s + 4:s + 10] in (b"Exif\x00\x00", b"http:/")
                                        for m, s, e in segments):  # Exif, or XMP's tiff:Orientation
        return 1
    try:
        return int(Image.open(io.BytesIO(data)).getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # ImageNet has corrupt EXIF blocks; they carry no usable orientation
        return 1


def _probe(data: bytes, segments=None) -> tuple[int, int, bool]:
    """(height, width, simplejpeg can decode it) of the image as displayed (after EXIF rotation), header only."""
    orientation = _exif_orientation(data, segments)
    if data[:2] == b"\xff\xd8" and orientation == 1:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace not in ("CMYK", "YCCK"):  # libjpeg-turbo cannot convert these to RGB
                return height, width, True
        except (ValueError, KeyError):  # KeyError: simplejpeg 1.9 on subsamplings it has no name for (4:4:1)
            pass  # let PIL judge it
    width, height = Image.open(io.BytesIO(data)).size
    if orientation in (5, 6, 7, 8):  # transposed: width and height swap
        width, height = height, width
    return height, width, False


def _decode(data: bytes, height: int, width: int, factor: int, fast_ok: bool,
            fast_dct: bool) -> tuple[np.ndarray, float, float]:
    """HWC uint8 RGB pixels decoded at 1/factor scale where the codec allows (JPEG), and the (y, x) scales that map
    full-resolution coordinates (``height`` x ``width``, as ``_probe`` gave them) onto the returned array."""
    if fast_ok:
        try:
            # fastdct/fastupsample: ~10% faster, errors of ~1 grey level; FFCV also decodes with TJFLAG_FASTDCT
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast_dct, fastupsample=fast_dct,
                                            min_height=-(-height // factor), min_width=-(-width // factor),
                                            strict=True)  # any libjpeg warning: PIL decides, below
            return pixels, *_scales(pixels, height, width, factor)
        except (ValueError, KeyError):
            pass  # PIL gives the verdict: it tolerates ImageNet's "corrupt data" warnings and refuses truncation
    image = Image.open(io.BytesIO(data))
    if factor > 1:
        image.draft("RGB", (image.width // factor, image.height // factor))  # DCT scaling; no-op for non-JPEG
    image.load()  # a broken file fails here; inside exif_transpose its error would be taken for a bad EXIF block
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # corrupt EXIF: keep the stored orientation
        pass
    pixels = np.array(image.convert("RGB"))
    return pixels, *_scales(pixels, height, width, factor)


def _scales(pixels: np.ndarray, height: int, width: int, factor: int) -> tuple[float, float]:
    # libjpeg's scaled output is ceil(size / factor) and pixel i covers source pixels [i*factor, (i+1)*factor)
    if pixels.shape[:2] == (-(-height // factor), -(-width // factor)):
        return 1 / factor, 1 / factor
    return pixels.shape[0] / height, pixels.shape[1] / width


def _dct_factor(shorter: float, needed: float) -> int:
    """Largest DCT reduction that keeps ``shorter`` (full-resolution pixels) at least ``needed`` pixels."""
    return next(f for f in DCT_FACTORS if shorter >= f * needed or f == 1)


def _resize(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """HWC uint8 (a view is fine) -> CHW uint8 of ``size`` in HWC memory, antialiased like PIL.

    Only a channels_last-contiguous NCHW input takes torch's uint8 AVX2 kernel (vision #7497); a crop view, or a
    size-1 batch dim with a stride other than H*W*C, silently takes the generic kernel, ~1.6x slower. So the input
    is laid out exactly so (a copy for a crop: cheaper than what it saves; numpy's row-by-row copy of a crop view
    takes a quarter of the time of torch's strided 4-D copy)."""
    if not pixels.is_contiguous():
        pixels = torch.from_numpy(np.ascontiguousarray(pixels.numpy()))
    x = pixels[None].permute(0, 3, 1, 2)  # channels_last-contiguous NCHW over the HWC pixels
    if tuple(x.shape[2:]) == tuple(size):
        return x[0]
    return F.interpolate(x, size=size, mode=mode, antialias=True)[0]


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one training sample. Python's Mersenne Twister seeds from an int in ~4 us and draws in
    ~0.1 us, against ~10 us and ~1 us for a numpy Generator: it is a few % of the per-image time. The key is
    injective for |seed| < 2**63, 0 <= epoch < 2**32 and 0 <= index < 2**40 (the seed is taken mod 2**64 because
    ``random.Random`` seeds from the absolute value: -s and s would collide)."""
    return random.Random(((seed % 2**64) * 2**32 + epoch) * 2**40 + index)


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


# ---------------------------------------------------------------------------------------------------------------
# Datasets


class TrainSet(torch.utils.data.Dataset):
    """Key ``(epoch, index)`` -> (uint8 CHW RandomResizedCrop + flip [+ RandAugment/TrivialAugment], label).

    The sample is a pure function of ``(seed, epoch, index)``: its random stream is seeded with that triple,
    never with global state, so exact resume and any number of workers give the same samples."""

    def __init__(self, split: datasets.Dataset, image_size: int, seed: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 hflip: float = 0.5, auto_augment: str | None = None, progressive: tuple[int, int, int] | None = None):
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
        # edges) and fill the uncovered border with the ImageNet mean in 0..255 (timm's img_mean fill; the default
        # black border is a strong artificial edge at magnitude 9: 27 degrees, ~30 % of the side).
        geometry = dict(interpolation=transforms.InterpolationMode.BILINEAR,
                        fill=[round(255 * m) for m in (0.485, 0.456, 0.406)])  # timm IMAGENET_DEFAULT_MEAN
        self.augment = {None: None,
                        "ra": transforms.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11, **geometry),
                        "ta": transforms.TrivialAugmentWide(**geometry)}[auto_augment]

    def __len__(self) -> int:
        return len(self.rows)

    def size_at(self, epoch: int) -> int:
        """The crop side (px) of an epoch. With ``progressive=(min_size, start, end)`` (progressive resizing, FFCV;
        fast.ai's DAWNBench entry): min_size up to epoch ``start``, then a linear ramp in 32 px steps that reaches
        ``image_size`` at epoch ``end``. Low-resolution epochs cost ~(size / image_size)^2 of the compute."""
        if self.progressive is None:
            return self.image_size
        low, start, end = self.progressive
        if epoch >= end:
            return self.image_size
        t = max((epoch - start) / max(1, end - start), 0.0)
        return min(self.image_size, low + round(t * (self.image_size - low) / 32) * 32)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        image, label, _ = self.sample(key)
        return image, label

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[torch.Tensor, int, tuple | None]]:
        """What a DataLoader worker fetches for a batch: ``sample`` of each key, replacements included."""
        return [self.sample(key) for key in keys]

    def sample(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple | None]:
        """(image, label, None), or, when the row does not decode, another row's (image, label) with (row,
        replacement row, error): the replacement is ``replacement_row`` of (seed, row, try), with the row's own
        random stream, so resume and any process count make the same choice. A ValueError when
        REPLACEMENT_TRIES rows in a row fail (a dataset that mostly does not decode)."""
        epoch, index = key
        try:
            return (*self._load(epoch, index, index), None)
        except Exception as e:  # noqa: BLE001 (flipped bytes can break any parser on the way: tiles, EXIF, codec)
            error = e
        for attempt in range(1, REPLACEMENT_TRIES + 1):
            other = replacement_row(self.seed, index, attempt, len(self))
            try:
                return (*self._load(epoch, other, index), (index, other, str(error)))
            except Exception:  # noqa: BLE001
                continue
        raise ValueError(f"{error}; and {REPLACEMENT_TRIES} rows tried in its place do not decode either") \
            if not isinstance(error, ValueError) else error

    def _load(self, epoch: int, index: int, stream: int) -> tuple[torch.Tensor, int]:
        """Row ``index``'s crop, drawn from the random stream of row ``stream`` (itself, unless replacing it)."""
        size = self.size_at(epoch)
        rng = sample_rng(self.seed, epoch, stream)
        data, label = self.rows[index]
        try:
            segments = jpeg_tiles.header_segments(data)  # walked once, for the EXIF check and the tiles
            height, width, fast_ok = _probe(data, segments)
            top, left, h, w = random_resized_crop_params(height, width, self.scale, self.ratio, rng)
            tiles = jpeg_tiles.layout(data, segments) if fast_ok and segments is not None else None
            oy = ox = 0  # where the decoded part starts in the file (full-resolution px)
            if tiles is not None:  # a tiled JPEG (preprocess.py --restart_tile): decode the tiles under the crop
                data, height, width, oy, ox = jpeg_tiles.region(data, tiles, top, left, h, w)
            pixels, sy, sx = _decode(data, height, width, _dct_factor(min(h, w), size), fast_ok, fast_dct=True)
        except OSError as e:  # PIL's UnidentifiedImageError / truncated file
            raise ValueError(f"row {index}: the image does not decode ({e}); rerun preprocess.py") from None
        # Rounded in the whole image's decoded pixels, then shifted to the part's (tile origins are whole decoded
        # pixels): rounding after the shift would round halves to even differently, a one-pixel-off crop
        dy, dx = round(oy * sy), round(ox * sx)
        y0 = min(round(top * sy), dy + pixels.shape[0] - 1) - dy
        x0 = min(round(left * sx), dx + pixels.shape[1] - 1) - dx
        y1, x1 = max(y0 + 1, round((top + h) * sy) - dy), max(x0 + 1, round((left + w) * sx) - dx)
        out = _resize(torch.from_numpy(pixels)[y0:y1, x0:x1], (size, size), "bilinear")
        if rng.random() < self.hflip:
            out = out.flip(-1)
        if self.augment is not None:
            # torchvision's ops draw from torch's global RNG: fork it and seed it from this sample's key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng.getrandbits(63))
                out = self.augment(out)
        return out, label


REPLACEMENT_TRIES = 8  # rows tried in place of one that does not decode before the batch fails


def replacement_row(seed: int, row: int, attempt: int, num_rows: int) -> int:
    """The row that stands in for ``row`` on its ``attempt``-th try: any other row, a hash of (seed, row,
    attempt), so the choice depends on neither epoch, rank, worker nor process count."""
    if num_rows < 2:
        return row
    key = f"replace {seed} {row} {attempt}".encode()
    return (row + 1 + int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (num_rows - 1)
            ) % num_rows


INTERPOLATIONS = ("bilinear", "bicubic")


class EvalSet(torch.utils.data.Dataset):
    """index -> (uint8 CHW: shorter side resized to floor(image_size / crop_pct), centre crop, label), the classic
    ``Resize + CenterCrop`` (timm's ``scale_size``); big photos decode at a DCT reduction first."""

    def __init__(self, split: datasets.Dataset, image_size: int, crop_pct: float = 0.875,
                 interpolation: str = "bilinear"):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: use one of {INTERPOLATIONS}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct}: must be in (0, 1]")
        self.rows = Rows(split)
        self.image_size, self.interpolation = image_size, interpolation
        self.resize_size = math.floor(image_size / crop_pct)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = self.rows[index]
        try:
            height, width, fast_ok = _probe(data)
            # torchvision Resize(int): the shorter side becomes resize_size, the longer int(resize_size * long / short)
            size = self.resize_size
            new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
            # DCT scaling is a sharper (box-like) filter than the antialiased resize: keep at least a 2x resize after
            # it, so the eval images, and so the accuracy, match the classic pipeline's (mean error < 1 grey level)
            pixels, _, _ = _decode(data, height, width, _dct_factor(min(height, width), 2 * size), fast_ok,
                                   fast_dct=False)
        except Exception:  # noqa: BLE001 (flipped bytes can break any parser on the way: EXIF, codec)
            # scored by no one: metrics.evaluate leaves it out and reports the row (bad_samples.py)
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), -(index + 1)
        # Resizing the whole (reduced) image then cropping reproduces the classic pipeline exactly, borders included
        resized = _resize(torch.from_numpy(pixels), (new_h, new_w), self.interpolation)
        top, left = int(round((new_h - self.image_size) / 2.0)), int(round((new_w - self.image_size) / 2.0))
        crop = resized.permute(1, 2, 0)[top:top + self.image_size, left:left + self.image_size]
        return crop.contiguous().permute(2, 0, 1), label  # compact, still HWC in memory (collate's layout)


# ---------------------------------------------------------------------------------------------------------------
# Sampling and batching


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


LAYOUT_KEYS = ("num_processes", "batch_size", "grad_accum_steps")


def elastic_position(batch_in_epoch: int, saved: dict, now: dict) -> int:
    """A checkpoint's per-rank batch position (``saved`` layout: ``LAYOUT_KEYS``) as this launch's (``now``).

    The global micro-batches must stay the same, so the same --batch_size and processes x accumulation (hence the
    same global batch): 16 GPUs x accumulation 1 resume on 8 x 2. --batch_size is kept rather than the global batch
    alone because a micro-batch is BatchNorm's and mixup's unit: another split would compute other steps. Anything
    else is a ValueError whose message has the arithmetic and the flags that fit."""
    n, b, a = (saved[k] for k in LAYOUT_KEYS)
    m, b2, a2 = (now[k] for k in LAYOUT_KEYS)
    if b == b2 and n * a == m * a2:
        return batch_in_epoch * n // m  # a step boundary: n * a * steps global micro-batches, m * a2 per rank
    fit = (f"--batch_size {b} --grad_accum_steps {n * a // m}" if n * a % m == 0 else
           f"--batch_size {b} on a process count that divides {n * a}")
    processes = f"{n} process{'es' if n > 1 else ''}"
    raise ValueError(f"it was saved with {processes} x --batch_size {b} x --grad_accum_steps {a} = {n * b * a} "
                     f"images per step, this launch has {m} x {b2} x {a2} = {m * b2 * a2}; resume with {fit} "
                     f"(the same {b}-image micro-batches, processes x accumulation = {n * a})")


def collate(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[(uint8 CHW, label)] -> (uint8 NCHW in channels_last memory, int64 labels); TrainSet.sample's triples give
    a ``Batch`` of the same two.

    NHWC is the layout the resize kernel writes, so each image is one memcpy (an NCHW batch costs a transposing copy
    per image), and train.py wants NHWC on the device anyway. Inside a DataLoader worker the batch is allocated
    straight in shared memory, so sending it to the main process copies nothing (as default_collate does)."""
    images, labels = zip(*((sample[0], sample[1]) for sample in batch))
    kinds = {(tuple(image.shape), image.dtype) for image in images}
    if len(kinds) > 1 or images[0].dtype != torch.uint8 or images[0].dim() != 3:  # copy_ would broadcast or cast
        raise ValueError(f"collate takes uint8 CHW images of one shape, got {sorted(map(str, kinds))}")
    channels, height, width = images[0].shape
    shape = (len(images), height, width, channels)
    if torch.utils.data.get_worker_info() is None:
        nhwc = torch.empty(shape, dtype=torch.uint8)
    else:
        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        nhwc = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        _prefault(nhwc)
    out = nhwc.permute(0, 3, 1, 2)
    for i, image in enumerate(images):
        out[i].copy_(image)
    if len(batch[0]) > 2:  # TrainSet.sample's: (image, label, replaced or None)
        return Batch((out, torch.tensor(labels, dtype=torch.int64)), [s[2] for s in batch if s[2] is not None])
    return out, torch.tensor(labels, dtype=torch.int64)


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
    first write (~2 us each in a VM, ~37 faults per 150 KB image): collate took ~30% less time in a worker. Best
    effort: older kernels refuse the advice and the pages fault in as before."""
    madvise = _madvise()
    if madvise is not None:
        page = mmap.PAGESIZE
        start = x.data_ptr() - x.data_ptr() % page
        madvise(ctypes.c_void_p(start), ctypes.c_size_t(x.data_ptr() + x.numel() - start), MADV_POPULATE_WRITE)


# ---------------------------------------------------------------------------------------------------------------
# On the device


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
    autocast dtype); the memory format of x (channels_last included) is kept. mean/std in 0..1 units (timm)."""
    m, s = _stats(_floats(mean), _floats(std), x_uint8.device)
    return (x_uint8.float() - m).div_(s).to(dtype)


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded from one draw of ``generator`` (no host sync when it is a CPU generator)."""
    seed = torch.randint(2**62, (1,), generator=generator, device=generator.device).item()
    return np.random.default_rng(seed)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
                 label_smoothing: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019) of x with x.flip(0), as timm's Mixup
    ``mode="batch"``: one lambda ~ Beta(alpha, alpha) per batch, CutMix lambda corrected to the clipped box area,
    a 0.5 switch when both are on. Returns (x, label-smoothed soft targets summing to 1). The randomness comes only
    from ``generator``; a CPU generator keeps it off the device queue."""
    off = label_smoothing / num_classes
    targets = torch.full((y.shape[0], num_classes), off, device=y.device)
    targets.scatter_(1, y[:, None], 1 - label_smoothing + off)
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
