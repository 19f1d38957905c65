"""Stage 3 of the input pipeline: encoded bytes -> RGB pixels, decoding no more than the crop needs.

In: one row's encoded bytes (``rows``) and, from ``samples``, the box it keeps in full-resolution pixels. Out: HWC
uint8 RGB pixels of that part of the image, at a reduced DCT scale, with the scales that map full-resolution
coordinates onto them (``decode_scaled``); ``resize_uint8`` then gives the CHW uint8 crop. Next stage: ``samples``.

- ``probe`` reads the size (as displayed, after EXIF rotation) from the JPEG header alone, so the crop box is
  drawn before any decoding.
- Tiled JPEGs (written by ``imagenet_trainer.tile_writer``, preprocess.py's ``--restart_tile``): a baseline JPEG is
  one Huffman-coded stream, and on ImageNet-sized files (~110 KB) that entropy decoding is most of the decode time.
  Restart markers (ITU T.81 F.1.2.3: every R MCUs the coder resets, byte-aligns and writes RSTn) cut the stream into
  pieces that decode alone; when each MCU row holds a whole number of pieces they are tiles (R MCUs wide, one MCU
  row high). ``tile_grid`` finds the tiles of such a file, from the tile index in its APP9 segments
  (``jpeg_markers.INDEX_ID``) where present, else by scanning the coded data for the markers (a file tiled by another
  tool); ``region`` cuts out the tiles under a crop as a smaller JPEG (the file's own header with its frame size
  patched) that any decoder reads. With libjpeg's fast (non-fancy) upsampling every MCU decodes on its own, so the
  region's pixels equal the same rows and columns of a whole-file decode exactly; tests/test_jpeg_tiles.py checks it.
- ``decode_scaled`` decodes at the smallest DCT scale (1/2, 1/4, 1/8; ``dct_factor``) that still leaves the crop
  at least the output size: libjpeg-turbo skips most of the IDCT and colour conversion work (FFCV decodes the same
  way). simplejpeg (libjpeg-turbo) decodes straight into a numpy array, faster than PIL, which also unpacks RGB from
  4-byte pixels. Images simplejpeg cannot take (PNG named .JPEG, CMYK/YCCK JPEGs, EXIF-rotated photos) go through
  PIL with the same scales, EXIF orientation applied as ``datasets.Image`` decoding does; lossless JPEGs (no DCT:
  ``jpeg_markers.SOF_LOSSLESS``) and EXIF orientations that mirror an axis (``UNFLIPPED``) go through PIL at full
  scale. Evaluation (``samples.EvalSet``) decodes every image at full scale. Grayscale JPEGs (stored as they are)
  come out as RGB on every path: libjpeg-turbo's grey-to-RGB conversion, like PIL's ``convert("RGB")``, copies the
  grey level into each channel, so at full scale they are exactly ``Image.open(file).convert("RGB")``.
- ``resize_uint8`` copies the crop into the channels_last layout that torch's vectorised uint8 antialiased kernel
  needs (vision #7497; any other layout silently takes a slower kernel) and resizes once. No float tensor ever
  exists on the CPU: normalisation is the device's job (``device.normalize``).
"""
from __future__ import annotations

import io
import struct
from typing import NamedTuple

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps

from imagenet_trainer.jpeg_markers import (INDEX_ID, RST, SOF_HUFFMAN, frame_info, header_segments, index_spans,
                                         lossless)

DCT_FACTORS = (8, 4, 2, 1)  # the scales libjpeg-turbo decodes with SIMD; 3/8, 5/8... exist but decode slower here
EXIF_ORIENTATION = 0x0112
UNFLIPPED = (1, 5)  # EXIF orientations that flip neither axis (5: transpose only; 2-4, 6-8 mirror one or both)


class TileGrid(NamedTuple):
    head: bytes  # every byte before the entropy-coded data (SOI ... SOS header)
    sof: int  # offset of the SOF marker in head (its frame height and width are at +5)
    height: int  # px
    width: int  # px
    tile_h: int  # px
    tile_w: int  # px
    tiles_per_row: int
    markers: np.ndarray  # tile i's coded data is file[markers[i] + 2:markers[i + 1]] (RST/EOI offsets; [0]: scan - 2)


