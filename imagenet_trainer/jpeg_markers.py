"""The JPEG marker layout that preprocess.py writes and the loader reads: the header's segments, the one frame, the
restart markers and this project's tile index (APP9 segments). ITU T.81 B.1: every segment is FF, a marker byte and,
except the standalone markers, a 16-bit big-endian length; the entropy-coded data follows SOS.

``imagenet_trainer.tile_writer`` (preprocess.py's workers) writes with these and ``imagenet_trainer.data.decode``
reads with them. This module needs nothing beyond the standard library: preprocess.py's worker processes import it
without torch, which would add seconds to each one's start.
"""
from __future__ import annotations

import struct

SOF_HUFFMAN = (0xC0, 0xC1)  # baseline and extended sequential Huffman frames: one scan, tiles possible
SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every frame type (0xC4 DHT, 0xC8 JPG, 0xCC DAC)
# Lossless frames (T.81 H: predictive coding, no DCT): libjpeg-turbo 3 decodes them, but not at a reduced DCT scale;
# asked to, it writes the full image into a buffer sized for the scaled one (a crash, not an exception)
SOF_LOSSLESS = frozenset((0xC3, 0xC7, 0xCB, 0xCF))
# Sequential and progressive DCT frames with arithmetic coding (T.81 B.1.1.3): valid, but Pillow feeds libjpeg the
# file in 64 KB blocks, which libjpeg's arithmetic decoder cannot resume across, so larger ones fail to load there
SOF_ARITHMETIC = frozenset((0xC9, 0xCA))
MPF_ID = b"MPF\x00"  # APP2 of a multi-picture file (CIPA DC-007): it indexes pictures appended after the first's EOI
INDEX_MARKER = 0xE9  # APP9: no common format uses it (JFIF APP0, Exif/XMP APP1, ICC/MPF APP2, Adobe APP14)
INDEX_ID = b"imagenet-trainer tile index\x00"  # then uint16 little-endian: tile i's bytes, its data + next marker
RST = [bytes((0xFF, 0xD0 + i)) for i in range(8)]  # RST0..RST7


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
        end = pos + 2 + (data[pos + 2] << 8 | data[pos + 3])
        if end > len(data) or end < pos + 4:
            return None
        segments.append((marker, pos, end))
        if marker == 0xDA:
            return segments
        pos = end
    return None


def lossless(segments) -> bool:
    """Whether a header (``header_segments``; None: not a plain JPEG) has a lossless frame, which must be decoded at
    full scale (SOF_LOSSLESS)."""
    return segments is not None and any(m in SOF_LOSSLESS for m, _, _ in segments)


def arithmetic(segments) -> bool:
    """Whether a header (``header_segments``; None: not a plain JPEG) has an arithmetic-coded DCT frame."""
    return segments is not None and any(m in SOF_ARITHMETIC for m, _, _ in segments)


def first_picture(data: bytes, segments) -> bytes | None:
    """The first picture of a multi-picture JPEG (a phone's photo with a depth or gain map after it) as a plain JPEG:
    its bytes up to its EOI, less the MPF segment, whose offsets would point past the end. None for a file without
    MPF, or whose first picture has no EOI."""
    mpf = [(s, e) for m, s, e in segments or () if m == 0xE2 and data[s + 4:s + 4 + len(MPF_ID)] == MPF_ID]
    if not mpf:
        return None
    pos = segments[-1][2]  # the coded data; in it FF is a marker only before a byte other than 00 (T.81 B.1.1.5)
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 2 <= len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            picture = data[:pos + 2]
            for s, e in reversed(mpf):
                picture = picture[:s] + picture[e:]
            return picture
        if marker == 0x00 or marker == 0xFF or 0xD0 <= marker <= 0xD7:  # stuffed byte, fill byte, RSTn
            pos += 1 if marker == 0xFF else 2
        elif pos + 4 <= len(data):  # a table or scan header between a progressive file's scans
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
        else:
            return None
    return None


def frame_info(data: bytes, segments) -> tuple[int, int, int, int, int] | None:
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


def index_spans(data, segments) -> list[tuple[int, int]]:
    """(start, end) of the file's tile-index segments (APP9 with ``INDEX_ID``), in file order."""
    return [(s, e) for m, s, e in segments if m == INDEX_MARKER and data[s + 4:s + 4 + len(INDEX_ID)] == INDEX_ID]
