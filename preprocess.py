"""Turn ILSVRC-2012 as Kaggle, image-net.org, the Hub or WebDataset ship it, an ImageNet evaluation set, or any
class-per-folder image tree, into a memory-mapped DatasetDict.

    python preprocess.py --data_dir ~/imagenet-object-localization-challenge --output_dir ~/data/imagenet \
        [--num_proc 16] [--shorter_side 256] [--quality 90] [--restart_tile 64] [--shard_size 1000]
    python preprocess.py --data_dir ~/my_images --output_dir ~/data/mine [--val_fraction 0.1 --split_seed 0]
    python preprocess.py --verify ~/data/imagenet   # every file's SHA-256 against the manifest (after a copy)

Input: the folder Kaggle's ``imagenet-object-localization-challenge`` zip unzips to (ILSVRC/Data/CLS-LOC/{train,val,
test}, ILSVRC/Annotations, LOC_synset_mapping.txt, LOC_val_solution.csv; see imagenet_trainer/ilsvrc.py); or a
class-per-folder tree: train/<class>/* with val/ or validation/ and/or test/ of class folders, or one <class>/*
tree split by --val_fraction (seeded, stratified; imagenet_trainer/image_tree.py). For those the label names and
the descriptions are the sorted folder names, image_id is "<class>/<stem>" and objects is empty. Or ImageNet as
distributed, read in place: Kaggle's zip, image-net.org's tars + devkit, a Hub snapshot of ILSVRC/imagenet-1k,
WebDataset shards (imagenet_trainer/archives.py), giving the unpacked tree's output. ImageNet-V2,
-Sketch, -R, -A and -C as their authors distribute them are read too, labelled in ImageNet-1k's 1000 classes, with
what they are in source.json (imagenet_trainer/eval_sets.py; --eval_set when the folder has another name).
Output: ``datasets.load_from_disk(OUT)`` is a DatasetDict with splits train / validation / test (test only when
CLS-LOC/test holds images: it has no labels, and people delete it) and columns

    image     datasets.Image, JPEG bytes (never decoded pixel arrays)
    label     ClassLabel whose names are the wnids in sorted order (n01440764 = 0); -1 in test
    image_id  the file stem (n01440764_10026, ILSVRC2012_val_00000001)
    objects   list of {bbox: [xmin, ymin, xmax, ymax] float pixels of the stored image, label}; [] where none

and beside it class_descriptions.json (the human names of LOC_synset_mapping.txt in label order, also kept in
DatasetInfo.description; they are not unique, "crane" twice, so they cannot be ClassLabel names; read them with
``imagenet_trainer.ilsvrc.class_descriptions``), preprocess_report.json (skipped files with reasons, each input
file or folder left out and each file re-encoded, with why, box fixes), source.json (where the data came from, for
model cards), config.yaml, run_info.json and, written last,
preprocess_manifest.json (every file's size and SHA-256, and the inputs and settings that made it).

Safety: OUT must be new, empty, or this script's own complete output (it has the manifest); anything else is
refused, and nothing in OUT but the files of the manifest is ever replaced. The same command on a finished OUT
reports it done (file names, labels, settings and annotation folders compared, not the files' contents: a replaced
image or an edited XML needs --overwrite); other inputs or settings need --overwrite, which still refuses while OUT
holds files not its own.

Choices:
- Lossless by default: a file that already is an RGB or grayscale JPEG (baseline or progressive) without EXIF
  rotation keeps its DCT coefficients, after a full decode (libjpeg-turbo's, which fails on any warning; Pillow's
  ``draft()`` would skip most of the data) shows it is whole; an arithmetic-coded one is transcoded to Huffman coding
  first, and a multi-picture one keeps its first picture (plain_jpeg). A grayscale one stays one channel: training
  and validate.py decode it to PIL's ``convert("RGB")`` of the file, the pixels timm's and torchvision's evaluation
  of the raw files see.
- Tiled for speed (--restart_tile PX, default 64; 0 stores such files byte for byte): every stored JPEG is re-coded
  losslessly with restart markers so that it splits into tiles of at most PX x 16 pixels that decode alone, as
  narrow as keeps ~100 coded bytes a tile (one 16 px MCU on ImageNet-sized photos), indexed in an APP9 segment
  (imagenet_trainer/tile_writer.py). Training then entropy-decodes only the tiles under its random crop, about half
  of each file, and progressive files become baseline (~2.7x faster to decode). Any decoder reads the result as
  before; it is kept only where libjpeg-turbo decodes it to exactly the pixels of the untiled file (~3% more
  bytes on ImageNet-sized photos), else the untiled bytes are. Files under 24 KB stay untiled: they gain nothing.
  The report counts both ("untiled").
- Everything else is re-encoded as a JPEG at --quality: CMYK (22 train files, one val) becomes RGB, the PNG named
  .JPEG becomes a JPEG, and so does a lossless JPEG (not in ImageNet; in a user's own images it would be
  several times the bytes, and it cannot be decoded at a reduced scale). EXIF orientation is applied here: the
  pixels are transposed, the image re-encoded and the tag dropped, so no stored image has an orientation other than
  1 and PIL, datasets.Image (which would apply the tag) and torchvision.io (which by default would not) all see the
  same upright pixels. Boxes turn with the pixels; they are taken to be in stored-pixel coordinates, as ImageNet's
  annotation tool showed raw pixels.
- --shorter_side PX (low-resolution storage, as FFCV stores its datasets): shrink so the shorter side is PX,
  never enlarge, re-encode.
- A file that does not fully decode (truncated, empty, not an image) is skipped, never a crash, and listed with the
  reason in preprocess_report.json; so is a JPEG whose coded data ends early, which Pillow decodes without a word
  (libjpeg fills in the rest: a download cut short, or zero-filled). JPEGs with other libjpeg warnings are stored
  and named (decode_warnings), as are images over --max_image_pixels but under twice it (large_images).
- Labels: train from the folder, val from LOC_val_solution.csv (the first wnid of PredictionString). The train list
  is the folder listing (os.scandir, not datasets' imagefolder, which spends ~50 min resolving ImageNet's files,
  datasets #6359): LOC_train_solution.csv only covers the ~545k images with boxes and is not read. Boxes come from
  the per-image XML, for val from the CSV where an image has no XML. They are clipped to the image; boxes with
  min > max or no area left, or whose name is no class, are dropped; all counted in the report.
- The sorted file list is cut into shards of --shard_size images; --num_proc processes each write a shard as one
  Arrow file in OUT.tmp/, in the very layout ``save_to_disk`` uses, so assembling OUT moves no data. A killed run
  resumes from OUT.tmp without redoing finished shards and gives the same dataset; OUT appears by one rename when
  complete. Memory is flat in the number of images: a worker holds at most one Arrow batch of encoded images. A
  worker that dies (the kernel's out-of-memory killer) ends the run at once, in one line; workers leave with a killed
  run (run_workers).

Longer than 400 lines because the recipe and the steps only this script takes stay in the file a reader follows
(listing, encoding, shards, their worker processes, the output's safety, assembly); the input trees are listed in
imagenet_trainer/ (image_tree.py, archives.py, eval_sets.py) and the output's manifest is manifest.py.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C in the imports below: one line (until the script starts, at the end of this file)
    from imagenet_trainer.stop_signals import quit_while_importing

    interrupted_while_importing = quit_while_importing("interrupted while starting (nothing was written yet)")

import os
import signal

import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.resource_tracker
import pickle
import shutil
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import simplejpeg
from PIL import ExifTags, Image, ImageOps
from tqdm.auto import tqdm

from imagenet_trainer import archives, checkpoints, demo, eval_sets, ilsvrc, image_tree, manifest, tile_writer
from imagenet_trainer.jpeg_markers import arithmetic, first_picture, header_segments, lossless
from imagenet_trainer.image_tree import Split
from imagenet_trainer.config import parse_config
from imagenet_trainer.runinfo import (REPLACED_NOTE, atomic_write_text, delete_replaced, is_replaced, mark_replaced,
                                      remove_write_leftovers, replaced_folder, write_run_info)
from imagenet_trainer.runlock import FolderLock, release_all
from imagenet_trainer.worker_processes import available_cores

BATCH_ROWS = 100  # images per Arrow record batch: what a worker holds in memory (~11 MB of ImageNet JPEGs)
FORMAT_VERSION = 3  # bump when shards or their reports change, so an old OUT.tmp is rebuilt rather than resumed
ENCODER = 3  # how encode_image stores a file (2: a grayscale JPEG keeps its bytes; 3: a JPEG whose data ends early
# is skipped, whole_jpeg; its shard reports name decode warnings and large images), in OUT.tmp's job.json only: an
# interrupted run resumes only with the encoder that wrote its shards (no split stored two ways), while a finished
# output, whose job record has no encoder, stays the same job for a later preprocess.py
VERSIONED = ("encoder", "annotations")  # job keys a work folder of an older preprocess.py may lack
WORK = ".work"  # inside OUT.tmp: job.json and one report per finished shard; removed once OUT is in place


@dataclass
class PreprocessConfig:
    data_dir: str = field(default="", metadata={"help": (  # naming every input takes more than a comment line
        "required: Kaggle's ILSVRC folder (ILSVRC/, LOC_*.csv) or its .zip (or its older release: a folder of "
        "imagenet_object_localization_patched2019.tar.gz with the LOC files); a folder of image-net.org's tars and "
        "devkit; a snapshot of the Hub's ILSVRC/imagenet-1k (data/*.parquet, or data/*.tar.gz with classes.py); "
        "a folder of WebDataset shards (*-train-*.tar, *-validation-*.tar); ImageNet-V2, -Sketch, -R, -A or -C "
        "as their authors ship them; or a class-per-folder image tree")})
    output_dir: str = ""  # required: where the DatasetDict goes; a new (built in <output_dir>.tmp) or empty folder
    num_proc: int = 0  # worker processes; 0 = one per core this process may use (affinity, cgroup CPU quota)
    shorter_side: int | None = None  # px; shrink so the shorter side is at most this and re-encode; None keeps size
    quality: int = 90  # JPEG quality (1-100; PIL advises <= 95) of re-encoded images (odd files, --shorter_side)
    restart_tile: int = 64  # px; lossless re-code into tiles <= this wide that decode alone (fast crops); 0 = as read
    shard_size: int = 1000  # images per shard: the unit of parallel work and of resume (~110 MB of ImageNet)
    val_fraction: float | None = None  # one <class>/* tree: share of each class held out as validation (0-1)
    split_seed: int = 0  # seed of the --val_fraction split; the same seed and files give the same split
    overwrite: bool = False  # rebuild this script's own output in --output_dir (needed when inputs/settings changed)
    verify: str | None = None  # a preprocess.py output: check every file's SHA-256 against its manifest, exit 0/1
    verify_archives: bool = False  # MD5 of image-net.org's tars/devkit vs the published sums first: reads all again
    # ImageNet-V2 in a folder not named imagenetv2-<variant>-format-val: imagenet-v2:matched-frequency (or
    # :threshold0.7, :top-images), the variant its published name and timm's results are looked up by
    eval_set: str = ""  # imagenet-v2[:variant]|-sketch|-r|-a|-c: read --data_dir as that set; "" = by its name/layout
    # detection reads a folder named train/ as the train split; a tree whose classes include "train" needs saying so
    layout: str = ""  # "" detects it; ilsvrc: Kaggle's tree; folders: --data_dir's folders are the classes
    # PIL.Image.MAX_IMAGE_PIXELS, Pillow's decompression-bomb guard, set in every process that decodes (a wrapper's
    # setting reaches no spawned worker); the default is Pillow's own, 1024**3 // 4 // 3 (~0.25 GB of 8-bit RGB)
    max_image_pixels: int = 89_478_485  # px (w x h); images over 2x this are skipped, over 1x reported; 0 = no limit


# ---------------------------------------------------------------------------------------------------------------
# Listing: which files, which labels. Runs in the main process, reads folders and the CSV, decodes nothing.
# ---------------------------------------------------------------------------------------------------------------

class Listing(NamedTuple):
    layout: str  # image_tree.ILSVRC, CLASS_FOLDERS, CLASS_FOLDERS_SPLIT or an eval_sets kind (imagenet-r...)
    names: list  # ClassLabel names in label order: sorted wnids, or sorted class-folder names
    descriptions: list  # human names in label order (the folder names for a class-per-folder tree)
    splits: dict  # {split: Split}
    warnings: list
    archives: dict | None = None  # read from archives, not a tree: what was found (archives.Found._asdict())
    eval_set: dict | None = None  # what source.json records about an evaluation set (eval_sets.list_splits)
    left_out: list | None = None  # files, folders, archive members not read: [{path, reason}]


def list_splits(data_dir: Path, val_fraction: float | None, split_seed: int, eval_set: str = "",
                forced: str = "") -> Listing:
    """What to store, from any accepted layout (``eval_set``: --eval_set; ``forced``: --layout). Bad or missing input
    raises ValueError naming the path. The hidden files and folders left out get one warning: a few per class are
    usual (.DS_Store), each listed in the report."""
    listing = list_layout(data_dir, val_fraction, split_seed, eval_set, forced)
    return listing._replace(warnings=listing.warnings + image_tree.hidden_warnings(listing.left_out, data_dir))


def list_layout(data_dir: Path, val_fraction: float | None, split_seed: int, eval_set: str, forced: str) -> Listing:
    """``list_splits`` but for its warning of hidden files."""
    if eval_set and val_fraction is not None:
        raise ValueError(f"--eval_set {eval_set}: an evaluation set is scored whole; drop --val_fraction")
    if eval_set and forced:
        raise ValueError(f"--eval_set {eval_set} and --layout {forced} both say how to read {data_dir}: give one "
                         "(--eval_set for an evaluation set, --layout for a training tree)")
    if not data_dir.exists():  # said here for every route: --layout's would name a file inside it, or none
        raise ValueError(f"--data_dir {data_dir}: no such file or folder")
    if forced and not data_dir.is_dir():
        zipped = "; drop --layout: Kaggle's zip is read without it" if data_dir.suffix.lower() == ".zip" else ""
        raise ValueError(f"--layout {forced}: --data_dir {data_dir} is a file; --layout reads a folder{zipped}")
    left_out = []  # the files, folders or archive members not read, filled by the listing
    if forced == "folders":
        if val_fraction is None:
            raise ValueError(f"--layout folders: {data_dir}'s folders are the classes, so the validation images "
                             "come from them too: add --val_fraction 0.1")
        names, splits, warnings = image_tree.list_splits(data_dir, image_tree.CLASS_FOLDERS_SPLIT, val_fraction,
                                                         split_seed, one_tree=True, left_out=left_out)
        if root := image_tree.kaggle_root_above(data_dir):  # refused without --layout: say what the user gives up
            warnings.append(f"--layout folders: --data_dir {data_dir} is inside Kaggle's ILSVRC tree, read as one "
                            f"class-per-folder tree: its labelled val ({ilsvrc.VAL_SOLUTION}), boxes "
                            f"(ILSVRC/Annotations) and class descriptions ({ilsvrc.SYNSET_MAPPING}) are not used, "
                            f"validation is --val_fraction of these images; --data_dir {root} reads them")
        return Listing(image_tree.CLASS_FOLDERS_SPLIT, names, list(names), splits, warnings, left_out=left_out)
    found = None if eval_set or forced else archives.detect(data_dir)
    if found is not None:
        if val_fraction is not None:
            raise ValueError(f"--val_fraction: {data_dir} holds ImageNet's own validation split; drop --val_fraction")
        return Listing(image_tree.ILSVRC, *archives.list_splits(found, left_out), archives=found._asdict(),
                       left_out=left_out)
    kind = eval_sets.detect(data_dir, eval_set) if data_dir.is_dir() and val_fraction is None and not forced else None
    if kind:
        *listed, record = eval_sets.list_splits(data_dir, kind, eval_sets.parse_eval_set(eval_set)[1],
                                                left_out=left_out)
        return Listing(kind, *listed, eval_set=record, left_out=left_out)
    layout = image_tree.ILSVRC if forced == "ilsvrc" else image_tree.detect_layout(data_dir, val_fraction)
    if layout == image_tree.ILSVRC:
        if val_fraction is not None:
            raise ValueError(f"--val_fraction: {data_dir} is Kaggle's ILSVRC tree, which has its own validation "
                             "split; drop --val_fraction")
        return Listing(layout, *image_tree.list_ilsvrc_splits(data_dir, left_out), left_out=left_out)
    names, splits, warnings = image_tree.list_splits(data_dir, layout, val_fraction, split_seed, left_out=left_out)
    return Listing(layout, names, list(names), splits, warnings, left_out=left_out)


def make_features(wnids: list[str]) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=wnids),
        "image_id": datasets.Value("string"),
        "objects": datasets.List({"bbox": datasets.List(datasets.Value("float32"), length=4),
                                  "label": datasets.ClassLabel(names=wnids)}),
    })


# ---------------------------------------------------------------------------------------------------------------
# One image: verify, maybe convert; its boxes follow the pixels. Runs in the workers.
# ---------------------------------------------------------------------------------------------------------------

class BadImage(Exception):
    """A file that does not fully decode: skipped and reported, never stored."""


class Encoded(NamedTuple):
    data: bytes  # the JPEG to store
    orientation: int  # EXIF orientation applied to the pixels (1: none)
    stored_size: tuple  # (w, h) of the input's pixels before any rotation
    size: tuple  # (w, h) of the output
    why: str | None  # why it was re-encoded; None when the input's DCT coefficients are stored unchanged
    warning: str | None = None  # libjpeg-turbo's warning on the input JPEG, which Pillow's decode keeps to itself
    large: int | None = None  # w x h of an image over --max_image_pixels (under twice it: Pillow's warning), else None


JPEG_FORMATS = ("JPEG", "MPO")  # Pillow's names; MPO: a multi-picture JPEG whose first picture plain_jpeg missed


def plain_jpeg(data: bytes) -> bytes:
    """``data``, or the same DCT coefficients in the form every reader takes: a multi-picture file's first picture
    alone (``first_picture``), an arithmetic-coded file in Huffman coding (``tile_writer.to_huffman``; Pillow fails
    on those over 64 KB). Where libjpeg-turbo cannot transcode, ``data`` as it is: Pillow's decode judges it."""
    segments = header_segments(data)
    if (first := first_picture(data, segments)) is not None:
        data, segments = first, header_segments(first)
    if arithmetic(segments):
        try:
            data = tile_writer.to_huffman(data) or data
        except RuntimeError:  # no libjpeg-turbo 3 (--restart_tile 0 does without it)
            pass
    return data