def tile_grid(data: bytes, segments=None) -> TileGrid | None:
    """The tiles of a single-scan Huffman JPEG whose restart interval fits its MCU rows; None for any other file.
    ``segments``: the file's ``header_segments``, where the caller has them already."""
    segments = header_segments(data) if segments is None else segments
    if segments is None:
        return None
    frame = frame_info(data, segments)
    dri = [s for m, s, e in segments if m == 0xDD]
    if frame is None or data[frame[0] + 1] not in SOF_HUFFMAN or not dri:
        return None
    sof, height, width, mcu_h, mcu_w = frame
    interval = int.from_bytes(data[dri[-1] + 4:dri[-1] + 6], "big")
    sos, scan = segments[-1][1:]
    if interval == 0 or height == 0 or scan - sos < 5 or data[sos + 4] != data[sof + 9] or scan >= len(data):
        return None  # no restarts, height set by a DNL marker, or a scan without every component (several scans)
    per_row, rows = -(-width // mcu_w), -(-height // mcu_h)
    if per_row % interval and interval % per_row:
        return None  # pieces straddle MCU rows: not tiles
    tile_rows = max(1, interval // per_row)
    count = -(-per_row * rows // interval)
    index = index_spans(data, segments)
    markers = _indexed_markers(data, index, scan, count) if index else None
    if markers is None:
        markers = _scanned_markers(data, scan, count)
    if markers is None:
        return None
    head = data[:scan] if not index else b"".join(  # the index stays out of the regions' headers
        [data[a:b] for a, b in zip([0] + [e for s, e in index], [s for s, e in index] + [scan])])
    sof -= sum(e - s for s, e in index if s < sof)
    return TileGrid(head, sof, height, width, mcu_h * tile_rows, mcu_w * min(interval, per_row),
                  max(1, per_row // interval), markers)


def _check_markers(a: np.ndarray, markers: np.ndarray) -> bool:
    """markers[1:] are count - 1 RSTn (0xFFD0-0xFFD7), then EOI: anything else (a second scan, fill bytes, no EOI, an
    index that does not match the data) is not this grid."""
    ends = markers[1:]
    ff, kinds = a[ends], a[ends + 1]
    return bool(kinds[-1] == 0xD9 and ff.min() == 0xFF
                and (len(kinds) == 1 or (kinds[:-1].min() >= 0xD0 and kinds[:-1].max() <= 0xD7)))


def _scanned_markers(data, scan: int, count: int) -> np.ndarray | None:
    a = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(a[scan:-1] == 0xFF) + scan
    found = ff[a[ff + 1] != 0][:count]  # 0xFF00 is a coded 0xFF byte
    if len(found) < count:
        return None
    markers = np.concatenate([[scan - 2], found])
    return markers if _check_markers(a, markers) else None


def _indexed_markers(data, index: list, scan: int, count: int) -> np.ndarray | None:
    skip = 4 + len(INDEX_ID)
    parts = [np.frombuffer(data, "<u2", (e - s - skip) // 2, s + skip) for s, e in index]
    # In a training sample this runs between a decode and a resize that evict the caches, where each numpy call
    # costs several us whatever its size: the first marker and the lengths go through one concatenate and one cumsum
    markers = np.concatenate([[scan - 2], *parts]).cumsum()
    if len(markers) != count + 1 or min(part.min(initial=0xFFFF) for part in parts) < 2:
        return None
    # The lengths must add up to the coded data exactly, EOI last: an index left stale by a rewrite of the data
    # (which keeps APPn segments, as jpegtran -copy all does) fails here. The RST markers themselves are not read:
    # one cache miss per tile (~770 of them on a 16 px tiled photo) for bytes most of which no crop needs.
    return markers if markers[-1] == len(data) - 2 and data[-2:] == b"\xff\xd9" else None


def region(data, tiles: TileGrid, top: int, left: int, h: int, w: int) -> tuple[bytearray, int, int, int, int]:
    """(JPEG of the tiles under the box, its height, width, and the (top, left) of its first pixel in the file)."""
    per, markers = tiles.tiles_per_row, tiles.markers
    r0, r1 = top // tiles.tile_h, min(-(-(len(markers) - 1) // per), -(-(top + h) // tiles.tile_h))
    c0, c1 = left // tiles.tile_w, min(per, -(-(left + w) // tiles.tile_w))
    height = min(tiles.height, r1 * tiles.tile_h) - r0 * tiles.tile_h
    width = min(tiles.width, c1 * tiles.tile_w) - c0 * tiles.tile_w
    # Every tile row has ``per`` tiles (layout), so the markers of rows r0..r1 are one slice of them, and a row's
    # tiles under the box are contiguous in the file, RSTs between them included: one piece per row
    block = markers[r0 * per:r1 * per + 1]
    before = block[:-1].reshape(r1 - r0, per)[:, c0:c1]  # the marker before each tile under the box
    pieces = [tiles.head[:tiles.sof + 5], struct.pack(">HH", height, width), tiles.head[tiles.sof + 9:]]
    at = len(pieces[0]) + 4 + len(pieces[2])  # where the next row's data goes in the output
    view, shifts = memoryview(data), []
    for start, end in zip(block[c0:-1:per].tolist(), block[c1::per].tolist()):
        pieces += (view[start + 2:end], RST[0])  # RST[0]: a placeholder between rows, numbered below
        shifts.append(at - start - 1)  # file offset of a byte of this row + shift = its output offset
        at += end - start
    pieces[-1] = b"\xff\xd9"
    out = bytearray().join(pieces)
    # Renumber every marker: the one before the part's tile q (q >= 1) must be RST (q - 1) % 8 (decoders check the
    # sequence). Its code byte follows the 0xFF at the file offset in ``before``; for a row's first tile that is the
    # placeholder after the row above (the first row's: inside the header, left out).
    codes_at = (before + np.array(shifts)[:, None]).ravel()[1:]
    np.frombuffer(out, np.uint8)[codes_at] = _rst_codes(len(codes_at))
    return out, height, width, r0 * tiles.tile_h, c0 * tiles.tile_w


RST_CYCLE = np.resize(np.arange(0xD0, 0xD8, dtype=np.uint8), 1 << 16)  # RST0..RST7, RST0..: the marker codes in order


def _rst_codes(n: int) -> np.ndarray:
    return RST_CYCLE[:n] if n <= len(RST_CYCLE) else np.resize(RST_CYCLE[:8], n)


def exif_orientation(data: bytes, segments=None) -> int:
    """EXIF orientation tag (1 = upright). A JPEG's header segments are walked first (or given: ``header_segments``),
    so only files that carry an Exif block (or XMP's tag) pay for PIL's parser; other files go to PIL directly."""
    segments = header_segments(data) if segments is None else segments
    if segments is not None and not any(m == 0xE1 and data[s + 4:s + 10] in (b"Exif\x00\x00", b"http:/")
                                        for m, s, e in segments):  # Exif, or XMP's tiff:Orientation
        return 1
    try:
        return int(Image.open(io.BytesIO(data)).getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # ImageNet has corrupt EXIF blocks; they carry no usable orientation
        return 1


def probe(data: bytes, segments=None) -> tuple[int, int, bool]:
    """(height, width, simplejpeg can decode it at any scale) of the image as displayed (after EXIF rotation), header
    only."""
    segments = header_segments(data) if segments is None else segments
    orientation = exif_orientation(data, segments)
    if data[:2] == b"\xff\xd8" and orientation == 1 and not lossless(segments):
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


def decode_scaled(data: bytes, height: int, width: int, factor: int, fast_ok: bool,
            fast_dct: bool) -> tuple[np.ndarray, float, float]:
    """HWC uint8 RGB pixels decoded at 1/factor scale where the codec allows (JPEG), and the (y, x) scales that map
    full-resolution coordinates (``height`` x ``width``, as ``probe`` gave them) onto the returned array."""
    if fast_ok:
        try:
            # fastdct/fastupsample (training only; eval decodes exactly): ~10% faster; on ImageNet JPEGs a mean error
            # of 1-3 grey levels, up to ~70 at sharp colour edges (chroma upsampled without interpolation).
            # FFCV decodes with TJFLAG_FASTDCT alone
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast_dct, fastupsample=fast_dct,
                                            min_height=-(-height // factor), min_width=-(-width // factor),
                                            strict=True)  # any libjpeg warning: PIL decides, below
            return pixels, *_scales(pixels, height, width, factor)
        except (ValueError, KeyError):
            pass  # PIL gives the verdict: it tolerates ImageNet's "corrupt data" warnings and refuses truncation
    image = Image.open(io.BytesIO(data))
    segments = header_segments(data)
    # A scaled pixel covers ``factor`` stored pixels from the stored origin, so on an axis that EXIF orientation
    # flips the partial block at the far edge comes first and every pixel is shifted by (-size) % factor full-
    # resolution px (up to 7 at 1/8), which ``_scales`` cannot express: those files decode at full scale (rare:
    # preprocess.py stores them upright without EXIF; a 4000x3000 photo then decodes in ~1.4x the time of 1/2 scale)
    if factor > 1 and not lossless(segments) and exif_orientation(data, segments) in UNFLIPPED:
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


def dct_factor(shorter: float, needed: float) -> int:
    """Largest DCT reduction that keeps ``shorter`` (full-resolution pixels) at least ``needed`` pixels."""
    return next(f for f in DCT_FACTORS if shorter >= f * needed or f == 1)


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """HWC uint8 (a view is fine) -> CHW uint8 of ``size`` in HWC memory, antialiased like PIL.

    Only a channels_last-contiguous NCHW input takes torch's uint8 AVX2 kernel (vision #7497); a crop view, or a
    size-1 batch dim with a stride other than H*W*C, silently takes the generic kernel, ~1.6x slower. So the input
    is laid out exactly so (a copy for a crop: cheaper than what it saves; numpy's row-by-row copy of a crop view
    takes a quarter of the time of torch's strided 4-D copy)."""
    pixels = np.ascontiguousarray(pixels.numpy())  # a copy only for a crop view
    if pixels.shape[:2] == tuple(size):
        return torch.from_numpy(pixels).permute(2, 0, 1)
    x = torch.from_numpy(pixels)[None].permute(0, 3, 1, 2)  # channels_last-contiguous NCHW over the HWC pixels
    return RESIZE_AA[mode](x, size, False)[0]


# The bindings F.interpolate(antialias=True, align_corners=False) calls, called directly: the same pixels without its
# Python argument checks. They are torch's private names, stable within the torch that requirements.txt pins;
# tests/test_data.py checks the pixels against F.interpolate's.
RESIZE_AA = {"bilinear": torch._C._nn._upsample_bilinear2d_aa, "bicubic": torch._C._nn._upsample_bicubic2d_aa}

