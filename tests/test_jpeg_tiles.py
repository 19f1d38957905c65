"""Tiled JPEGs: tile_writer's lossless re-code (preprocess.py) and the region decoding TrainSet does on it
(data.decode), on real JPEGs."""
from __future__ import annotations

import io
import random

import datasets
import numpy as np
import pytest
import simplejpeg
import skimage.data
import torch
import turbojpeg
from PIL import Image, ImageCms
from torchvision.io import decode_jpeg

import preprocess
from imagenet_trainer import jpeg_markers, tile_writer
from imagenet_trainer.data import TrainSet, decode


def _save(pixels: np.ndarray, size=None, **save) -> bytes:
    image = Image.fromarray(pixels)
    if size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=save.pop("quality", 90), **save)
    return buf.getvalue()


def _with_metadata() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "imagenet-trainer tests"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _save(skimage.data.chelsea(), exif=exif, icc_profile=icc, comment=b"a COM segment")


KINDS = {  # JPEG flavours ImageNet holds: 4:2:0 at its shapes, 4:4:4, 4:2:2, gray, progressive, odd sizes
    "420_landscape": lambda: _save(skimage.data.coffee(), (500, 375)),
    "420_portrait": lambda: _save(skimage.data.coffee(), (375, 500)),
    "444": lambda: _save(skimage.data.astronaut(), (333, 250), subsampling=0),
    "444_big": lambda: _save(skimage.data.astronaut(), (1500, 1001), subsampling=0),  # 8 px MCU rows, 1/8 decodes
    "422": lambda: _save(skimage.data.astronaut(), (250, 333), subsampling=1),
    "gray": lambda: _save(skimage.data.camera(), (301, 199)),
    "progressive": lambda: _save(skimage.data.rocket(), progressive=True),
    "prime_mcu_row": lambda: _save(skimage.data.coffee(), (368, 120)),  # 23 MCUs a row: 16 px tiles only
    "one_pixel": lambda: _save(skimage.data.coffee(), (1, 1)),
    "smaller_than_a_tile": lambda: _save(skimage.data.coffee(), (17, 9)),
    "metadata": _with_metadata,
    "restart_rows_already": lambda: _save(skimage.data.coffee(), (500, 375), restart_marker_rows=2),
}


@pytest.fixture(scope="module")
def files():
    return {name: make() for name, make in KINDS.items()}


def _pixels(data: bytes) -> dict[str, np.ndarray]:
    return {"PIL": np.asarray(Image.open(io.BytesIO(data))),
            "torchvision": decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy(),
            "simplejpeg": simplejpeg.decode_jpeg(data, colorspace="GRAY" if Image.open(io.BytesIO(data)).mode == "L"
                                                  else "RGB")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tile_px", [16, 64, 10_000])
def test_recode_is_lossless_for_every_decoder_and_keeps_metadata(files, kind, tile_px):
    data = files[kind]
    tiled = tile_writer.add_restarts(data, tile_px)
    assert tiled is not None and tiled != data
    before, after = _pixels(data), _pixels(tiled)
    for decoder in before:
        assert np.array_equal(before[decoder], after[decoder]), decoder
    tiles = decode.tile_grid(tiled)
    assert tiles is not None and (tiles.height, tiles.width) == Image.open(io.BytesIO(data)).size[::-1]
    assert tiles.tile_w <= max(tile_px, 16) and tiles.tile_h in (8, 16)
    index = sum(len(s) for s in tile_writer.index_segments(np.diff(tiles.markers)))  # 2 bytes a tile
    assert index == 2 * (len(tiles.markers) - 1) + 4 + len(jpeg_markers.INDEX_ID)
    # narrow tiles forced on smooth files (~15 coded bytes an MCU: 444_big) cost more markers; by default they grow
    # by at most ~10%, and the index by 2 bytes a tile
    assert len(tiled) - index < (1.25 if tile_px == 16 else 1.1) * len(data) + 600
    if kind == "progressive":
        assert not Image.open(io.BytesIO(tiled)).info.get("progressive")  # re-coded baseline: decodes faster
    if kind == "metadata":
        a, b = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(tiled))
        assert a.info["icc_profile"] == b.info["icc_profile"] and a.getexif() == b.getexif()
        assert b.info.get("comment") == b"a COM segment"