@contextlib.contextmanager
def pillow_verdict():
    """Pillow's exceptions on a file it cannot open or decode, as the BadImage that says why."""
    try:
        yield
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (no known format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused by Pillow's decompression-bomb guard ({e}); if the image is genuine, run with a "
                       "larger --max_image_pixels (0 = no limit)") from None
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error... on bad data
        raise BadImage(f"does not decode: {type(e).__name__}: {e}") from None


def opened(data: bytes) -> tuple[Image.Image, int | None]:
    """(``data`` opened by Pillow, its header read; w x h where it is over PIL.Image.MAX_IMAGE_PIXELS but under twice
    it, Pillow's DecompressionBombWarning, else None). The warning is taken here: Pillow's own names no file, and
    Python shows it once a process."""
    with pillow_verdict(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    large = None
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            large = img.width * img.height
        else:  # anyone else's, as if not caught
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return img, large


def encode_image(data: bytes, shorter_side: int | None, quality: int) -> Encoded:
    if not data:
        raise BadImage("empty file")
    data = plain_jpeg(data)
    img, large = opened(data)
    jpeg = img.format in JPEG_FORMATS
    if not jpeg:
        with pillow_verdict():
            img.load()  # a full decode: a truncated or corrupt file fails here
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)  # Pillow also reads XMP's tiff:Orientation
    except Exception:  # a corrupt EXIF block: re-encoding drops it
        orientation = None
    stored_size = img.size
    resize = shorter_side is not None and min(stored_size) > shorter_side
    why = [reason for reason, applies in ((f"{img.format} file", not jpeg),
                                          # several times the bytes, and no decoding at a reduced scale
                                          ("lossless JPEG", jpeg and lossless(header_segments(data))),
                                          # a grayscale JPEG is kept: data/decode.py gives Pillow's convert("RGB")
                                          # of it (the grey level in R, G and B), what timm's and torchvision's
                                          # evaluation of the raw file see; a re-encode moves them ~2 levels
                                          (f"mode {img.mode}", img.mode != "RGB" and not (jpeg and img.mode == "L")),
                                          (f"EXIF orientation {orientation}", orientation != 1),
                                          ("resized", resize)) if applies]
    warning = whole_jpeg(img, data, pixels=bool(why)) if jpeg else None  # a JPEG's full decode
    if not why:
        return Encoded(data, 1, stored_size, stored_size, None, warning, large)
    applied = orientation if orientation in range(2, 9) else 1  # others are not rotations; the tag just goes
    icc = img.info.get("icc_profile") if img.mode == "RGB" else None  # a CMYK/gray profile is wrong for RGB
    try:
        if applied != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode in HIGH_DEPTH_MODES:
            img = to_8bit(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if resize:
            w, h = img.size
            scale = shorter_side / min(w, h)
            size = (shorter_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), shorter_side)
            # reducing_gap: box-reduce first, then bicubic; same look, several times faster on big shrinks
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, icc_profile=icc)  # no exif= : the orientation tag is gone
    except Exception as e:  # e.g. a mode Pillow cannot turn into RGB
        raise BadImage(f"cannot convert to an RGB JPEG: {type(e).__name__}: {e}") from None
    return Encoded(buf.getvalue(), applied, stored_size, img.size, ", ".join(why), warning, large)


