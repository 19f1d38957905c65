"""Tiled JPEGs: decode only the part of a photo that a random crop keeps.

A baseline JPEG is one Huffman-coded stream: to reach any block a decoder must entropy-decode every block before it,
and on ImageNet-sized files (~110 KB) that entropy decoding is most of the decode time. Restart markers (ITU T.81
F.1.2.3: every R MCUs the coder resets, byte-aligns and writes RSTn) cut the stream into pieces that decode alone.
When each MCU row holds a whole number of pieces, the pieces are tiles (R MCUs wide, one MCU row high), and the tiles
under a crop, with the file's own header whose frame size is patched, form a smaller JPEG that any decoder reads.

- ``add_restarts`` (preprocess.py, ``--restart_tile``): a lossless transcode, the same DCT coefficients re-coded
  with restart markers every R MCUs (libjpeg-turbo's lossless crop transform, one per tile, up to 8,192 to a call
  that reads the source once; the tiles' coded data is then joined with RST markers under one header).
  Progressive files come out baseline, which alone decodes them ~2.7x faster. The caller checks the pixels.
- A tile index travels in the file: APP9 segments (``INDEX_ID``) before the scan give every tile's length, so a
  reader finds the tiles under a crop without scanning the ~110 KB of coded data for markers (46 us of a ~740 us
  sample; reading the index instead: ~12 us, microbenchmark). Decoders skip APPn segments they do not know: the
  file stays a plain JPEG, and a file without the index (written before it existed, or by another tool) is scanned
  instead.
- ``layout`` / ``region`` (data.py): find the tiles of such a file and cut out the JPEG of the tiles under a crop.
  With libjpeg's fast (non-fancy) upsampling every MCU decodes on its own, so the region's pixels equal the same
  rows and columns of a whole-file decode exactly; the tests check it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

SOF_HUFFMAN = (0xC0, 0xC1)  # baseline and extended sequential Huffman frames: one scan, tiles possible
SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every frame type (0xC4 DHT, 0xC8 JPG, 0xCC DAC)
TJINIT_TRANSFORM = 2
TJXOPT_CROP, TJXOPT_COPYNONE = 1 << 2, 1 << 6  # turbojpeg.h (TurboJPEG 3 API)
INDEX_MARKER = 0xE9  # APP9: no common format uses it (JFIF APP0, Exif/XMP APP1, ICC/MPF APP2, Adobe APP14)
INDEX_ID = b"imagenet-trainer tile index\x00"  # then uint16 little-endian: tile i's bytes, its data + next marker
INDEX_PER_SEGMENT = (0xFFFF - 2 - len(INDEX_ID)) // 2  # tile lengths a segment holds (its length field is 16 bits)


class Layout(NamedTuple):
    head: bytes  # every byte before the entropy-coded data (SOI ... SOS header)
    sof: int  # offset of the SOF marker in head (its frame height and width are at +5)
    height: int  # px
    width: int  # px
    tile_h: int  # px
    tile_w: int  # px
    tiles_per_row: int
    markers: np.ndarray  # tile i's coded data is file[markers[i] + 2:markers[i + 1]] (RST/EOI offsets; [0]: scan - 2)


def header_segments(data: bytes):
    """(marker, start, end) of each header segment of a JPEG, up to and including SOS (the image data), as PIL reads
    them; None for a file that is not a JPEG or whose header is not plain."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, segments = 2, []
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte; standalone markers (no length)
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # end of image before any image data
            return None
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end > len(data) or end < pos + 4:
            return None
        segments.append((marker, pos, end))
        if marker == 0xDA:
            return segments
        pos = end
    return None


