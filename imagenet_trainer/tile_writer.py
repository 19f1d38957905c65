"""preprocess.py's lossless re-coding of a JPEG into tiles, so that training decodes only the tiles under its crop.

In: a JPEG file's bytes and ``--restart_tile`` (the widest tile, px). Out: the same JPEG (same DCT coefficients,
same APPn/COM segments) re-coded with restart markers every R MCUs, R MCUs making a tile one MCU row high, and the
tile index that ``imagenet_trainer.data.decode`` reads (``add_restarts``); None where the file cannot be tiled.

- The transcode is libjpeg-turbo's lossless crop transform, one per tile, up to ``CHUNK`` to a call that reads the
  source once; the tiles' coded data is then joined with RST markers under one header. Progressive files come out
  baseline, which alone makes them decode faster. The caller checks the pixels.
- The tile index travels in the file: APP9 segments (``jpeg_markers.INDEX_ID``) before the scan give every tile's
  length, so a reader finds the tiles under a crop without scanning the coded data for markers. Decoders skip APPn
  segments they do not know: the file stays a plain JPEG.
- libjpeg-turbo >= 3.0's TurboJPEG API through ctypes: the ``turbojpeg`` wheel ships it (its own Python API runs
  one transform per call, reading the whole source each time); a system library works too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
from pathlib import Path

import numpy as np

from imagenet_trainer.jpeg_markers import (INDEX_ID, INDEX_MARKER, RST, SOF_ANY, frame_info, header_segments,
                                           index_spans)

TJINIT_TRANSFORM = 2
TJXOPT_CROP, TJXOPT_COPYNONE = 1 << 2, 1 << 6  # turbojpeg.h (TurboJPEG 3 API)
INDEX_PER_SEGMENT = (0xFFFF - 2 - len(INDEX_ID)) // 2  # tile lengths a segment holds (its length field is 16 bits)


def index_segments(lengths) -> list[bytes]:
    """The APP9 segments that index tiles of these byte lengths (each tile's coded data and the marker after it);
    none where a tile does not fit 16 bits (a reader then scans for the markers)."""
    lengths = np.asarray(lengths, np.int64)
    if not len(lengths) or lengths.max() > 0xFFFF:
        return []
    raw, step = lengths.astype("<u2").tobytes(), 2 * INDEX_PER_SEGMENT
    return [bytes((0xFF, INDEX_MARKER)) + (2 + len(INDEX_ID) + len(part)).to_bytes(2, "big") + INDEX_ID + part
            for part in (raw[i:i + step] for i in range(0, len(raw), step))]


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):
    _fields_ = [("r", _Region), ("op", ctypes.c_int), ("options", ctypes.c_int), ("data", ctypes.c_void_p),
                ("customFilter", ctypes.c_void_p)]


@functools.lru_cache(maxsize=None)
def turbojpeg_library():
    """The TurboJPEG library, loaded once per process."""
    candidates = []
    try:
        import turbojpeg
        where = Path(turbojpeg.__file__).parent  # the wheel's vendored copy: Linux, macOS, Windows layouts
        for pattern in ("turbojpeg.libs/libturbojpeg*", "turbojpeg.dylibs/libturbojpeg*", "turbojpeg-*.dll"):
            candidates += sorted(where.glob(pattern))
    except ImportError:
        pass
    candidates += [name for name in [ctypes.util.find_library("turbojpeg")] if name]
    for path in candidates:
        lib = ctypes.CDLL(str(path))
        if hasattr(lib, "tj3Transform"):
            break
    else:
        raise RuntimeError("tiled JPEGs need libjpeg-turbo >= 3.0's TurboJPEG library: pip install turbojpeg==0.0.2 "
                           "(requirements.txt), or run preprocess.py with --restart_tile 0")
    lib.tj3Init.restype, lib.tj3Init.argtypes = ctypes.c_void_p, [ctypes.c_int]
    lib.tj3Destroy.argtypes = [ctypes.c_void_p]
    lib.tj3Transform.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                                 ctypes.POINTER(_Transform)]
    lib.tj3Free.argtypes = [ctypes.c_void_p]
    return lib


# The narrowest tiles skip the most of what a crop leaves out, but each costs a marker, its padding and a DC reset
# (~4 bytes) and 2 bytes of index. ImageNet-sized photos (~140 coded bytes a 4:2:0 MCU) train 7% faster a sample
# from one-MCU (16 px) tiles than from 64 px ones, for 3% more bytes; smooth files (~15 bytes an MCU) would grow by
# a quarter. So a tile takes as few MCUs as hold this many coded bytes on average, within the width asked for.
MIN_TILE_BYTES = 96

# Transforms per tj3Transform call: its time per transform grows with their number, and each call re-reads the
# source: of the sizes tried on a 24 MP 4:4:4 photo (62,500 tiles), 8,192 was the fastest (BENCHMARKS.md).
CHUNK = 8192


def to_huffman(data: bytes) -> bytes | None:
    """An arithmetic-coded JPEG (``jpeg_markers.SOF_ARITHMETIC``) losslessly transcoded, as jpegtran does: the same
    DCT coefficients and APPn/COM segments, Huffman-coded and baseline (libjpeg-turbo's transform writes that unless
    asked for arithmetic or progressive output). None where libjpeg-turbo refuses or warns (a truncated file)."""
    out = _transform(bytes(data), [(0, 0, 0, 0)], 0)
    return out[0] if out else None


def _crop_tiles(data: bytes, boxes: list) -> list[bytes] | None:
    """Each (x, y, w, h) box losslessly cropped out of ``data`` as a JPEG of its own; None if libjpeg-turbo refuses."""
    return _transform(data, boxes, TJXOPT_CROP | TJXOPT_COPYNONE)


def _transform(data: bytes, boxes: list, options: int) -> list[bytes] | None:
    """One lossless transform of ``data`` (no rotation) per (x, y, w, h) box, with TJXOPT_* ``options``; None if
    libjpeg-turbo refuses, or warns (its return value is then -1 too)."""
    lib = turbojpeg_library()
    handle = lib.tj3Init(TJINIT_TRANSFORM)  # per file: a handle that failed on one keeps state that spoils the next
    if not handle:
        raise MemoryError("tj3Init failed")
    results = []
    try:
        for start in range(0, len(boxes), CHUNK):
            chunk = boxes[start:start + CHUNK]
            n = len(chunk)
            transforms = (_Transform * n)(*[_Transform(_Region(*box), 0, options, None, None) for box in chunk])
            bufs, sizes = (ctypes.c_void_p * n)(), (ctypes.c_size_t * n)()
            failed = lib.tj3Transform(handle, data, len(data), n, bufs, sizes, transforms)
            try:
                if not failed:
                    results += [ctypes.string_at(bufs[i], sizes[i]) for i in range(n)]
            finally:
                for i in range(n):
                    if bufs[i]:
                        lib.tj3Free(bufs[i])
            if failed:
                return None
    finally:
        lib.tj3Destroy(handle)
    return results


def add_restarts(data: bytes, tile_px: int) -> bytes | None:
    """The same JPEG (same coefficients, same APPn/COM segments) re-coded as tiles at most ``tile_px`` wide (a whole
    number of MCUs that divides the MCU row, as few as hold ``MIN_TILE_BYTES``) and one MCU row high, indexed; None
    where the file is not a Huffman JPEG with a plain header (PNG, arithmetic coding, a DNL height...) or
    libjpeg-turbo refuses it. Data after EOI is dropped.
    The caller must check the pixels."""
    data = bytes(data)
    segments = header_segments(data)
    frame = None if segments is None else frame_info(data, segments)
    if frame is None or data[frame[0] + 1] not in (0xC0, 0xC1, 0xC2) or frame[1] == 0:
        return None
    _, height, width, mcu_h, mcu_w = frame
    per_row = -(-width // mcu_w)
    fits = [d for d in range(1, per_row + 1) if per_row % d == 0 and (d == 1 or d * mcu_w <= tile_px)]
    per_mcu = len(data) / (per_row * -(-height // mcu_h))  # coded bytes an MCU holds, on average
    interval = next((d for d in fits if d * per_mcu >= MIN_TILE_BYTES), fits[-1])
    tiles = _crop_tiles(data, [(x, y, min(interval * mcu_w, width - x), min(mcu_h, height - y))
                               for y in range(0, height, mcu_h) for x in range(0, width, interval * mcu_w)])
    first = None if not tiles else header_segments(tiles[0])
    tile_frame = None if first is None else frame_info(tiles[0], first)
    if tile_frame is None or any(m == 0xDD for m, s, e in first):
        return None
    # Every tile must carry the first one's header (tables, scan header) but for its frame size: then its coded data
    # starts where the first tile's does and decodes under the first tile's tables
    sof, scan = tile_frame[0], first[-1][2]
    before, after = tiles[0][:sof + 5], tiles[0][sof + 9:scan]
    body = []
    for k, tile in enumerate(tiles):
        if tile[:sof + 5] != before or tile[sof + 9:scan] != after or tile[-2:] != b"\xff\xd9":
            return None
        if k:
            body.append(RST[(k - 1) % 8])
        body.append(tile[scan:-2])
    # the file's own APPn/COM segments (EXIF, ICC profile...; not an index of earlier tiles) after SOI, then the
    # tiles' tables and frame, DRI, and the index of the new tiles just before the scan
    old_index = index_spans(data, segments)
    header = [b"\xff\xd8", *(data[s:e] for m, s, e in segments
                               if (0xE0 <= m <= 0xEF or m == 0xFE) and (s, e) not in old_index)]
    for m, s, e in first:
        segment = tiles[0][s:e]
        if m in SOF_ANY:
            segment = segment[:5] + struct.pack(">HH", height, width) + segment[9:]
        elif m == 0xDA:
            header.append(b"\xff\xdd\x00\x04" + interval.to_bytes(2, "big"))
            header += index_segments([len(tile) - scan for tile in tiles])  # coded data + the 2-byte marker after it
        elif 0xE0 <= m <= 0xEF or m == 0xFE:
            continue  # the JFIF/Adobe marker libjpeg wrote for the tile: the file's own stands
        header.append(segment)
    return b"".join(header + body) + b"\xff\xd9"