def test_layout_only_for_files_cut_into_tiles(files):
    for kind, data in files.items():
        # Pillow's restart_marker_rows makes whole-row tiles: such files decode by region as they are
        assert (decode.tile_grid(data) is not None) == (kind == "restart_rows_already"), kind
    misaligned = _save(skimage.data.coffee(), restart_marker_blocks=5)  # 38 MCUs a row: pieces straddle rows
    assert decode.tile_grid(misaligned) is None
    png = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(png, "PNG")
    arithmetic = turbojpeg.transform(files["420_landscape"], arithmetic=True)  # SOF9: no Huffman stream to cut
    for other in (png.getvalue(), b"", b"\xff\xd8\xff", misaligned[:len(misaligned) // 2], arithmetic):
        assert decode.tile_grid(other) is None
        assert tile_writer.add_restarts(other, 64) is None


@pytest.mark.parametrize("kind", ["420_landscape", "444", "422", "gray", "progressive", "prime_mcu_row"])
def test_region_decodes_exactly_those_pixels_of_the_whole_file(files, kind):
    tiled = tile_writer.add_restarts(files[kind], 64)
    tiles = decode.tile_grid(tiled)
    rng = random.Random(kind)
    for factor in (1, 2, 4, 8):
        # TrainSet's decode: fast IDCT and fast (per-MCU) upsampling, DCT-scaled by 1/factor
        options = dict(fastdct=True, fastupsample=True, colorspace="GRAY" if kind == "gray" else "RGB")
        whole = simplejpeg.decode_jpeg(tiled, min_height=-(-tiles.height // factor),
                                       min_width=-(-tiles.width // factor), **options)
        for _ in range(8):
            top, left = rng.randrange(tiles.height), rng.randrange(tiles.width)
            h, w = rng.randint(1, tiles.height - top), rng.randint(1, tiles.width - left)
            sub, height, width, y, x = decode.region(tiled, tiles, top, left, h, w)
            assert y <= top and x <= left and y + height >= top + h and x + width >= left + w  # covers the box
            part = simplejpeg.decode_jpeg(sub, min_height=-(-height // factor), min_width=-(-width // factor),
                                          **options)
            assert part.shape[:2] == (-(-height // factor), -(-width // factor))
            ref = whole[y // factor:y // factor + part.shape[0], x // factor:x // factor + part.shape[1]]
            assert np.array_equal(part, ref), (factor, top, left, h, w)


def test_trainset_gives_the_same_samples_from_tiled_and_untiled_rows(files):
    names = list(KINDS)
    plain = [files[k] for k in names]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})

    def split(images):
        return datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images],
                                           "label": [0] * len(images)}, features=features)

    tiled = split([tile_writer.add_restarts(d, 64) for d in plain])
    for size in (16, 64):  # small sizes: 1/8-scale decodes, where the crop box rounds at odd multiples of 8 px
        a, b = TrainSet(split(plain), size, seed=5), TrainSet(tiled, size, seed=5)
        for epoch in range(25):
            for i in range(len(plain)):
                assert torch.equal(a[(epoch, i)][0], b[(epoch, i)][0]), (names[i], size, epoch)


def test_recode_in_chunks_of_tiles_gives_the_same_file(files, monkeypatch):
    whole = tile_writer.add_restarts(files["444"], 64)
    monkeypatch.setattr(tile_writer, "CHUNK", 7)  # several tj3Transform calls, the last one partial
    assert tile_writer.add_restarts(files["444"], 64) == whole


def test_malformed_headers_are_none_not_errors(files):
    tiled = tile_writer.add_restarts(files["420_landscape"], 64)
    assert tile_writer.add_restarts(memoryview(files["420_landscape"]), 64) == tiled  # rows arrive as memoryviews
    sof = next(s for m, s, e in jpeg_markers.header_segments(tiled) if m in jpeg_markers.SOF_ANY)
    sos = jpeg_markers.header_segments(tiled)[-1][1]

    def patched(data, offset, value):
        return data[:offset] + value + data[offset + len(value):]

    for bad in (patched(tiled, sof + 9, b"\0"), patched(tiled, sof + 7, b"\0\0"), tiled[:sos + 4], tiled[:sof + 6],
                patched(tiled, sof + 2, b"\xff\xff")):  # no components, width 0, cut in SOS / SOF, length past end
        assert decode.tile_grid(bad) is None
        assert tile_writer.add_restarts(bad, 64) is None


def _without_index(tiled: bytes) -> bytes:
    segments = jpeg_markers.header_segments(tiled)
    index = jpeg_markers.index_spans(tiled, segments)
    assert index and index == [(s, e) for m, s, e in segments if m == jpeg_markers.INDEX_MARKER]
    keep = zip([0] + [e for s, e in index], [s for s, e in index] + [len(tiled)])
    return b"".join(tiled[a:b] for a, b in keep)


@pytest.mark.parametrize("kind", ["420_landscape", "444_big", "gray", "progressive", "metadata", "one_pixel"])
def test_the_tile_index_gives_what_a_marker_scan_finds(files, kind):
    tiled = tile_writer.add_restarts(files[kind], 64)
    plain = _without_index(tiled)  # a tiled file as written before the index existed: found by scanning
    indexed, scanned = decode.tile_grid(tiled), decode.tile_grid(plain)
    assert scanned is not None and indexed._replace(markers=None) == scanned._replace(markers=None)
    assert np.array_equal(indexed.markers - indexed.markers[0], scanned.markers - scanned.markers[0])
    assert np.array_equal(simplejpeg.decode_jpeg(tiled), simplejpeg.decode_jpeg(plain))
    rng = random.Random(kind)
    for _ in range(20):
        top, left = rng.randrange(indexed.height), rng.randrange(indexed.width)
        box = top, left, rng.randint(1, indexed.height - top), rng.randint(1, indexed.width - left)
        assert decode.region(tiled, indexed, *box) == decode.region(plain, scanned, *box)
    again = tile_writer.add_restarts(tiled, 64)  # re-tiling keeps one index, not the old one beside the new
    assert decode.tile_grid(again)._replace(head=None, sof=None, markers=None) == indexed._replace(
        head=None, sof=None, markers=None) or kind == "progressive"  # its baseline re-code may pick other tiles
    assert sum(m == jpeg_markers.INDEX_MARKER for m, s, e in jpeg_markers.header_segments(again)) == 1
    assert np.array_equal(simplejpeg.decode_jpeg(again), simplejpeg.decode_jpeg(tiled))


def test_an_index_that_does_not_match_the_data_is_ignored(files):
    tiled = tile_writer.add_restarts(files["420_landscape"], 64)
    scanned = decode.tile_grid(_without_index(tiled))
    (s, e), = [(s, e) for m, s, e in jpeg_markers.header_segments(tiled) if m == jpeg_markers.INDEX_MARKER]
    first = s + 4 + len(jpeg_markers.INDEX_ID)
    wrong_length = tiled[:first] + (int.from_bytes(tiled[first:first + 2], "little") + 1).to_bytes(2, "little") \
        + tiled[first + 2:]
    too_short = tiled[:s + 2] + (e - s - 4).to_bytes(2, "big") + tiled[s + 4:e - 2] + tiled[e:]  # one tile missing
    for bad in (wrong_length, too_short):
        tiles = decode.tile_grid(bad)
        assert tiles is not None and np.array_equal(tiles.markers - tiles.markers[0],
                                                    scanned.markers - scanned.markers[0])


def test_an_index_of_many_tiles_spans_several_segments(files, monkeypatch):
    whole = decode.tile_grid(tile_writer.add_restarts(files["444_big"], 64))
    monkeypatch.setattr(tile_writer, "INDEX_PER_SEGMENT", 1000)  # 5,922 tiles: 6 segments
    tiled = tile_writer.add_restarts(files["444_big"], 64)
    assert sum(m == jpeg_markers.INDEX_MARKER for m, s, e in jpeg_markers.header_segments(tiled)) == 6
    tiles = decode.tile_grid(tiled)
    assert tiles._replace(markers=None) == whole._replace(markers=None)
    assert np.array_equal(tiles.markers - tiles.markers[0], whole.markers - whole.markers[0])


def test_tiles_are_as_narrow_as_hold_min_tile_bytes(files):
    grain = np.random.default_rng(0).normal(0, 24, (375, 500, 3))
    photo = _save(np.clip(np.asarray(Image.fromarray(skimage.data.coffee()).resize((500, 375))) + grain, 0, 255)
                  .astype(np.uint8))  # ImageNet-sized: ~110 KB, ~140 coded bytes a 4:2:0 MCU
    assert 90_000 < len(photo) < 140_000
    tiles = decode.tile_grid(tile_writer.add_restarts(photo, 64))
    assert tiles.tile_w == 16  # one MCU
    assert (tiles.markers[-1] - tiles.markers[0]) / (len(tiles.markers) - 1) >= tile_writer.MIN_TILE_BYTES
    smooth = decode.tile_grid(tile_writer.add_restarts(files["444_big"], 64))  # ~13 coded bytes an 8 px MCU
    assert smooth.tile_w == 32  # 188 MCUs a row = 4 x 47: 4 MCUs is the widest tile within 64 px
    assert decode.tile_grid(tile_writer.add_restarts(photo, 10_000)).tile_w == 16  # the width asked is a maximum


@pytest.mark.parametrize("progressive", [False, True])
def test_an_arithmetic_coded_jpeg_over_64_kb_is_kept_losslessly_in_huffman_coding(progressive):
    """Pillow's libjpeg fails on arithmetic-coded files larger than its 64 KB read blocks; preprocess.py transcodes
    them to Huffman coding (the same coefficients and metadata), then stores and tiles them like any photo."""
    coded = turbojpeg.compress(np.ascontiguousarray(skimage.data.astronaut()), 92, turbojpeg.SAMP.Y420,
                               arithmetic=True, progressive=progressive)
    comment = b"\xff\xfe\x00\x0fkept as it is"
    data = coded[:2] + comment + coded[2:]

    def frame(jpeg: bytes) -> int:
        return next(m for m, _, _ in jpeg_markers.header_segments(jpeg) if m in jpeg_markers.SOF_ANY)

    assert len(data) > 65_536 and frame(data) == (0xCA if progressive else 0xC9)
    enc = preprocess.encode_image(data, None, 90)
    assert enc.why is None and enc.size == (512, 512)
    assert frame(enc.data) == 0xC0 and comment in enc.data  # baseline Huffman, the COM segment kept
    original = simplejpeg.decode_jpeg(data)
    assert np.array_equal(simplejpeg.decode_jpeg(enc.data), original)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(enc.data))), original)
    tiled = preprocess.tile(enc.data, 64)
    assert tiled is not None and np.array_equal(simplejpeg.decode_jpeg(tiled), original)
    with pytest.raises(preprocess.BadImage, match="does not decode"):  # a truncated one is still skipped
        preprocess.encode_image(data[:len(data) // 2], None, 90)