# Below this the tile bookkeeping costs about what skipping the tiles outside the crop saves
# (BENCHMARKS.md: 24 KB files break even, 13-17 KB ones lose 5-13%, 46 KB ones gain 12-23% a sample).
TILE_MIN_BYTES = 24_000


def tile(data: bytes, tile_px: int) -> bytes | None:
    """The tiled re-code of a stored JPEG, if libjpeg-turbo decodes it to exactly the pixels of ``data``."""
    tiled = tile_writer.add_restarts(data, tile_px)
    if tiled is None:
        return None
    try:
        same = np.array_equal(simplejpeg.decode_jpeg(data), simplejpeg.decode_jpeg(tiled))
    except ValueError:  # e.g. a libjpeg warning on the original: keep it as it is
        return None
    return tiled if same else None


# libjpeg's JWRN_JPEG_EOF and JWRN_HIT_MARKER (jerror.h): the coded data stops before the last block (a download cut
# short, or one whose pre-allocated file kept its zeros) and the decoder fills in the rest, grey or made of the zeros
PREMATURE_END = ("Premature end of JPEG file", "Corrupt JPEG data: premature end of data segment")
DECODE_AS = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}  # simplejpeg's output for a JPEG colour space; else RGB


NO_VERDICT = ""  # libjpeg_warning where simplejpeg cannot judge the file: Pillow's decode alone does, nothing named


def libjpeg_warning(jpeg: bytes) -> str | None:
    """What libjpeg-turbo says on a full decode of ``jpeg`` (Pillow's decoder keeps libjpeg's warnings to itself):
    one of PREMATURE_END, or another warning, such as extraneous bytes before a marker (the first warning only: a
    strict decode stops there); None where it says nothing; NO_VERDICT where simplejpeg cannot name the file's
    subsampling (1.9 has no name for 4:4:1: a KeyError)."""
    try:
        space = simplejpeg.decode_jpeg_header(jpeg)[2]  # a warning in the header (stray bytes) raises here too
        simplejpeg.decode_jpeg(jpeg, colorspace=DECODE_AS.get(space, "RGB"))  # strict: a warning raises
    except ValueError as e:
        return str(e) or "ValueError"
    except KeyError:
        return NO_VERDICT
    return None


def whole_jpeg(img: Image.Image, data: bytes, pixels: bool) -> str | None:
    """A full decode of JPEG ``img``, opened from ``data``: a BadImage where it is not whole, PREMATURE_END included,
    which Pillow's decode lets through; else libjpeg-turbo's warning, None where it gives none. Where the pixels are
    not needed (the file is stored as it is), libjpeg-turbo's strict decode alone judges a file that draws no
    warning, in place of Pillow's, so it is decoded once; Pillow decodes the rest, its reason standing where it
    fails."""
    warning = libjpeg_warning(data)
    if warning is None and not pixels:
        return None
    with pillow_verdict():
        img.load()
    if warning in PREMATURE_END:
        raise BadImage(f"the JPEG data ends early, part of the picture is missing (libjpeg-turbo: {warning}); a "
                       "download cut short or zero-filled: download the file again")
    return warning


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one channel of 16/32-bit ints or floats


def to_8bit(img: Image.Image) -> Image.Image:
    """Mode L from a 16-bit (PNG/TIFF), 32-bit int or float grayscale image, rescaled from its nominal range:
    Pillow's convert() clips such values at 255, a white image. 16-bit modes span 0-65535; for I and F the range
    is guessed from the values: 0-1 (floats), 0-255, 0-65535, else 0-max."""
    a = np.asarray(img, dtype=np.float64)
    peak = float(a.max(initial=0.0))
    candidates = (65535.0,) if img.mode.startswith("I;16") else ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0)
    top = next((t for t in candidates if peak <= t), peak)
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def fix_boxes(raw_boxes, labels: dict, enc: Encoded, counts: Counter) -> list[dict]:
    """Boxes as read (name, xmin, ymin, xmax, ymax in stored pixels) -> objects of the output image."""
    upright = enc.stored_size if enc.orientation < 5 else enc.stored_size[::-1]  # 5-8 swap width and height
    sx, sy = enc.size[0] / upright[0], enc.size[1] / upright[1]
    objects = []
    for name, *box in raw_boxes:
        wnid = ilsvrc.is_wnid(name)
        label = labels.get(name if wnid else name.strip().lower())
        if label is None:
            counts["dropped_unknown_name"] += 1
            continue
        if not wnid:
            counts["renamed"] += 1  # a human name instead of a wnid, resolved through LOC_synset_mapping.txt
        if enc.orientation != 1:
            box = ilsvrc.orient_box(box, enc.orientation, *enc.stored_size)
        box, status = ilsvrc.clip_box(box, *upright)
        if box is None:
            counts[f"dropped_{status}"] += 1
            continue
        counts[status] += 1
        objects.append({"bbox": [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], "label": label})
    return objects


# ---------------------------------------------------------------------------------------------------------------
# One shard: a slice of a split's sorted list -> one Arrow file and a small JSON report. Runs in the workers.
# ---------------------------------------------------------------------------------------------------------------