def _frame(data: bytes, segments) -> tuple[int, int, int, int, int] | None:
    """(SOF offset, height, width, MCU height, MCU width) of the file's one frame (one component: 8x8 blocks); None
    for no frame, several, or a malformed one."""
    sof = [(s, e) for m, s, e in segments if m in SOF_ANY]
    if len(sof) != 1:
        return None
    (start, end), = sof
    if end - start < 10:
        return None
    height, width, ncomp = struct.unpack(">HHB", data[start + 5:start + 10])
    if width == 0 or ncomp == 0 or end - start < 10 + 3 * ncomp:
        return None
    if ncomp == 1:
        return start, height, width, 8, 8
    factors = [data[start + 11 + 3 * i] for i in range(ncomp)]
    mcu_h, mcu_w = 8 * max(f & 15 for f in factors), 8 * max(f >> 4 for f in factors)
    return (start, height, width, mcu_h, mcu_w) if mcu_h and mcu_w else None


def layout(data: bytes, segments=None) -> Layout | None:
    """The tiles of a single-scan Huffman JPEG whose restart interval fits its MCU rows; None for any other file.
    ``segments``: the file's ``header_segments``, where the caller has them already."""
    segments = header_segments(data) if segments is None else segments
    if segments is None:
        return None
    frame = _frame(data, segments)
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
    return Layout(head, sof, height, width, mcu_h * tile_rows, mcu_w * min(interval, per_row),
                  max(1, per_row // interval), markers)


def index_spans(data, segments) -> list[tuple[int, int]]:
    """(start, end) of the file's tile-index segments (APP9 with ``INDEX_ID``), in file order."""
    return [(s, e) for m, s, e in segments if m == INDEX_MARKER and data[s + 4:s + 4 + len(INDEX_ID)] == INDEX_ID]


def _check_markers(a: np.ndarray, markers: np.ndarray) -> bool:
    """markers[1:] are count - 1 RSTn (0xFFD0-0xFFD7), then EOI: anything else (a second scan, fill bytes, no EOI, an
    index that does not match the data) is not this layout."""
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
    lengths = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if len(lengths) != count or lengths.min() < 2:
        return None
    markers = np.empty(count + 1, np.int64)
    markers[0] = scan - 2
    np.cumsum(lengths, out=markers[1:])
    markers[1:] += scan - 2
    # The lengths must add up to the coded data exactly, EOI last: an index left stale by a rewrite of the data
    # (which keeps APPn segments, as jpegtran -copy all does) fails here. The RST markers themselves are not read:
    # one cache miss per tile (~770 of them on a 16 px tiled photo) for bytes most of which no crop needs.
    return markers if markers[-1] == len(data) - 2 and data[-2:] == b"\xff\xd9" else None


def index_segments(lengths) -> list[bytes]:
    """The APP9 segments that index tiles of these byte lengths (each tile's coded data and the marker after it);
    none where a tile does not fit 16 bits (a reader then scans for the markers)."""
    lengths = np.asarray(lengths, np.int64)
    if not len(lengths) or lengths.max() > 0xFFFF:
        return []
    raw, step = lengths.astype("<u2").tobytes(), 2 * INDEX_PER_SEGMENT
    return [bytes((0xFF, INDEX_MARKER)) + (2 + len(INDEX_ID) + len(part)).to_bytes(2, "big") + INDEX_ID + part
            for part in (raw[i:i + step] for i in range(0, len(raw), step))]


def region(data, tiles: Layout, top: int, left: int, h: int, w: int) -> tuple[bytearray, int, int, int, int]:
    """(JPEG of the tiles under the box, its height, width, and the (top, left) of its first pixel in the file)."""
    n_rows = -(-(len(tiles.markers) - 1) // tiles.tiles_per_row)
    r0, r1 = top // tiles.tile_h, min(n_rows, -(-(top + h) // tiles.tile_h))
    c0, c1 = left // tiles.tile_w, min(tiles.tiles_per_row, -(-(left + w) // tiles.tile_w))
    height = min(tiles.height, r1 * tiles.tile_h) - r0 * tiles.tile_h
    width = min(tiles.width, c1 * tiles.tile_w) - c0 * tiles.tile_w
    before = tiles.markers[:-1].reshape(-1, tiles.tiles_per_row)[r0:r1, c0:c1]  # the marker before each tile
    starts = before[:, 0] + 2  # a row's tiles under the box are contiguous in the file, RSTs between them included
    ends = tiles.markers[1:].reshape(-1, tiles.tiles_per_row)[r0:r1, c1 - 1]
    pieces = [tiles.head[:tiles.sof + 5], struct.pack(">HH", height, width), tiles.head[tiles.sof + 9:]]
    view = memoryview(data)
    for s, e in zip(starts.tolist(), ends.tolist()):
        pieces += (view[s:e], RST[0])  # RST[0]: a placeholder between rows, numbered below
    pieces[-1] = b"\xff\xd9"
    out = bytearray().join(pieces)
    # Renumber every marker: the one before the part's tile q (q >= 1) must be RST (q - 1) % 8 (decoders check the
    # sequence). Tile c of output row j has its marker at the row's output offset + (file offset - row start);
    # for c = 0 that is the placeholder after row j - 1.
    lengths = ends - starts + 2
    rows_at = len(pieces[0]) + 4 + len(pieces[2]) + np.cumsum(lengths) - lengths
    codes_at = (before + (rows_at - starts + 1)[:, None]).ravel()[1:]
    np.frombuffer(out, np.uint8)[codes_at] = _rst_codes(len(codes_at))
    return out, height, width, r0 * tiles.tile_h, c0 * tiles.tile_w


RST = [bytes((0xFF, 0xD0 + i)) for i in range(8)]
RST_CYCLE = np.resize(np.arange(0xD0, 0xD8, dtype=np.uint8), 1 << 16)  # RST0..RST7, RST0..: the marker codes in order


def _rst_codes(n: int) -> np.ndarray:
    return RST_CYCLE[:n] if n <= len(RST_CYCLE) else np.resize(RST_CYCLE[:8], n)


# ---------------------------------------------------------------------------------------------------------------
# Transcoding (preprocess.py). libjpeg-turbo >= 3.0's TurboJPEG API through ctypes: the ``turbojpeg`` wheel ships it
# (its own Python API runs one transform per call, reading the whole source each time); a system library works too.


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
# source. A 24 MP 4:4:4 photo (62,500 tiles): 19 s in one call, 2.7 s in calls of 8,192, 7.5 s in calls of 1,024.
CHUNK = 8192


def _crop_tiles(data: bytes, boxes: list) -> list[bytes] | None:
    """Each (x, y, w, h) box losslessly cropped out of ``data`` as a JPEG of its own; None if libjpeg-turbo refuses."""
    lib = turbojpeg_library()
    handle = lib.tj3Init(TJINIT_TRANSFORM)  # per file: a handle that failed on one keeps state that spoils the next
    if not handle:
        raise MemoryError("tj3Init failed")
    tiles = []
    try:
        for start in range(0, len(boxes), CHUNK):
            chunk = boxes[start:start + CHUNK]
            n = len(chunk)
            transforms = (_Transform * n)(*[_Transform(_Region(*box), 0, TJXOPT_CROP | TJXOPT_COPYNONE, None, None)
                                            for box in chunk])
            bufs, sizes = (ctypes.c_void_p * n)(), (ctypes.c_size_t * n)()
            failed = lib.tj3Transform(handle, data, len(data), n, bufs, sizes, transforms)
            try:
                if not failed:
                    tiles += [ctypes.string_at(bufs[i], sizes[i]) for i in range(n)]
            finally:
                for i in range(n):
                    if bufs[i]:
                        lib.tj3Free(bufs[i])
            if failed:
                return None
    finally:
        lib.tj3Destroy(handle)
    return tiles


def add_restarts(data: bytes, tile_px: int) -> bytes | None:
    """The same JPEG (same coefficients, same APPn/COM segments) re-coded as tiles at most ``tile_px`` wide (a whole
    number of MCUs that divides the MCU row, as few as hold ``MIN_TILE_BYTES``) and one MCU row high, indexed; None
    where the file is not a Huffman JPEG with a plain header (PNG, arithmetic coding, a DNL height...) or
    libjpeg-turbo refuses it. Data after EOI is dropped.
    The caller must check the pixels."""
    data = bytes(data)
    segments = header_segments(data)
    frame = None if segments is None else _frame(data, segments)
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
    tile_frame = None if first is None else _frame(tiles[0], first)
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
