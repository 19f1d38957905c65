"""ImageNet's quirks as the demo tree (demo.py) plants them: each SAVE function writes an image at a path as ImageNet
has such a file (CMYK, grayscale, a PNG named .JPEG, EXIF-rotated, truncated, empty, garbage) and returns the pixels
stored; each BOX_XML function gives a train image's XML objects with one of ImageNet's box faults. Where
``faults=True`` plants them: TRAIN_FAULTS, BOX_FAULTS, VAL_FAULTS.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image


def random_box(w: int, h: int, rng) -> tuple:
    """An integer box covering 30-90% of each side, inside the image."""
    bw, bh = int(w * rng.uniform(0.3, 0.9)), int(h * rng.uniform(0.3, 0.9))
    x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    return (x, y, x + bw, y + bh)


def jpeg_bytes(img: Image.Image, rng, quality: int = 0) -> bytes:
    """ImageNet's mix (quality 75-95, a fifth progressive), or, with ``quality``, sequential at that quality."""
    buf = io.BytesIO()
    if quality:
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "JPEG", quality=int(rng.integers(75, 96)), progressive=bool(rng.random() < 0.2))
    return buf.getvalue()


def _save_cmyk(path: Path, img: Image.Image, rng) -> Image.Image:
    img.convert("CMYK").save(path, "JPEG", quality=90)
    return img


def _save_grayscale(path: Path, img: Image.Image, rng) -> Image.Image:
    img.convert("L").save(path, "JPEG", quality=90)
    return img


def _save_png_named_jpeg(path: Path, img: Image.Image, rng) -> Image.Image:
    img.save(path, "PNG")
    return img


def _save_exif_orientation_6(path: Path, img: Image.Image, rng) -> Image.Image:
    """Stored turned a quarter to the left with Orientation=6, so viewers turn it back upright; its box is drawn in
    stored-pixel coordinates (ImageNet's annotation tool showed raw pixels) and painted pure red, so a test can check
    that preprocess.py turns box and pixels the same way. The box is ``img.info["box"]``."""
    stored = img.transpose(Image.Transpose.ROTATE_90)
    box = random_box(*stored.size, rng)
    raw = np.asarray(stored.convert("RGB")).copy()
    raw[box[1]:box[3], box[0]:box[2]] = (255, 0, 0)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored = Image.fromarray(raw)
    stored.save(path, "JPEG", quality=95, exif=exif)
    stored.info["box"] = box
    return stored


def _save_truncated(path: Path, img: Image.Image, rng) -> Image.Image:
    path.write_bytes(jpeg_bytes(img, rng)[:-600])  # no EOI marker, the last scan cut short
    return img


def _save_empty(path: Path, img: Image.Image, rng) -> Image.Image:
    path.write_bytes(b"")
    return img


def _save_garbage(path: Path, img: Image.Image, rng) -> Image.Image:
    path.write_bytes(rng.bytes(2048))
    return img


def _save_jpeg(path: Path, img: Image.Image, rng) -> Image.Image:
    path.write_bytes(jpeg_bytes(img, rng))
    return img


SAVE = {"cmyk": _save_cmyk, "val_cmyk": _save_cmyk, "grayscale": _save_grayscale,
        "png_named_jpeg": _save_png_named_jpeg, "exif_orientation_6": _save_exif_orientation_6,
        "truncated": _save_truncated, "empty": _save_empty, "garbage": _save_garbage, None: _save_jpeg}


# the box quirks in a train image's XML: (wnid, box, width, description) -> (objects, <filename> or None)

def _box_float(wnid, box, w, description):
    return [(wnid, box[0] + 0.5, box[1] + 0.25, box[2] - 0.5, box[3] - 0.75)], None


def _box_past_edge(wnid, box, w, description):
    return [(wnid, box[0], box[1], w + 37, box[3])], None


def _box_inverted(wnid, box, w, description):
    return [(wnid, *box), (wnid, box[2], box[1], box[0], box[3])], None


def _box_filename_placeholder(wnid, box, w, description):
    return [(wnid, *box)], "%s"


def _box_human_name(wnid, box, w, description):
    return [(description, *box)], None


def _box_unknown_name(wnid, box, w, description):
    return [("not a synset", *box)], None


def _box_plain(wnid, box, w, description):
    return [(wnid, *box)], None


BOX_XML = {"box_float": _box_float, "box_past_edge": _box_past_edge, "box_inverted": _box_inverted,
           "box_filename_placeholder": _box_filename_placeholder, "box_human_name": _box_human_name,
           "box_unknown_name": _box_unknown_name, None: _box_plain}
# where faults=True plants them: (class, index in class) of train, index of val
TRAIN_FAULTS = {(0, 0): "cmyk", (0, 1): "exif_orientation_6", (1, 0): "grayscale", (1, 1): "truncated",
                (2, 1): "png_named_jpeg"}
BOX_FAULTS = {(0, 2): "box_float", (1, 2): "box_past_edge", (2, 2): "box_inverted", (0, 3): "box_filename_placeholder",
              (1, 3): "box_human_name", (2, 3): "box_unknown_name"}
VAL_FAULTS = {0: "val_cmyk", 1: "empty", 3: "box_several"}