class Shard(NamedTuple):
    split: str
    index: int
    data_dir: str
    image_dir: str  # relative to data_dir
    annotation_dir: str | None  # relative to data_dir
    items: list  # [(path relative to image_dir, label), ...]
    csv_boxes: dict  # stem -> boxes, only the stems of this shard
    path: str  # the finished Arrow file; it exists only once the shard is done
    report: str  # its JSON report, written just before the Arrow file is renamed into place
    ids_with_folder: bool  # image_id = "<class>/<stem>" (see image_tree.Split)
    source: dict | None = None  # where this shard's paths lie inside archives; None: files under data_dir


@contextlib.contextmanager
def pixel_limit(max_image_pixels: int):
    """PIL.Image.MAX_IMAGE_PIXELS is --max_image_pixels inside (0: None, Pillow's "no limit"), as it was after: with
    --num_proc 1 this process is the caller's, whose own setting must neither leak in nor be changed."""
    before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_image_pixels or None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def process_shard(shard: Shard, labels: dict, shorter_side: int | None, quality: int, restart_tile: int,
                  schema: pa.Schema, max_image_pixels: int) -> dict:
    summary = {"split": shard.split, "index": shard.index, "files": len(shard.items), "rows": 0, "skipped": [],
               "tiled": 0, "untiled": Counter(), "reencoded": Counter(), "reencoded_files": [], "boxes": Counter(),
               "annotation_errors": [], "decode_warnings": [], "large_images": [], "bytes_in": 0, "bytes_out": 0}
    tmp = shard.path + ".tmp"
    rows = []
    read = archives.MemberReader(shard.data_dir, shard.source)
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for rel, label in shard.items:
            src = os.path.join(shard.image_dir, rel)
            stem = os.path.splitext(os.path.basename(rel))[0]
            image_id = os.path.splitext(rel)[0] if shard.ids_with_folder else stem
            try:
                data = read(src)
                with pixel_limit(max_image_pixels):
                    enc = encode_image(data, shorter_side, quality)
            except (BadImage, OSError) as e:
                summary["skipped"].append({"path": src, "reason": str(e)})
                continue
            raw_boxes = shard.csv_boxes.get(stem, [])
            if shard.annotation_dir:
                xml = os.path.join(shard.annotation_dir, os.path.splitext(rel)[0] + ".xml")
                try:
                    raw_boxes = ilsvrc.read_voc_xml(os.path.join(shard.data_dir, xml), read(xml))
                except FileNotFoundError:
                    pass  # most train images have no boxes
                except ValueError as e:
                    summary["annotation_errors"].append(str(e))
                except OSError as e:  # a folder named .xml, no permission...
                    summary["annotation_errors"].append(f"{os.path.join(shard.data_dir, xml)}: cannot read it "
                                                        f"({e.strerror or e})")
            if restart_tile:
                if len(enc.data) < TILE_MIN_BYTES:
                    summary["untiled"][f"smaller than {TILE_MIN_BYTES // 1000} KB"] += 1
                elif (tiled := tile(enc.data, restart_tile)) is None:
                    summary["untiled"]["no lossless tiling"] += 1
                else:
                    enc = enc._replace(data=tiled)
                    summary["tiled"] += 1
            if enc.warning:
                summary["decode_warnings"].append({"path": src, "warning": enc.warning})
            if enc.large:
                summary["large_images"].append({"path": src, "pixels": enc.large})
            summary["bytes_in"] += len(data)
            summary["bytes_out"] += len(enc.data)
            if enc.why:
                summary["reencoded"][enc.why] += 1
                summary["reencoded_files"].append({"path": src, "reason": enc.why})
            rows.append({"image": {"bytes": enc.data, "path": os.path.basename(rel)}, "label": label,
                         "image_id": image_id, "objects": fix_boxes(raw_boxes, labels, enc, summary["boxes"])})
            if len(rows) == BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the rename below must not publish a file whose data is still in the page cache
    summary["rows"] = summary["files"] - len(summary["skipped"])
    summary["file"] = manifest.file_entry(tmp)  # hashed here, in parallel, while the file is in the page cache
    atomic_write_text(shard.report, json.dumps(summary))
    os.replace(tmp, shard.path)
    archives.release(shard.source)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------------------------

def check_config(cfg: PreprocessConfig) -> None:
    if not cfg.data_dir or not cfg.output_dir:
        raise SystemExit("error: --data_dir and --output_dir are required (or --verify OUT to check an output)")
    if cfg.val_fraction is not None and not 0 < cfg.val_fraction < 1:
        raise SystemExit(f"error: --val_fraction must be between 0 and 1 (0.1 = 10% of each class), got "
                         f"{cfg.val_fraction}")
    if cfg.num_proc < 0:
        raise SystemExit(f"error: --num_proc must be >= 0 (0 = all cores), got {cfg.num_proc}")
    if cfg.shorter_side is not None and cfg.shorter_side < 1:
        raise SystemExit(f"error: --shorter_side must be >= 1 px (or none), got {cfg.shorter_side}")
    if not 1 <= cfg.quality <= 100:
        raise SystemExit(f"error: --quality must be 1-100, got {cfg.quality}")
    if cfg.layout not in ("", "ilsvrc", "folders"):
        raise SystemExit(f"error: --layout must be ilsvrc or folders (or empty: detected), got {cfg.layout!r}")
    if cfg.max_image_pixels < 0:
        raise SystemExit(f"error: --max_image_pixels must be >= 0 (0 = no limit), got {cfg.max_image_pixels}")
    if cfg.shard_size < 1:
        raise SystemExit(f"error: --shard_size must be >= 1, got {cfg.shard_size}")
    if cfg.restart_tile < 0:
        raise SystemExit(f"error: --restart_tile must be >= 0 px (0 = no tiles), got {cfg.restart_tile}")
    if cfg.restart_tile:
        try:
            tile_writer.turbojpeg_library()  # fail now, not in every worker
        except RuntimeError as e:
            raise SystemExit(f"error: --restart_tile {cfg.restart_tile}: {e}") from None


def plan_shards(data_dir: Path, splits: dict[str, Split], work: Path, shard_size: int) -> list[Shard]:
    shards = []
    for split, s in splits.items():
        (work / split).mkdir(parents=True, exist_ok=True)
        count = math.ceil(len(s.items) / shard_size)
        for i in range(count):
            items = s.items[i * shard_size:(i + 1) * shard_size]
            stems = {os.path.splitext(os.path.basename(rel))[0] for rel, _ in items}
            shards.append(Shard(split, i, str(data_dir), s.image_dir, s.annotation_dir, items,
                                {k: v for k, v in s.csv_boxes.items() if k in stems},
                                str(work / split / f"data-{i:05d}-of-{count:05d}.arrow"),
                                str(work / WORK / f"{split}-{i:05d}.json"), s.ids_with_folder,
                                archives.for_shard(s.source, s.image_dir, s.annotation_dir, items)))
    return shards


ANNOTATIONS = f"{os.path.dirname(ilsvrc.ANNOTATION_DIRS['train'])} and {ilsvrc.VAL_SOLUTION}"  # where boxes come from


def annotation_sources(data_dir: Path, splits: dict[str, Split]) -> dict:
    """The job's record of Kaggle's tree's boxes: each split's XML folder (None where absent) and the SHA-256 of
    LOC_val_solution.csv (its boxes serve val images without XML)."""
    return {"xml": {split: s.annotation_dir for split, s in splits.items()},
            "csv": manifest.file_entry(data_dir / ilsvrc.VAL_SOLUTION)["sha256"]}


def unrecorded_annotations(old, new: dict) -> bool:
    """Whether job record ``old`` is ``new`` but for "annotations": written by a preprocess.py whose jobs did not
    hold them. Such an output is kept, with a note (``note_unrecorded``), rather than refused (a work folder of
    that version is started afresh: its encoder is older too, ``ENCODER``)."""
    return (isinstance(old, dict) and "annotations" in new and "annotations" not in old
            and old == {k: v for k, v in new.items() if k != "annotations"})


def note_unrecorded(where: Path, then: str) -> None:
    print(f"{where}: its job record does not say which annotations ({ANNOTATIONS}) it was made with; taken as made "
          f"with the present ones: {then}")


def older_same_job(old: dict, job: dict) -> bool:
    """Whether work-folder record ``old`` is ``job`` but for the encoder and the keys an older version's record
    lacks (the encoder; before it, the annotations)."""
    aside = {"encoder", *(k for k in VERSIONED if k not in old)}
    return {k: v for k, v in old.items() if k not in aside} == {k: v for k, v in job.items() if k not in aside}


def start_or_resume(work: Path, job: dict) -> None:
    """Keep OUT.tmp when it holds shards of this very job, written by this ENCODER, else start it afresh."""
    job = {**job, "encoder": ENCODER}
    job_file = work / WORK / "job.json"
    if work.is_dir() and not any(work.iterdir()):  # a start that failed before its first file: nothing to lose
        work.rmdir()
    if work.exists():
        if not (work / WORK).is_dir():  # never delete a folder this script did not start
            raise SystemExit(f"error: {work} exists and is not a preprocess.py work folder; remove it or choose "
                             "another --output_dir")
        try:
            old = json.loads(job_file.read_text())
        except (OSError, ValueError):
            old = None
        if old == job:
            clear_write_leftovers(work, job["files"])
            return
        same_job = isinstance(old, dict) and old.get("encoder") != ENCODER and older_same_job(old, job)
        print(f"{work}: left by " + ("an older preprocess.py, which stores images otherwise" if same_job else
                                     "a run with other inputs or settings") + "; starting over")
        shutil.rmtree(work)
    (work / WORK).mkdir(parents=True)
    atomic_write_text(job_file, json.dumps(job, indent=1))


def clear_write_leftovers(work: Path, splits) -> None:
    """Remove the temp files of atomic writes a killed run left in ``work`` and its ``splits``' folders: the output
    would keep them, a file its manifest does not list (``--verify`` fails, ``--overwrite`` refuses it)."""
    for folder in (work, *(work / split for split in splits)):
        if folder.is_dir():
            remove_write_leftovers(folder)


OWN_FILES = ("dataset_dict.json", "preprocess_report.json", ilsvrc.DESCRIPTIONS_FILE, "config.yaml", "run_info.json",
             manifest.SOURCE_FILE)  # beside the split folders: how an output that lost its manifest is recognised


def not_ours(out: Path, own: set[str]) -> list[str]:
    """Paths in ``out`` (relative, sorted) that this script did not write: a user's notes, a folder of theirs."""
    own_dirs = {str(Path(rel).parent) for rel in own}
    found = []
    for root, dirs, files in os.walk(out):
        rel_root = os.path.relpath(root, out)
        if rel_root == ".":  # a finished run's work notes (removed right after the rename); a build inside OUT
            dirs[:] = [d for d in dirs if d not in (WORK, INSIDE)]
        found += [os.path.normpath(os.path.join(rel_root, d)) for d in dirs
                  if os.path.normpath(os.path.join(rel_root, d)) not in own_dirs]
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_root, d)) in own_dirs]
        found += [rel for f in files if (rel := os.path.normpath(os.path.join(rel_root, f))) not in own]
    return sorted(found)


def files_without_manifest(out: Path) -> set[str]:
    """The files of an output without its manifest (an interrupted copy): OWN_FILES and the split folders' contents."""
    try:
        splits = json.loads((out / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        splits = []
    return {*OWN_FILES, *(f"{split}/{p.name}" for split in splits if (out / split).is_dir()
                          for p in (out / split).iterdir() if p.is_file())}


def job_changes(old: dict, new: dict) -> str:
    """What differs between two jobs, for the refusal: 'quality 90 -> 75, the files in --data_dir'."""
    said = {"files": "the files in --data_dir", "names": "the classes", "data_dir": "--data_dir",
            "annotations": f"the annotations in {ANNOTATIONS}"}
    unset = {"max_image_pixels": PreprocessConfig.max_image_pixels}  # what a job without the key was made with
    return ", ".join(said.get(k) or f"{k} {old.get(k, unset.get(k))} -> {new.get(k, unset.get(k))}"
                     for k in sorted({*old, *new})
                     if old.get(k) != new.get(k) and (k != "annotations" or k in old))  # unrecorded: unknown


def check_output(out: Path, job: dict | None, overwrite: bool) -> bool:
    """True when ``out`` already is this job's complete, intact output. A SystemExit for every ``out`` this run must
    not replace: not this script's, or its own of another job without --overwrite, or one holding a user's files.
    With job None, only the checks that need no listing of the inputs (seconds, before any work)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise SystemExit(f"error: --output_dir {out} is a file; choose a folder")
    if not any(p.name != INSIDE for p in out.iterdir()):  # an empty folder (mkdir, a mount point): nothing to lose
        return False
    m = manifest.read(out)
    if m is None and not all((out / f).is_file() for f in ("dataset_dict.json", "preprocess_report.json")):
        raise SystemExit(f"error: --output_dir {out} exists and is not a preprocess.py output (no "
                         f"{manifest.MANIFEST}); it writes only into a new or empty folder: choose another one")
    if job is None:
        return False
    damaged = manifest.check_sizes(out, m["files"]) if m is not None else None
    unrecorded = m is not None and unrecorded_annotations(m.get("job"), job)
    same = m is not None and (m.get("job") == job or unrecorded)
    if same and damaged is None and not overwrite:
        if unrecorded:
            note_unrecorded(out, "if they changed since, add --overwrite to rebuild it")
            try:  # recorded from now on: the note once, and a later change of them is then told apart
                atomic_write_text(out / manifest.MANIFEST, json.dumps(manifest.sealed({**m, "job": job}), indent=1))
            except OSError:  # a read-only copy of the dataset: it stays usable, with the note at each run
                pass
        return True
    if not overwrite:
        if m is None:
            why = f"{out} is a preprocess.py output without its {manifest.MANIFEST} (an interrupted copy?)"
        elif not same:
            why = f"{out} holds a preprocess.py output of other inputs or settings ({job_changes(m['job'], job)})"
        else:
            why = damaged
        raise SystemExit(f"error: --output_dir: {why}; add --overwrite to replace it, or choose another folder")
    foreign = not_ours(out, {*m["files"], manifest.MANIFEST} if m is not None else files_without_manifest(out))
    if foreign:
        raise SystemExit(f"error: --overwrite: {out / foreign[0]} is not preprocess.py's ({len(foreign)} such "
                         f"paths in {out}); move them out, then run again")
    return False


def source_info(listing: Listing, data_dir: Path, cfg: PreprocessConfig, counts: dict) -> dict:
    """source.json: the provenance a model card states (which dataset, whole or not, how it was split)."""
    found = {split: len(s.items) for split, s in listing.splits.items()}
    is_ilsvrc = listing.layout == image_tree.ILSVRC
    try:
        imagenet_classes = len(listing.names) == 1000 and listing.names == ilsvrc.imagenet_wnids()
    except (ValueError, OSError):  # timm's synset list absent: the class count has to do
        imagenet_classes = len(listing.names) == 1000
    # The full release: the 1000 classes, and every source file of train and val found. Files are counted as found,
    # before undecodable ones are skipped, so a complete download with a file its decoder rejects is still
    # ILSVRC-2012 (its report lists the skip); a subset or a trimmed tree is not, and goes by its folder's name so
    # that no model card calls a 10-class subset "ILSVRC-2012".
    full = bool(is_ilsvrc and imagenet_classes
                and all(found.get(s) == ilsvrc.FULL_COUNTS[s] for s in ("train", "validation")))
    return {
        "layout": listing.layout,
        "name": "ILSVRC-2012" if full else archives.dataset_name(data_dir.resolve()),
        "ilsvrc2012_full": full,
        "num_classes": len(listing.names),
        "counts": counts,
        "val_fraction": cfg.val_fraction if listing.layout == image_tree.CLASS_FOLDERS_SPLIT else None,
        "split_seed": cfg.split_seed if listing.layout == image_tree.CLASS_FOLDERS_SPLIT else None,
        **({"packaging": listing.archives["packaging"],
            "archives": [os.path.basename(p) for p in listing.archives["archives"]]} if listing.archives else {}),
        **(eval_sets.source_fields(listing.layout, listing.eval_set, counts, data_dir) if listing.eval_set else {}),
        # a demo tree: what its images really are (the cards say it); absent for real data
        **({"generated": demo.demo_origin(data_dir)} if demo.demo_origin(data_dir) else {}),
    }


def put_in_place(work: Path, out: Path, job: dict, overwrite: bool) -> bool:
    """Move the finished ``work`` to ``out`` (checked again: a user may have put files there meanwhile). False when
    ``out`` turned out to be this very dataset already (another run of the same command finished first)."""
    try:
        if check_output(out, job, overwrite):
            shutil.rmtree(work)
            return False
    except SystemExit as e:
        raise SystemExit(f"{e.code} (the finished dataset waits in {work}: the same command then only moves it)")
    if work.parent == out:  # built inside: an --overwrite's earlier output goes (each path checked to be ours)
        for entry in out.iterdir():
            if entry.name != INSIDE:
                remove(entry)
        move_up(out)
        return True
    if out.is_dir() and not any(out.iterdir()):
        try:
            out.rmdir()  # fails if a file arrived since: then nothing is lost either
        except OSError:
            raise SystemExit(f"error: --output_dir {out} is no longer empty; the finished dataset waits in {work}: "
                             "run the same command again") from None
    if out.exists():
        swap_in(work, out)
    else:
        os.replace(work, out)
    return True


INSIDE = ".preprocess.tmp"  # the work folder inside an OUT that exists empty or is a mount point (no rename over it)


def work_folder(out: Path) -> Path:
    """Where the dataset is built: OUT.tmp beside a new OUT, renamed into place at the end; inside an OUT that
    already exists empty (made with mkdir) or is a mount point (a rename of it fails with EBUSY, an --overwrite's
    too), so the work is on OUT's own filesystem and its entries move up at the end. An OUT.tmp left by an
    interrupted run is resumed."""
    beside = out.with_name(out.name + ".tmp")
    if not beside.exists() and ((out / INSIDE).is_dir() or out.is_dir() and (not any(out.iterdir())
                                                                              or os.path.ismount(out))):
        return out / INSIDE
    return beside


def move_up(out: Path) -> None:
    """The entries of the dataset finished in OUT/INSIDE moved up into OUT, the manifest (which says "complete")
    last; a path already there is a leftover of the output this one replaces (an --overwrite cut short)."""
    work = out / INSIDE
    for entry in sorted(work.iterdir(), key=lambda p: p.name == manifest.MANIFEST):
        if (out / entry.name).exists() or (out / entry.name).is_symlink():
            remove(out / entry.name)
        os.replace(entry, out / entry.name)
    work.rmdir()


def finish_move(out: Path) -> None:
    """A run killed while its finished dataset moved up from OUT/INSIDE (its manifest, written last when the dataset
    was whole, still there): the rest of the move, before anything else looks at OUT."""
    if manifest.read(out / INSIDE) is not None:
        print(f"{out}: a finished dataset was being moved into place from {out / INSIDE}; moving the rest")
        move_up(out)
    elif (out / INSIDE).is_dir() and not any((out / INSIDE).iterdir()) and manifest.read(out) is not None:
        (out / INSIDE).rmdir()  # killed before move_up's last step: everything had moved


# swap_in's note in the output it moves aside (runinfo.mark_replaced: REPLACED_NOTE, among the work notes in WORK,
# which a finished output's checks skip and a run finding it done removes, so a run killed before the move leaves
# nothing in the way)
assert REPLACED_NOTE.startswith(f"{WORK}/")
REPLACED_BY = "preprocess.py --overwrite"  # in the note: a user's folder named .OUT.old, whatever it holds, has none


def in_the_way(out: Path) -> str:
    return (f"error: --output_dir {out}: --overwrite moves the output it replaces to {replaced_folder(out)}, which "
            "holds something else (a file, link or folder of yours?); move it away or rename it, then run again")


def swap_in(work: Path, out: Path) -> None:
    """--overwrite's swap: ``out`` moved aside as .OUT.old with the note that lets a later run delete it, ``work``
    renamed into place, then .OUT.old deleted. A kill at any point leaves nothing a later run does not remove."""
    old = replaced_folder(out)
    if os.path.lexists(old):  # checked at the start, but a user may have put it there since
        raise SystemExit(f"{in_the_way(out)} (the finished dataset waits in {work}: the same command then only "
                         "moves it)")
    mark_replaced(out, REPLACED_BY)
    os.replace(out, old)
    os.replace(work, out)
    try:
        delete_replaced(old)
    except OSError as e:  # the new output is in place: not worth a failed run
        print(f"warning: {old}, the output this one replaced, could not be deleted ({e}); delete it to free its "
              "space")


def clear_replaced(out: Path, swaps: bool) -> None:
    """.OUT.old, which a run killed inside swap_in left where no later run would look (hidden, as large as the
    dataset): removed, in one line. Anything else of that name is left alone, and refused now, before any work,
    when this run's swap will need the name (``swaps``)."""
    old = replaced_folder(out)
    if is_replaced(old, out, REPLACED_BY):
        size = sum(p.stat().st_size for p in old.rglob("*") if p.is_file() and not p.is_symlink())
        try:
            delete_replaced(old)
        except OSError as e:
            raise SystemExit(f"error: --output_dir {out}: cannot delete {old}, the output an --overwrite replaced "
                             f"({e}); delete it, then run again") from None
        print(f"removed {old} ({size / 1e9:.1f} GB): the output an --overwrite replaced, left by a run killed "
              "before deleting it")
    elif swaps and os.path.lexists(old):
        raise SystemExit(in_the_way(out))


def already_done(out: Path) -> None:
    """The lines a finished output gets, once OUT/.work a run killed after its last rename left is gone; and one
    about the files it skipped as unreadable (permissions, I/O errors), which may read now."""
    shutil.rmtree(out / WORK, ignore_errors=True)
    print(f"{out}: already done (same file names, labels, settings and annotation folders, every file present); "
          "nothing to do")
    # a stat or a read of every input (1.3M files, minutes on NFS) would be the cost of noticing a replaced one
    print(f"{out}: the input files' contents are not compared: after replacing an image or editing an annotation "
          "under the same name, add --overwrite to rebuild it")
    skipped = json.loads((out / "preprocess_report.json").read_text())["skipped"]
    unread = [s for s in skipped if s["reason"].startswith("[Errno ")]  # an OSError's text; a decode's is not
    if unread:
        print(f"{out}: {len(unread)} files were skipped as unreadable (e.g. {unread[0]['reason']}); if they read "
              "now, add --overwrite to rebuild the output with them")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def hold_output(out: Path) -> None:
    """One run per OUT: a lock beside it (OUT appears by a rename) for this process's lifetime."""
    path = out.with_name(out.name + ".lock")
    try:
        lock = FolderLock(out, "--output_dir", path=path).acquire()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        raise SystemExit(f"error: --output_dir {out}: cannot create {path} ({e.strerror or e})") from None
    if lock.took_over:
        print(lock.took_over)


def interrupt(signum, frame):
    """SIGTERM (a batch system's stop, `kill`) ends the run as Ctrl-C does: finished shards kept, one line."""
    raise KeyboardInterrupt


def verify_output(folder: str) -> None:
    """--verify: every file of a finished output against its manifest; one line per bad file, exit status 0/1."""
    try:
        bad, total = manifest.verify(Path(folder).expanduser())
    except ValueError as e:
        raise SystemExit(f"error: --verify {e}") from None
    for line in bad:
        print(f"BAD {line}")
    if bad:
        raise SystemExit(f"error: --verify {folder}: {len(bad)} of {total} files damaged or missing; copy them again "
                         "from where the dataset was made")
    print(f"ok: {folder}: all {total} files match {manifest.MANIFEST}")


def write_split_metadata(work: Path, split: str, shards: list[Shard], info: datasets.DatasetInfo,
                         fingerprint: str) -> None:
    """state.json and dataset_info.json exactly as ``Dataset.save_to_disk`` writes them, over our Arrow files."""
    info.write_to_directory(str(work / split))
    state = {"_data_files": [{"filename": os.path.basename(s.path)} for s in shards],
             "_fingerprint": fingerprint, "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": split}
    atomic_write_text(work / split / "state.json", json.dumps(state, indent=2, sort_keys=True))


def print_summary(report: dict, out: Path, kept: int) -> None:
    """``kept``: shards an earlier, interrupted run finished, whose time is not in this run's seconds."""
    print(f"wrote {out} in {report['seconds']:.0f} s"
          + (f" (this run's time; {kept} shards were done by an earlier run)" if kept else ""))
    print(f"  {'split':<11}{'files':>11}{'images':>11}{'skipped':>9}{'re-encoded':>12}{'tiled':>11}{'boxes':>9}"
          f"{'dropped':>9}")
    skipped = report["skipped"]
    for split in report["counts"]:
        boxes = report["boxes"][split]
        print(f"  {split:<11}{report['files'][split]:>11,}{report['counts'][split]:>11,}"
              f"{sum(s['split'] == split for s in skipped):>9,}{sum(report['reencoded'][split].values()):>12,}"
              f"{report['tiled'][split]:>11,}"
              f"{boxes.get('ok', 0) + boxes.get('clipped', 0):>9,}"
              f"{sum(v for k, v in boxes.items() if k.startswith('dropped')):>9,}")
    for s in skipped[:20]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(skipped) > 20:
        print(f"  ... {len(skipped) - 20} more skipped files")
    if report["annotation_errors"]:
        left = {"validation": "those images keep their boxes from the CSV"}  # train has no boxes but its XML's
        per_split = ", ".join(f"{n} {split} ({left.get(split, 'those images have no boxes')})"
                              for split, n in report["unread_annotations"].items() if n)
        print(f"  {len(report['annotation_errors'])} annotation files could not be read: {per_split}")
    if skipped or report["annotation_errors"] or report["left_out"]:  # the warnings give a count and one name
        print(f"  details: {out / 'preprocess_report.json'}")
    for w in report["warnings"]:
        print(f"warning: {w}")


def assemble(work: Path, shards: list[Shard], listing: Listing, data_dir: Path, cfg: PreprocessConfig, job: dict,
             started: float) -> dict:
    """Per-split metadata over the finished shards, the report, source.json and, last, the manifest; the report."""
    reports = [json.loads(Path(s.report).read_text()) for s in shards]
    for s, r in zip(shards, reports):
        if os.path.getsize(s.path) != r["file"]["bytes"]:
            raise SystemExit(f"error: {s.path} is not the size its shard report says (damaged since it was "
                             f"written?); delete it and run the same command again")
    splits, names = listing.splits, listing.names
    features = make_features(names)
    counts = {split: sum(r["rows"] for r in reports if r["split"] == split) for split in splits}
    is_ilsvrc = listing.layout == image_tree.ILSVRC
    description = json.dumps({
        ilsvrc.DESCRIPTIONS_KEY: listing.descriptions,
        "source": ("ILSVRC-2012 CLS-LOC, Kaggle imagenet-object-localization-challenge, via preprocess.py"
                   if is_ilsvrc else f"{data_dir.name}, a class-per-folder image tree, via preprocess.py"),
        "labels": ("ClassLabel names are the wnids in sorted order; class_descriptions are the human names"
                   if is_ilsvrc else "ClassLabel names are the class folders' names in sorted order"),
    })
    for split in splits:
        info = datasets.DatasetInfo(description=description, features=features, splits=datasets.SplitDict(
            {split: datasets.SplitInfo(name=split, num_examples=counts[split])}))
        write_split_metadata(work, split, [s for s in shards if s.split == split], info,
                             hashlib.sha1(json.dumps([job, split]).encode()).hexdigest()[:16])
    atomic_write_text(work / "dataset_dict.json", json.dumps({"splits": list(splits)}))
    loaded = datasets.load_from_disk(str(work))  # memory-mapped, cheap; proves OUT will load before it exists
    if {split: loaded[split].num_rows for split in splits} != counts:
        raise SystemExit(f"error: {work}: the Arrow files do not hold the rows the shard reports count; "
                         f"delete {work} and run again")

    warnings = list(listing.warnings)
    if older := sum("reencoded_files" not in r for r in reports):  # kept: redoing them could cost hours
        warnings.append(f"{older} shards were written by an earlier preprocess.py: their re-encoded files are counted "
                        "in reencoded, not named in reencoded_files")
    if is_ilsvrc and len(names) == 1000:
        warnings += [f"{split}: {counts[split]:,} images, full ILSVRC-2012 has {full:,}"
                     for split, full in ilsvrc.FULL_COUNTS.items() if split in counts and counts[split] != full]
    named = {key: [dict(split=r["split"], **e) for r in reports for e in r[key]]
             for key in ("decode_warnings", "large_images")}
    warnings += stored_warnings(named, cfg.max_image_pixels)
    report = {
        "config": asdict(cfg), "seconds": round(time.time() - started, 3), "warnings": warnings,
        "counts": counts, "files": {split: len(s.items) for split, s in splits.items()},
        "skipped": [dict(split=r["split"], **s) for r in reports for s in r["skipped"]],
        # files, folders and archive members of the input not read (the warnings count them; null: not listed for
        # an evaluation set, whose warnings name them), then each file stored re-encoded
        "left_out": None if listing.left_out is None else sorted(listing.left_out, key=lambda e: e["path"]),
        "reencoded_files": [dict(split=r["split"], **e) for r in reports for e in r.get("reencoded_files", [])],
        # stored files a decoder had a word about: libjpeg-turbo's warning, Pillow's decompression-bomb warning
        **named,
        **{key: {split: sum((Counter(r[key]) for r in reports if r["split"] == split), Counter())
                 for split in splits} for key in ("untiled", "reencoded", "boxes")},
        "tiled": {split: sum(r["tiled"] for r in reports if r["split"] == split) for split in splits},
        "annotation_errors": [e for r in reports for e in r["annotation_errors"]],
        "unread_annotations": {split: sum(len(r["annotation_errors"]) for r in reports if r["split"] == split)
                               for split in splits},
        "bytes_in": sum(r["bytes_in"] for r in reports), "bytes_out": sum(r["bytes_out"] for r in reports),
    }
    atomic_write_text(work / "preprocess_report.json", json.dumps(report, indent=1))
    atomic_write_text(work / ilsvrc.DESCRIPTIONS_FILE, json.dumps(listing.descriptions, indent=0))
    atomic_write_text(work / manifest.SOURCE_FILE, json.dumps(source_info(listing, data_dir, cfg, counts), indent=1))
    write_run_info(work, cfg)
    files = {os.path.relpath(s.path, work): r["file"] for s, r in zip(shards, reports)}
    for split in splits:
        files.update({f"{split}/{n}": manifest.file_entry(work / split / n) for n in ("state.json",
                                                                                      "dataset_info.json")})
    files.update({n: manifest.file_entry(work / n) for n in OWN_FILES})
    atomic_write_text(work / manifest.MANIFEST, json.dumps(manifest.sealed(
        {"format": manifest.FORMAT, "job": job, "files": dict(sorted(files.items()))}), indent=1))
    return report


def stored_warnings(named: dict, max_image_pixels: int) -> list[str]:
    """One line for the files of each of the report's ``decode_warnings`` and ``large_images`` (``named``)."""
    lines = []
    if found := named["decode_warnings"]:
        lines.append(f"{len(found)} stored JPEG files draw a warning from libjpeg-turbo's decoder (Pillow's shows "
                     f"none; files whose data ends early are skipped, a gap of zeros before a marker is not), "
                     f"e.g. {found[0]['path']}: "
                     f"{found[0]['warning']}; all in preprocess_report.json's decode_warnings")
    if found := named["large_images"]:
        lines.append(f"{len(found)} images are over --max_image_pixels {max_image_pixels:,} px but under twice it, "
                     f"so stored (Pillow's decompression-bomb warning), e.g. {found[0]['path']} "
                     f"({found[0]['pixels']:,} px); all in preprocess_report.json's large_images")
    return lines


def main(argv=None) -> None:
    try:
        return run(argv)
    finally:
        release_all()  # OUT's lock, for a caller that goes on


def convert(work_fn, pending, work: Path, num_proc: int, bar) -> None:
    """Run ``work_fn`` on every pending shard, archives read as one stream (``archives.spool``), in this process or
    ``num_proc`` worker processes (``run_workers``); KeyboardInterrupt, WorkerDied and OSError (a full disk) reach the
    caller, the spool stopped first."""
    stop = threading.Event()
    pending = archives.spool(pending, work / WORK / "spool", 2 * num_proc, stop)
    if num_proc == 1:
        for summary in map(work_fn, pending):  # in-process: simplest to debug and profile
            bar.update(summary["files"])
        return
    run_workers(work_fn, pending, num_proc, stop, lambda summary: bar.update(summary["files"]))


# ---------------------------------------------------------------------------------------------------------------
# The --num_proc workers: a pool of our own. multiprocessing.Pool replaces a worker killed from outside (the kernel's
# out-of-memory killer sends SIGKILL) and then waits forever for the shard it had; concurrent.futures' pool leaves
# its queues' semaphores to a warning when this run is SIGKILLed. Here each worker has a pipe of its own: a death
# is seen at once, by its pipe's end, and nothing is left half used by it.
# ---------------------------------------------------------------------------------------------------------------

class WorkerDied(Exception):
    """A worker process ended while the run still needed it: killed from outside, or crashed."""


class RemoteTraceback(Exception):
    """A worker's traceback, the cause of the exception it raised (as multiprocessing.Pool shows them)."""


def worker_died(p: mp.Process) -> Exception:
    """What to raise for worker ``p``, whose pipe's end says it has ended: KeyboardInterrupt where a stop meant for
    the whole run (SIGTERM, SIGINT) ended it."""
    p.join(5)  # its status comes at once
    code = p.exitcode
    if code in (-signal.SIGTERM, -signal.SIGINT):
        return KeyboardInterrupt()
    if code == -signal.SIGKILL:
        how = "was killed by SIGKILL, probably by the kernel's out-of-memory killer: lower --num_proc"
    elif code is not None and code < 0:
        how = f"died of signal {-code} ({signal.strsignal(-code)})"
    else:
        how = f"exited with status {code}"
    return WorkerDied(f"worker process {p.pid} {how}")


def shard_worker(conn, parent: int, work_fn) -> None:
    """A worker process: an ``answer`` back for each shard from ``conn``. It started with SIGINT blocked
    (``starting_workers``) and ignores it: Ctrl-C reaches every process of the terminal's group, and the parent alone
    ends the run, in one line. It ends quietly once the parent is gone (a SIGKILL): no traceback of a broken pipe,
    and no orphan left writing the shard that a rerun writes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # one that came meanwhile is dropped
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    try:
        while True:
            conn.send(answer(work_fn, conn.recv()))
    except (EOFError, OSError):  # the parent is gone
        os._exit(0)


def answer(work_fn, shard) -> tuple:
    """(``work_fn``'s summary, None), or (None, (the exception it raised, its traceback)): the exception as text
    where it would not reach the parent whole."""
    try:
        return work_fn(shard), None
    except Exception as e:  # raised again in the parent (an OSError: a full disk is said in one line there)
        remote = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return None, (e, remote)


def exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:  # then the worker is handed to init or a subreaper
        time.sleep(0.2)
    os._exit(0)


@contextlib.contextmanager
def starting_workers():
    """While worker processes start: SIGINT blocked in this thread, so each worker starts with it blocked (a
    process's signal mask outlives fork and exec) until ``shard_worker`` ignores it; and this process's own Ctrl-C
    and SIGTERM, whichever thread the kernel hands them to, held until the workers have started, then acted on as
    usual (KeyboardInterrupt): never dropped, never raised inside the start of a process."""
    held = {sig: h for sig in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(sig))}
    came = []
    for sig in held:  # a default or ignored signal stays as it is
        signal.signal(sig, lambda signum, frame: came.append(signum))
    mp.resource_tracker.ensure_running()  # its start, with the first worker's, would unblock SIGINT here
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGINT pending for this thread reaches `came` here
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(came):
            held[sig](sig, None)


def feed(shards, conn, failed: list) -> None:
    """The feeder thread: ``shards`` (the spool, which may wait for archives and for room) into ``conn``, then None;
    an exception into ``failed``, for the main thread to raise."""
    try:
        for shard in shards:
            conn.send(shard)
    except BaseException as e:  # also the closed pipe of a run that ended first
        failed.append(e)
    with contextlib.suppress(OSError):
        conn.send(None)
    conn.close()


def run_workers(work_fn, shards, num_proc: int, stop: threading.Event, done) -> None:
    """``work_fn`` on each of ``shards`` in ``num_proc`` worker processes; ``done(summary)`` for each. A worker's
    exception is raised here; a worker that dies raises WorkerDied (``worker_died``); on any way out the feeder thread
    stops (``stop``) and every worker is gone."""
    ctx = mp.get_context("spawn")  # not fork: this process has library threads (pyarrow, tqdm's monitor) fork copies
    fed, feeding = ctx.Pipe(duplex=False)
    failed = []
    feeder = threading.Thread(target=feed, args=(shards, feeding, failed), daemon=True)
    workers = {}  # our end of each worker's pipe -> its Process
    try:
        feeder.start()  # the spool reads on while the workers start
        with starting_workers():
            for _ in range(num_proc):
                mine, theirs = ctx.Pipe()
                p = ctx.Process(target=shard_worker, args=(theirs, os.getpid(), work_fn), daemon=True)
                p.start()
                theirs.close()
                workers[mine] = p
        deal(workers, fed, failed, done)
    finally:
        stop.set()  # the spool's generator ends where it stands, as a kill would end it
        fed.close()  # and the feeder's next send fails
        for p in workers.values():
            p.kill()  # idle, or in a shard that a rerun redoes
        for p in workers.values():
            p.join()
        feeder.join()


def deal(workers: dict, fed, failed: list, done) -> None:
    """Each shard from ``fed`` to an idle worker and each answer to ``done``, until the feeder's None finds every
    worker idle."""
    idle, busy, last = list(workers), set(), False
    while busy or not last:
        for ready in mp.connection.wait([*busy, *([fed] if idle and not last else [])]):
            if ready in busy:
                busy.remove(ready)
                idle.append(ready)
                done(result(ready, workers[ready]))
            elif (shard := fed.recv()) is not None:
                conn = idle.pop()
                with contextlib.suppress(OSError):  # a worker just dead: its pipe's end says so next
                    conn.send(shard)
                busy.add(conn)
            elif failed:
                raise failed[0]
            else:
                last = True


def result(conn, p: mp.Process) -> dict:
    """The summary worker ``p`` sent on ``conn``; the exception it raised, raised here."""
    try:
        summary, error = conn.recv()
    except (EOFError, OSError):
        raise worker_died(p) from None
    if error:
        raise error[0] from RemoteTraceback(f"\n'''\n{error[1]}'''")
    return summary


def disk_full(work: Path) -> SystemExit:
    return SystemExit(f"error: no space left on the disk of {work} ({checkpoints.free_bytes(work) / 1e9:.1f} GB "
                      "free); finished shards are kept there: free space (or --output_dir on a larger disk), then "
                      "run the same command to resume")


def job_of(cfg: PreprocessConfig, data_dir: Path, listing) -> dict:
    """The job: everything the output depends on (files by name and label, not contents; num_proc does not count)."""
    splits = listing.splits
    job = {"format": FORMAT_VERSION, "data_dir": str(data_dir), "layout": listing.layout,
           "shorter_side": cfg.shorter_side, "quality": cfg.quality, "restart_tile": cfg.restart_tile,
           "shard_size": cfg.shard_size, "val_fraction": cfg.val_fraction,
           "split_seed": cfg.split_seed if cfg.val_fraction is not None else None, "names": listing.names,
           "files": {split: hashlib.sha1("\n".join(f"{rel} {label}" for rel, label in s.items).encode()).hexdigest()
                     for split, s in splits.items()}}
    variant = (listing.eval_set or {}).get("variant")
    if variant and variant != eval_sets.named_variant(data_dir):  # from --eval_set: it decides source.json's name
        job["variant"] = variant
    # recorded only off Pillow's default, which a job record without the key was made with: those stay this job
    if cfg.max_image_pixels != PreprocessConfig.max_image_pixels:
        job["max_image_pixels"] = cfg.max_image_pixels
    if listing.archives:  # the same paths from other archive files are other data
        job["archives"] = {p: archives.archive_size(p) for p in listing.archives["archives"]}
    elif listing.layout == image_tree.ILSVRC:  # boxes unpacked since, or an edited CSV, are other inputs too
        job["annotations"] = annotation_sources(data_dir, splits)
    return job


def check_output_place(data_dir: Path, out: Path) -> None:
    """One-line errors for an --output_dir that cannot hold the output: inside --data_dir (a rerun would read the
    output as images, a class "pp"), or a file system root (OUT.tmp and OUT.lock go beside OUT)."""
    if out == data_dir or data_dir in out.parents:
        raise SystemExit(f"error: --output_dir {out} is inside --data_dir {data_dir}; choose a folder outside it")
    if out == out.parent:
        raise SystemExit(f"error: --output_dir {out} is a file system root; choose a folder below it")


def run(argv=None) -> None:
    cfg = parse_config(PreprocessConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.verify:
        return verify_output(cfg.verify)
    check_config(cfg)
    started = time.time()
    data_dir, out = Path(cfg.data_dir).expanduser().resolve(), Path(cfg.output_dir).expanduser().resolve()
    check_output_place(data_dir, out)
    hold_output(out)
    finish_move(out)
    work = work_folder(out)
    clear_replaced(out, swaps=cfg.overwrite and out.exists() and work.parent != out)
    check_output(out, None, cfg.overwrite)  # a folder that is not ours is refused before any listing
    try:
        listing = list_splits(data_dir, cfg.val_fraction, cfg.split_seed, cfg.eval_set, cfg.layout)
    except (ValueError, OSError) as e:  # OSError: a folder that cannot be listed (permissions)
        raise SystemExit(f"error: {e}") from None
    splits = listing.splits
    if listing.archives:
        print(f"{data_dir}: {listing.archives['describe']}")
        try:
            for line in archives.verify_md5(archives.Found(**listing.archives)) if cfg.verify_archives else ():
                print(line)
        except ValueError as e:
            raise SystemExit(f"error: --verify_archives: {e}") from None
    elif cfg.verify_archives:  # said, not ignored: a user may believe the files were checked
        print(f"note: --verify_archives: {data_dir} holds no archives (a folder of image files): nothing to verify")
    print(f"{data_dir}: {len(listing.names)} classes; "
          + ", ".join(f"{len(s.items):,} {split} files" for split, s in splits.items()))

    job = job_of(cfg, data_dir, listing)
    if check_output(out, job, cfg.overwrite):
        return already_done(out)
    try:
        start_or_resume(work, job)
    except OSError as e:
        raise SystemExit(f"error: --output_dir {out}: cannot create {work} ({e.strerror or e})") from None
    shards = plan_shards(data_dir, splits, work, cfg.shard_size)
    pending = [s for s in shards if not os.path.exists(s.path)]  # renamed into place after its report
    total, kept = sum(len(s.items) for s in shards), len(shards) - len(pending)
    if kept:
        print(f"resuming {work}: {kept} of {len(shards)} shards already done")

    num_proc = min(cfg.num_proc or available_cores(), max(1, len(pending)))
    work_fn = functools.partial(process_shard, labels=ilsvrc.label_lookup(listing.names, listing.descriptions),
                                shorter_side=cfg.shorter_side, quality=cfg.quality, restart_tile=cfg.restart_tile,
                                schema=make_features(listing.names).arrow_schema, max_image_pixels=cfg.max_image_pixels)
    bar = tqdm(total=total, initial=total - sum(len(s.items) for s in pending), unit="img", desc="preprocess",
               smoothing=0.05)
    try:
        convert(work_fn, pending, work, num_proc, bar)
    except KeyboardInterrupt:
        bar.close()  # its last state first, then the one line
        raise SystemExit(f"interrupted: finished shards are kept in {work}; run the same command to resume")
    except WorkerDied as e:
        bar.close()
        raise SystemExit(f"error: {e}; finished shards are kept in {work}: run the same command to resume") from None
    except OSError as e:
        if not checkpoints.is_disk_full(e):
            raise
        bar.close()
        raise disk_full(work) from None
    bar.close()

    try:
        report = assemble(work, shards, listing, data_dir, cfg, job, started)
        if not put_in_place(work, out, job, cfg.overwrite):
            return already_done(out)
    except OSError as e:  # the metadata files, the manifest, --overwrite's note
        if not checkpoints.is_disk_full(e):
            raise
        raise disk_full(work) from None
    shutil.rmtree(out / WORK)
    print_summary(report, out, kept)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if signal.getsignal(signal.SIGINT) is interrupted_while_importing:  # the imports are done: Ctrl-C as usual
            signal.signal(signal.SIGINT, signal.default_int_handler)
        main()
    except KeyboardInterrupt:  # outside the shard pool, which says where the finished shards are
        raise SystemExit("interrupted: run the same command to resume") from None
