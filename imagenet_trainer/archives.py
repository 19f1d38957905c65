"""ILSVRC-2012 read in place from the archives it is distributed in: nothing is extracted.

preprocess.py lists an unpacked tree as splits of ``(path, label)`` items (image_tree.Split) and its workers read
each path's bytes. Here an archive gives the same listing (the same paths relative to the image folder, labels,
image ids and boxes) plus ``Split.source``: where each path's bytes lie, ``{path: (archive, offset, size, method,
crc)}``. A worker then reads an image with one positioned read (``os.pread``) of one large file, never a small-file
open, so the tiles, the report, resume and the manifest are those of the tree, byte for byte.

Packagings, told apart by what ``--data_dir`` holds (archive_layouts.py lists each):

- ``kaggle-zip``: ``imagenet-object-localization-challenge.zip`` (the file, or a folder holding it), read by
  random access through the zip's central directory; stored and deflated members, checked against their CRC-32.
- ``image-net.org``: a folder with ``ILSVRC2012_img_train.tar`` (1,000 per-class tars), ``ILSVRC2012_img_val.tar``,
  ``ILSVRC2012_devkit_t12.tar.gz`` (val labels as ILSVRC2012_IDs, mapped to wnids by ``data/meta.mat``), and
  optionally ``ILSVRC2012_img_test*.tar``, ``ILSVRC2012_bbox_train_v2.tar.gz`` and ``ILSVRC2012_bbox_val_v3.tgz``.
  These tars are uncompressed, so every JPEG is a byte range of the file.
- ``kaggle-zip`` of Kaggle's older release: the LOC files beside ``imagenet_object_localization_patched2019.tar.gz``,
  which holds the ILSVRC tree; a compressed tar has no offsets, so it is read as a stream (below).
  ``kaggle-tar-gz``: that zip unzipped, the same files side by side in a folder (or the tar.gz named, the LOC files
  beside it), read through the same lister.
- ``hub-imagenet-1k``: a local snapshot of the Hub's ``ILSVRC/imagenet-1k`` as its loading script reads it:
  ``classes.py`` (``IMAGENET2012_CLASSES``, wnid -> name) and ``data/train_images_N.tar.gz``, ``val_images.tar.gz``,
  ``test_images.tar.gz`` of flat files named ``<original stem>_<wnid>.JPEG`` (test: ``<stem>.JPEG``); no boxes.
  Read as a stream.
- ``hub-imagenet-1k-parquet``: that repo's snapshot as the Hub holds it now, ``data/{train,validation,test}-NNNNN-
  of-NNNNN.parquet`` with an ``image`` struct (``bytes``, ``path``) and a ``label`` ClassLabel of the human names in
  sorted-wnid order, ``classes.py`` beside them or not; no boxes. A row is located by (file, row group, row): a
  shard whose rows lie in a few row groups reads them in place (``PARQUET``), one whose rows are scattered over
  many (the Hub's train rows are shuffled) is spooled from one sequential read, as a compressed tar is.
- ``webdataset``: a folder of WebDataset shards as ``timm/imagenet-1k-wds`` ships them (``*-train-*.tar``,
  ``*-validation-*.tar``; ``<key>.jpg`` with ``<key>.cls``, the label, and ``<key>.json``, whose ``filename`` is
  the original file name), uncompressed too.

A compressed tar is read twice, front to back: once to list it, once to process it; while it streams, each shard's
members are copied into one spool file in the work folder, handed to a worker when complete and deleted when done
(``spool``), so the work folder holds a few shards, not an extracted copy, when the archive is in sorted order.
Scattered Parquet rows go the same way, row group after row group, each read once. After each source file read
whole, a progress record keeps the spool up to there: a killed run's rerun reads only the files not yet spooled.

Library code: an incomplete or damaged set is a ValueError naming the file and what is missing.
"""
from __future__ import annotations

import collections
import copy
import errno
import gzip
import hashlib
import heapq
import json
import os
import posixpath
import shutil
import struct
import tarfile
import threading
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagenet_trainer import checkpoints
from imagenet_trainer.image_tree import hidden
from imagenet_trainer.runinfo import atomic_write_text

# MD5s of the image-net.org files as torchvision's ImageNet class publishes them (torchvision/datasets/imagenet.py).
PUBLISHED_MD5 = {"ILSVRC2012_img_train.tar": "1d675b47d978889d74fa0da5fadfb00e",
                 "ILSVRC2012_img_val.tar": "29b22e2961454d5413ddabcf34fc5622",
                 "ILSVRC2012_devkit_t12.tar.gz": "fa75699e90414af021442c21a62c3abf"}
TAR = -1  # the ``method`` of a member stored as is in a tar (zip members carry zip's method numbers: 0, 8)
# a member of a compressed tar: no offset to read it at; its ``offset`` slot holds its header's offset in the
# uncompressed tar (TarInfo.offset), which tells apart two members of one name (a tar appended to, ``tar -r``)
STREAM = -2
# a row of a Parquet file: its ``offset`` slot holds (row group, row), its ``size`` slot the row group's row count
PARQUET = -3
INSIDE = "::"  # "outer.zip::inner.tar.gz": an archive stored in a zip, read as a stream of that zip's member
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (skipped fields), name and extra-field lengths


class Found(NamedTuple):
    packaging: str  # kaggle-zip, kaggle-tar-gz, image-net.org, hub-imagenet-1k(-parquet), webdataset
    archives: list  # absolute paths of the archive files read, in the order locations index them
    root: str  # --data_dir as given (the zip file or the folder), for messages and the dataset's name
    describe: str  # one line: what was found


def detect(data_dir: Path) -> Found | None:
    """The packaging of ``data_dir``, or None when it is a tree preprocess.py reads as files."""
    from imagenet_trainer import archive_layouts  # the listings import this module's readers

    return archive_layouts.detect(data_dir)


def list_splits(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    """(wnids, descriptions, {split: Split}, warnings), as image_tree.list_ilsvrc_splits gives for a tree, and as it
    does, ``left_out`` gets preprocess_report.json's entry of each member not read."""
    from imagenet_trainer import archive_layouts

    return archive_layouts.LISTERS[found.packaging](found, left_out)


def dataset_name(data_dir: Path) -> str:
    """The name a model card gives a subset: the folder's name, or the archive's without its extensions."""
    name = data_dir.name
    for ext in (".zip", ".tar.gz", ".tgz", ".tar"):
        if data_dir.is_file() and name.endswith(ext):
            return name[:-len(ext)]
    return name


def for_shard(source: dict | None, image_dir: str, annotation_dir: str | None, items: list) -> dict | None:
    """The part of a split's ``source`` one shard reads: its images and, where present, their XML files."""
    if source is None:
        return None
    members = source["members"]
    wanted = [os.path.join(image_dir, rel) for rel, _ in items]
    if annotation_dir:
        wanted += [os.path.join(annotation_dir, os.path.splitext(rel)[0] + ".xml") for rel, _ in items]
    return {"archives": source["archives"], "members": {p: members[p] for p in wanted if p in members}}


class MemberReader:
    """``read(path) -> bytes`` for one shard: a file under ``data_dir``, or a member of an archive by its location.
    A damaged member is an OSError, like an unreadable file, so the image is skipped and reported. A Parquet row is
    read with the shard's other rows in its row group, which are kept until the shard has read its last row there:
    each row group is read once whatever the order of the rows, and a shard read in place holds at most its own
    images (``parquet_rows``)."""

    def __init__(self, data_dir: str, source: dict | None):
        self.data_dir, self.source, self.fds = data_dir, source, {}
        self.groups = {}  # (archive, row group) -> its images, or the OSError reading it gave
        self.rows_of = {}  # (archive, row group) -> the shard's rows there
        for loc in (source or {"members": {}})["members"].values():
            if loc[3] == PARQUET:
                self.rows_of.setdefault((loc[0], loc[1][0]), []).append(loc[1][1])
        self.rows_left = Counter({key: len(rows) for key, rows in self.rows_of.items()})

    def __call__(self, path: str) -> bytes:
        if self.source is None:
            with open(os.path.join(self.data_dir, path), "rb") as f:
                return f.read()
        loc = self.source["members"].get(path)
        if loc is None:
            raise FileNotFoundError(errno.ENOENT, "not in the archive", os.path.join(self.data_dir, path))
        archive, offset, size, method, crc = loc
        if method == PARQUET:
            return self._parquet_row(archive, *offset)
        if archive not in self.fds:
            self.fds[archive] = os.open(self.source["archives"][archive], os.O_RDONLY)
        fd = self.fds[archive]
        if method != TAR:
            signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(_pread(fd, ZIP_LOCAL_HEADER.size, offset))
            if signature != b"PK\x03\x04":
                raise OSError(f"no zip entry at byte {offset} of the archive (damaged?)")
            offset += ZIP_LOCAL_HEADER.size + name_len + extra_len
        data = _pread(fd, size, offset)
        if method == 8:
            try:
                data = zlib.decompress(data, -15)  # raw deflate, as zip stores it
            except zlib.error as e:
                raise OSError(f"damaged in the archive (deflate: {e})") from None
        elif method not in (0, TAR):
            raise OSError(f"zip compression method {method} is not supported (store or deflate)")
        if crc is not None and zlib.crc32(data) != crc:
            raise OSError("damaged in the archive (CRC-32 mismatch)")
        return data

    def _parquet_row(self, archive: int, group: int, row: int) -> bytes:
        key = (archive, group)
        if key not in self.groups:
            try:
                self.groups[key] = dict(parquet_rows(self.source["archives"][archive], group,
                                                     sorted(self.rows_of[key])))
            except OSError as e:
                self.groups[key] = e
        images = self.groups[key]
        self.rows_left[key] -= 1
        if self.rows_left[key] <= 0:
            del self.groups[key]
        if isinstance(images, OSError):
            raise images
        if images.get(row) is None:
            raise OSError(f"no image bytes in row {row} of row group {group} (changed since it was listed?)")
        return images.pop(row)

    def __del__(self):
        for fd in self.fds.values():
            os.close(fd)


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file read through a 1 MiB buffer: pyarrow's default pre-buffering reads a whole column chunk (one
    row group's images, hundreds of MB) into memory before decoding it."""
    return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)


def parquet_rows(path: str, group: int, rows, opened: pq.ParquetFile | None = None):
    """(row, its ``image.bytes`` or None) for each of ``rows`` (sorted) of one row group of a Parquet file
    (``opened``: the file already open), handed out in batches of 64 rows of which only the wanted ones become Python
    bytes, so the row group is never held as Python objects (about 5x its size: 1.1 GB for a 220 MB group). Memory
    is bounded by a data page, not a batch: pyarrow decodes a page whole, and its writer makes one per 1024 values
    (up to a whole row group of images). A row past the group's end gives None. A damaged or truncated file is an
    OSError naming the row group, raised where the read fails."""
    rows, at, start = list(rows), 0, 0
    try:
        batches = (opened or open_parquet(path)).iter_batches(batch_size=64, row_groups=[group],
                                                              columns=["image.bytes"])
        for batch in batches:
            images = batch.column(0).field("bytes")
            while at < len(rows) and rows[at] < start + len(images):
                yield rows[at], images[rows[at] - start].as_py()
                at += 1
            start += len(images)
            if at == len(rows):
                return
    except (pa.ArrowException, OSError, IndexError) as e:
        raise OSError(f"row group {group} of {os.path.basename(path)} does not read ({type(e).__name__}: {e})"
                      ) from None
    for row in rows[at:]:
        yield row, None


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"the archive ends at byte {offset + len(data)}, inside this member (truncated)")
    return data


def tar_members(path: Path, start: int = 0, end: int | None = None, broken: list | None = None,
                inner: str | None = None, dotted: list | None = None) -> list[tarfile.TarInfo]:
    """The regular files of the uncompressed tar in bytes [start, end) of ``path`` (the whole file by default; a
    per-class tar inside image-net.org's train tar otherwise, ``inner`` its name there, for messages), from the
    headers alone: tarfile seeks past the data, and reads nothing past ``end``. Offsets are those of ``path``. One
    member per name, the last, as ``tar x`` leaves a name stored twice (a tar appended to); hidden files left out
    (``hidden``), every hidden member's name added to ``dotted`` (``hidden_tops`` says which to report); a link read
    as the file it leads to (``_files_of``). A link to no file of the tar is (name, why) added to ``broken``, for the
    caller to warn of, or without that list a ValueError naming it. A truncated tar, or one with a damaged member
    header, is a ValueError naming ``path`` (and ``inner``)."""
    end = os.path.getsize(path) if end is None else end
    where = f"{inner} in {path}" if inner else f"{path}" + (f" (the tar at byte {start})" if start else "")
    try:
        with open(path, "rb") as f:
            f.seek(start)  # tarfile counts offsets from where the file object stands
            # bounded: a class tar cut short would otherwise be read on into the next one's header and data
            with tarfile.open(fileobj=_Bounded(f, end), mode="r:") as tar:
                members = tar.getmembers()
                stop = tar.offset  # the header tarfile stopped at: the end-of-archive block, or one it cannot parse
            rest = os.pread(f.fileno(), min(end - stop, MAX_END_PADDING + 1), stop) if stop < end else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{where}: not a complete tar ({type(e).__name__}: {e}); download it again") from None
    if not members and end - start < 2 * tarfile.BLOCKSIZE:  # even a tar of no file has its two end blocks
        size = "empty (0 bytes)" if end == start else f"{end - start} bytes"
        raise ValueError(f"{where}: {size}, not a tar; download it again")
    damage = after_the_listing(rest, stop, end - stop)
    if damage:
        raise ValueError(f"{where}: damaged, {damage}; download it again")
    sparse = [m.name for m in members if m.issparse()]
    if sparse:  # tar -S stores a file without its holes: its bytes in the tar are not the file's
        raise ValueError(f"{where}: {len(sparse)} sparse members (tar --sparse), e.g. {sparse[0]}, which this reader "
                         "does not read; re-pack it without --sparse")
    last = max((m.offset_data + -(-m.size // 512) * 512 for m in members), default=start)
    if last + 1024 > end:  # a tar ends with two zero blocks; tarfile stops quietly where the file stops
        raise ValueError(f"{where}: truncated, it stops {'inside' if last > end else 'after'} its last member "
                         f"{members[-1].name if members else ''}; download it again")
    files, lost = _files_of(members)
    if dotted is not None:
        dotted += [m.name for m in members if hidden(m.name)]
    if lost and broken is None:
        raise ValueError(f"{where}: {lost[0][0]} is a link to no file of the tar; re-pack it with tar --dereference "
                         "--hard-dereference, which stores files, not links")
    if lost:
        broken.extend(lost)
    return files


class _Bounded:
    """A file object that ends at byte ``end``: tarfile reads the tar inside [its position, ``end``) alone."""

    def __init__(self, f, end: int):
        self.f, self.end = f, end

    def read(self, size: int = -1) -> bytes:
        room = max(self.end - self.f.tell(), 0)
        return self.f.read(room if size is None or size < 0 else min(size, room))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


# bytes of zeros a tar may end with: two end-of-archive blocks, then up to a record of padding (tar -b 2048, the
# largest blocking factor in use, makes 1 MiB records; GNU tar's default, 10 KiB)
MAX_END_PADDING = 2 * tarfile.BLOCKSIZE + (1 << 20)


def after_the_listing(rest: bytes, stop: int, length: int) -> str | None:
    """What is wrong with the ``length`` bytes of a tar from byte ``stop``, where tarfile ended its listing
    (``rest``: their first bytes), or None when they are its end: tarfile ends the listing without a word at a
    header it cannot parse (anywhere but at byte 0) or at a zeroed one (a hole an unfinished torrent leaves reads as
    zeros), so either would drop every member after it; a tar ends with zeros only."""
    data = rest.lstrip(b"\0")
    lost = "the members from there on would be lost"
    if not data:
        return None if length <= MAX_END_PADDING else (
            f"{length:,} bytes from byte {stop} on, more than a tar ends with, begin with zeros where a member header "
            f"should be (a hole in the download? {lost})")
    if len(rest) - len(data) < tarfile.BLOCKSIZE:
        return f"the member header at byte {stop} does not read ({lost})"
    return (f"zeros at byte {stop} where a member header should be, then data at byte {stop + len(rest) - len(data)} "
            f"(a hole in the download? {lost})")


MAX_LINKS = 40  # symbolic links followed in a row before giving up, as Linux does (MAXSYMLINKS)


def _files_of(members: list) -> tuple[list, list]:
    """(the files of a tar's ``members``, [(name, why)] of its broken links), one per name, the last, hidden ones
    left out. A re-packed set may hold links (tar stores a file's second hard link as a link member), read as the
    file ``tar x`` leaves there: a hard link as the file of its target's name stored before it, a symbolic link as
    the file its target (relative to the link's folder) names at the end, through other links."""
    final = {}  # name, "./a" as "a" (one file on disk) -> its last member, a hard link as its target's bytes
    for m in members:
        target = final.get(posixpath.normpath(m.linkname)) if m.islnk() else None
        final[posixpath.normpath(m.name)] = _as_file(m, target) if target is not None and target.isfile() else m
    files, broken = [], []
    for name, m in final.items():
        if hidden(m.name) or not (m.isfile() or m.islnk() or m.issym()):
            continue
        target, at, hops = m, name, 0
        while target is not None and target.issym() and hops < MAX_LINKS:
            at, hops = posixpath.normpath(posixpath.join(posixpath.dirname(at), target.linkname)), hops + 1
            target = final.get(at)
        if target is not None and target.isfile():
            files.append(_as_file(m, target))
        else:
            broken.append((m.name, "too many levels of symbolic links" if target is not None and target.issym()
                           else "their target is not a file in the tar"))
    return files, broken


def _as_file(link: tarfile.TarInfo, target: tarfile.TarInfo) -> tarfile.TarInfo:
    """``link`` (its name, its header's offset) read as the regular file ``target`` is: its bytes' place and size."""
    if link is target:
        return link
    m = copy.copy(link)
    m.type, m.size, m.offset_data = tarfile.REGTYPE, target.size, target.offset_data
    return m


def archive_size(path: str) -> int:
    """Bytes of an archive file, or of the zip holding it (an ``INSIDE`` path)."""
    return os.path.getsize(path.split(INSIDE)[0])


def open_stream(path: str):
    """A binary file object reading ``path`` from its start: a file, or a member of a zip (``INSIDE``)."""
    if INSIDE not in path:
        return open(path, "rb")
    outer, inner = path.split(INSIDE)
    return zipfile.ZipFile(outer).open(inner)


STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile)


def _incomplete(path: str, e: Exception) -> ValueError:
    return ValueError(f"{path}: not a complete archive ({type(e).__name__}: {e}); download it again")


class _StreamedData:
    """A member's file object as stream_tar yields it: its caller reads it outside the generator, so a cut inside
    the member must fail there as a cut anywhere else does, in stream_tar's one line."""

    def __init__(self, path: str, data):
        self.path, self.data = path, data

    def read(self, size: int = -1) -> bytes:
        try:
            return self.data.read(size)
        except STREAM_ERRORS as e:
            raise _incomplete(self.path, e) from None


def stream_tar(path: str, links: list | None = None, folders: list | None = None, dotted: list | None = None):
    """(TarInfo, file object of its data) of each regular file of a compressed tar but hidden ones (``hidden``: every
    hidden member's name is added to ``dotted``), in one sequential read; a truncated or damaged archive is a
    ValueError naming ``path``, raised by the file object too. A name stored twice comes twice: its listing keeps
    the last (TarInfo.offset tells them apart). A link (a re-packed set's) is not followed: its target's bytes went
    by before it, so it is (name, target) added to ``links``, for the caller to warn of. A folder's name is added to
    ``folders``: only its entry shows an empty one.

    A gzip stream is read by the gzip module, to its end: tarfile's own stream reader takes a cut at a member
    boundary for the end of the archive, so a truncated download would list fewer images without a word, while
    gzip checks its trailer (CRC-32 and length) and raises on a missing one; and a tar cut before it was
    compressed lacks the two zero blocks a tar ends with."""
    gz = path.endswith((".gz", ".tgz"))
    last = ""
    try:
        with open_stream(path) as raw, (gzip.GzipFile(fileobj=raw) if gz else raw) as stream, \
                tarfile.open(fileobj=(kept := _LastReads(stream)), mode="r|" if gz else "r|*") as tar:
            for m in tar:
                last = m.name
                if m.isfile() and not hidden(m.name):
                    yield m, _StreamedData(path, tar.extractfile(m))
                elif (m.islnk() or m.issym()) and not hidden(m.name) and links is not None:
                    links.append((m.name, m.linkname))
                elif m.isdir() and not hidden(m.name) and folders is not None:
                    folders.append(m.name)
                elif hidden(m.name) and dotted is not None:
                    dotted.append(m.name)
            if gz:  # the rest of the gzip stream, past where tarfile stopped: zeros, if that was the tar's end
                rest = kept.since(tar.offset)
                while rest is not None and len(rest) <= MAX_END_PADDING and (more := stream.read(1 << 20)):
                    rest += more
                damage = rest is not None and after_the_listing(rest[:MAX_END_PADDING + 1], tar.offset, len(rest))
                if damage:
                    raise ValueError(f"{path}: damaged, the tar in it: {damage}; download it again")
                while stream.read(1 << 20):  # to the gzip trailer, whose CRC-32 and length gzip checks
                    pass
            if gz and stream.tell() < tar.offset + 2 * tarfile.BLOCKSIZE:  # tell(): uncompressed bytes, all read
                raise ValueError(f"{path}: truncated, the tar in it stops after its member {last or '(none)'} "
                                 "without the end-of-archive blocks; download it again")
    except STREAM_ERRORS as e:
        raise _incomplete(path, e) from None


class _LastReads:
    """``stream`` read through, its last reads kept with their offsets: the header tarfile's stream reader stopped
    at (it reads a record of 10 KiB at a time) is in them."""

    def __init__(self, stream):
        self.stream, self.at, self.reads = stream, 0, collections.deque(maxlen=4)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.reads.append((self.at, data))
        self.at += len(data)
        return data

    def since(self, offset: int) -> bytes | None:
        """The bytes read from ``offset`` on; None if they are no longer kept."""
        start = self.reads[0][0] if self.reads else self.at
        return b"".join(data for _, data in self.reads)[offset - start:] if start <= offset <= self.at else None


def links_left_out(links: list, within: str = "") -> list[dict]:
    """preprocess_report.json's ``left_out`` entries of the links ``stream_tar`` met, named ``within`` + member."""
    return [{"path": within + member_path(name), "reason": f"a link to {target}: a compressed tar is read once, "
             "front to back, and its target has gone by"} for name, target in links]


def member_path(name: str) -> str:
    """An archive member's name as ``tar x`` writes the file: "./a" and "/a" as "a"."""
    return posixpath.normpath(name).lstrip("/")


def hidden_tops(names) -> list[str]:
    """Of archive member ``names``, the hidden ones (``hidden``) as the tree route lists them: each name up to its
    first hidden part, so a hidden folder comes once, not its files; sorted, each once."""
    tops = set()
    for name in names:
        parts = member_path(name).split("/")
        first = next((i for i, part in enumerate(parts) if part.startswith(".") and part not in (".", "..")), None)
        if first is not None:
            tops.add("/".join(parts[:first + 1]))
    return sorted(tops)


def link_warnings(links: list, path: str) -> list[str]:
    """The warning for the links ``stream_tar`` met in ``path``: left out, never silently."""
    return [f"{len(links)} links in {path} left out (a compressed tar is read once, front to back: a link's target "
            f"has gone by; re-pack it with tar --dereference --hard-dereference, which stores files, not links), "
            f"e.g. {links[0][0]} -> {links[0][1]}"] if links else []


# A shard reads its Parquet rows in place when that costs at most two row groups' rows more than it needs (the
# partial groups at the ends of a run of rows); scattered rows would read a whole row group per image.
def _spooled_read(shard) -> bool:
    """Whether the shard's members reach it through the spool: members of a compressed tar, or Parquet rows
    scattered over many row groups (a shuffled file order)."""
    if not shard.source:
        return False
    locations = shard.source["members"].values()
    if any(loc[3] == STREAM for loc in locations):
        return True
    groups = {(loc[0], loc[1][0]): loc[2] for loc in locations if loc[3] == PARQUET}
    return bool(groups) and sum(groups.values()) > len(shard.source["members"]) + 2 * max(groups.values())


def _members_of(path: str, wanted: set):
    """(location name, bytes or a file object, or the OSError a damaged Parquet row group gave) of the members of one
    archive that ``wanted`` names, in the archive's order: a compressed tar's header offsets (so of a name stored
    twice, only the occurrence listed), or Parquet (row group, row) pairs, each row group read once."""
    if not path.endswith(".parquet"):
        for m, data in stream_tar(path):
            if m.offset in wanted:
                yield m.offset, data
        return
    rows_of = {}
    for group, row in wanted:
        rows_of.setdefault(group, []).append(row)
    try:
        opened = open_parquet(path)
    except (pa.ArrowException, OSError):
        opened = None  # each row group then gives the OSError naming it
    for group in sorted(rows_of):
        rows = sorted(rows_of[group])
        done = 0
        try:
            for row, data in parquet_rows(path, group, rows, opened):
                done += 1
                yield (group, row), data
        except OSError as e:
            for row in rows[done:]:
                yield (group, row), e


def spool(shards, folder: Path, in_flight: int, stop: threading.Event | None = None):
    """Shards as they become readable. A shard whose members lie in a compressed tar (``STREAM``), or in Parquet row
    groups they are scattered over (``_spooled_read``), gets them copied into one spool file while each archive is
    read once, front to back, and is yielded, located in that file, once the last of them has passed; the worker
    deletes the file when the shard is done (``release``). Other shards pass through first. At most ``in_flight``
    full spool files wait for workers; the spool also holds the members of shards not complete yet, so it stays
    small when the archive is in the listing's sorted order, as tars of a folder are, and grows towards the split's
    size when an archive's order is shuffled (``spool_peak``, checked against the folder's free space before the
    first byte). A row of a Parquet row group that does not read stays located in its file, where the worker meets
    the same error and reports the image.

    The spool survives a kill: each spool file has an index beside it (``.idx``, a JSON line per member, written
    after its bytes), and after each archive is read whole, ``progress.json`` records the archives done and every
    spool and index file's length. A rerun of the same job cuts the files back to those lengths and reads only the
    archives not done (``_resume``): ImageNet's shuffled train split is about 140 GB of spool, hours of reading.

    ``stop``, once set, ends the generator where it stands, as a kill would (the rerun keeps what the last progress
    record covers): a pool's feeder thread runs it, and a pool ending on Ctrl-C or a worker's error joins that
    thread after its workers, which delete the spool files it waits on, are gone."""
    shards = list(shards)
    streamed = [s for s in shards if _spooled_read(s)]
    job = resumed = None
    if streamed:  # here, not in the generator: a pool's feeder thread would swallow a SystemExit
        job = _spool_job(streamed)
        resumed = _resume(folder, streamed, job)
        if resumed is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        kept = [sum(os.path.getsize(f) for f in (_spool_file(folder, s), _index_file(_spool_file(folder, s)))
                    if resumed and f.exists()) for s in streamed]
        need = spool_peak(streamed, in_flight, resumed, kept) - sum(kept)
        if need > checkpoints.free_bytes(folder):
            raise SystemExit(f"error: the spool in {folder} needs about {checkpoints.amount(need)} more at its peak "
                             "(the images of the shards read from compressed or shuffled archives, each held until "
                             f"its shard is done), {checkpoints.free_space(folder)}: free space or give --output_dir "
                             "on a larger disk")
    return _spool(shards, streamed, folder, in_flight, job, resumed, stop or threading.Event())


PROGRESS = "progress.json"  # in the spool folder: what a rerun of the same job may keep


def _shard_name(shard) -> str:
    return f"{shard.split}-{shard.index:05d}"


def _spool_file(folder: Path, shard) -> Path:
    return folder / f"{_shard_name(shard)}.bin"


def _index_file(spool_file) -> Path:
    return Path(spool_file).with_suffix(".idx")


def _spool_job(streamed) -> dict:
    """What a spool belongs to: the archive files (path, bytes, mtime in ns) and each spooled shard's members."""
    stats = [os.stat(p.split(INSIDE)[0]) for p in streamed[0].source["archives"]]
    return {"archives": [[p, st.st_size, st.st_mtime_ns] for p, st in zip(streamed[0].source["archives"], stats)],
            "shards": {_shard_name(s): hashlib.sha1(json.dumps(sorted(s.source["members"].items())).encode()
                                                    ).hexdigest() for s in streamed}}


class _Stale(Exception):
    """Why a spool left in the folder cannot be kept."""


def _resume(folder: Path, streamed, job: dict):
    """(archives done, {shard's position in ``streamed``: {path: location}}) from the spool a killed run of this job
    left, its files cut back to the lengths recorded after its last whole archive; None when there is none to keep,
    said in one line where there was one. Files of shards no longer pending (finished by a worker) are deleted."""
    if not folder.exists():
        return None
    try:
        try:
            record = json.loads((folder / PROGRESS).read_text())
        except (OSError, ValueError):
            raise _Stale("no progress record: killed before its first archive was read whole") from None
        if record.get("archives") != job["archives"]:
            raise _Stale("another job: other archive files")
        if any(record.get("shards", {}).get(name) != h for name, h in job["shards"].items()):
            raise _Stale("another job: other shards")
        located, keep = {}, {PROGRESS}
        for i, s in enumerate(streamed):
            spool_file = _spool_file(folder, s)
            index_file = _index_file(spool_file)
            lengths = record["lengths"].get(_shard_name(s), [0, 0])
            for path, n in zip((spool_file, index_file), lengths):
                size = path.stat().st_size if path.exists() else 0
                if size < n:
                    raise _Stale(f"{path.name} holds {size} bytes, {n} recorded")
                if path.exists():
                    os.truncate(path, n)  # what was written after the last whole archive: that archive is reread
                keep.add(path.name)
            located[i] = {}
            lines = index_file.read_bytes().splitlines() if index_file.exists() else []
            for line in lines:
                path, offset, size = json.loads(line)
                if path not in s.source["members"] or path in located[i] or (
                        offset is not None and offset + size > lengths[0]):
                    raise _Stale(f"{index_file.name} does not match its spool file")
                # None: a member read in place (a row group that does not read), as the first run located it
                located[i][path] = (s.source["members"][path] if offset is None else (0, offset, size, TAR, None))
        done = set(record["done"])
    except _Stale as e:
        print(f"{folder}: the spool a killed run left is discarded ({e}); its archives are read again", flush=True)
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{folder}: the spool a killed run left is discarded (unreadable: {type(e).__name__}: {e}); its "
              "archives are read again", flush=True)
        return None
    for path in folder.iterdir():
        if path.name not in keep:  # a finished shard's leftovers, a temp file of an interrupted record
            path.unlink()
    total = len(done | {loc[0] for s in streamed for loc in s.source["members"].values()})
    kept = sum(p.stat().st_size for p in folder.glob("*.bin"))
    print(f"{folder}: resuming the spool a killed run left, {len(done)} of {total} archives already read "
          f"({kept / 1e9:.1f} GB kept)", flush=True)
    return done, located


def spool_bytes(streamed) -> int:
    """At most the bytes the spool and index files of ``streamed`` shards will hold in all (``_member_bounds``)."""
    bounds = _member_bounds(streamed, [0] * len(streamed))
    groups = {group: size for shard in bounds for group, size, _ in shard.values() if group is not None}
    return sum(groups.values()) + sum(line + (size if group is None else 0)
                                      for shard in bounds for group, size, line in shard.values())


def spool_peak(streamed, in_flight: int, resumed=None, kept: list | None = None) -> int:
    """At most the bytes the spool and index files of ``streamed`` shards hold at once while ``_spool`` reads the
    archives (those ``resumed`` has not done) in order: the members read so far of shards not complete yet, plus the
    ``in_flight`` largest complete shards, whose files wait for a worker or are in one until it deletes them
    (``room``; the worst case, slow workers), and never more than all read so far. A few shards' worth when an
    archive is in the listing's sorted order, up to the split's size when shuffled. ``kept``: the bytes of each
    shard's spool and index files a killed run left, there from the start.

    A Parquet row whose row group is spooled whole counts as that group (``_member_bounds``: its size is not known
    before it is read): so does a shard's every row there, and the shards not complete yet hold each group they have
    rows in once."""
    done, located = resumed or (set(), {})
    bounds = _member_bounds(streamed, kept or [0] * len(streamed))
    own = list(kept or [0] * len(streamed))  # bytes of each shard's own: kept files, index lines, tar members
    bound = list(own)  # each shard's bytes at most: its own, and each row group it has rows in
    left = [len(s.source["members"]) - len(located.get(i, {})) for i, s in enumerate(streamed)]
    order = sorted((loc[0], loc[1], i, path) for i, s in enumerate(streamed)  # as _spool reads them
                   for path, loc in s.source["members"].items() if loc[0] not in done)
    groups_of = [[] for _ in streamed]  # the row groups each shard has rows in, so far
    holders, sizes = Counter(), {}  # row group -> shards not complete yet with rows there; -> its bytes at most
    read = sum(own)  # all the spool holds or held, at most
    owned = sum(b for b, n in zip(own, left) if n)  # own bytes of the shards not complete yet
    pooled = 0  # bytes of the row groups they hold rows in
    top, top_sum = [], 0  # a min-heap of the in_flight largest complete shards' bytes, and their sum

    def complete(i) -> None:
        nonlocal top_sum, pooled
        for group in groups_of[i]:
            holders[group] -= 1
            pooled -= sizes[group] if not holders[group] else 0
        if len(top) < in_flight:
            heapq.heappush(top, bound[i])
            top_sum += bound[i]
        elif top and bound[i] > top[0]:
            top_sum += bound[i] - heapq.heapreplace(top, bound[i])

    for i, n in enumerate(left):
        if n == 0:
            complete(i)
    peak = min(read, owned + top_sum)
    for _, _, i, path in order:
        group, size, line = bounds[i][path]
        mine = line + (size if group is None else 0)
        own[i], bound[i], owned, read = own[i] + mine, bound[i] + mine, owned + mine, read + mine
        if group is not None and group not in sizes:
            sizes[group], read = size, read + size
        if group is not None and group not in groups_of[i][-1:]:  # a group's rows come together
            groups_of[i].append(group)
            bound[i] += size
            holders[group] += 1
            pooled += size if holders[group] == 1 else 0
        peak = max(peak, min(read, owned + pooled + top_sum))  # a completing shard counts here, before room()
        left[i] -= 1
        if left[i] == 0:
            owned -= own[i]
            complete(i)
    return round(peak)


def _member_bounds(streamed, kept: list) -> list[dict]:
    """[{path: (row group or None, bytes at most, bytes of its index line at most)}] of each of ``streamed``: a tar
    member's size; a Parquet row's size where its row group is shared with shards read in place, else its (archive,
    row group) and that group's bytes (``_row_group_bounds``). The index line as ``_spool`` writes it, offset and
    size as long as the shard's ``kept`` bytes and members at most."""
    whole, rows = _row_group_bounds(streamed)
    bounds = []
    for s, before in zip(streamed, kept):
        sizes = {}
        for path, (at, name, size, method, _) in s.source["members"].items():
            if method != PARQUET:
                sizes[path] = (None, size)
            elif (at, name[0]) in rows:
                sizes[path] = (None, rows[(at, name[0])].get(name[1], 0))
            else:
                sizes[path] = ((at, name[0]), whole.get((at, name[0]), 0))
        digits = max(len("null"), len(str(round(before + sum(size for _, size in sizes.values())))))
        # [path, offset, size] and a newline: the path's JSON and 7 characters
        bounds.append({path: (group, size, len(json.dumps(path)) + 2 * digits + 7)
                       for path, (group, size) in sizes.items()})
    return bounds


def _row_group_bounds(streamed) -> tuple[dict, dict]:
    """({(archive, row group): its image column's bytes uncompressed} for the row groups whose rows are all spooled,
    {(archive, row group): {row: its image's bytes}} for those shared with shards read in place), from the Parquet
    files' metadata and, for shared groups, their image bytes read once more: the listing keeps no per-row size, and
    a spooled row may be most of its group (an image far larger than the others). A column chunk holds its images,
    their lengths and page headers, at least the images' bytes (but for an image repeated in a dictionary page)."""
    spooled = Counter((loc[0], loc[1][0]) for s in streamed for loc in s.source["members"].values()
                      if loc[3] == PARQUET)
    in_group = {(loc[0], loc[1][0]): loc[2] for s in streamed for loc in s.source["members"].values()
                if loc[3] == PARQUET}  # the row group's rows, as listed
    paths = streamed[0].source["archives"] if streamed else []
    whole, rows = {}, {}
    for at in sorted({at for at, _ in spooled}):
        try:
            opened = open_parquet(paths[at])
        except (pa.ArrowException, OSError):
            continue  # the spool meets the same error and leaves the rows in place
        for key in sorted(k for k in spooled if k[0] == at and k[1] < opened.metadata.num_row_groups):
            rg = opened.metadata.row_group(key[1])
            col = next((rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == "image.bytes"),
                       None)
            whole[key] = col.total_uncompressed_size if col is not None else 0
            if spooled[key] < in_group[key]:
                try:
                    rows[key] = dict(enumerate(_image_sizes(opened, key[1])))
                except (pa.ArrowException, OSError):
                    pass  # the spool meets a read error and leaves the rows in place; else ``whole``, never 0
    return whole, rows


def _image_sizes(opened: pq.ParquetFile, group: int) -> list[int]:
    """The bytes of each row's ``image.bytes`` in one row group, read as ``parquet_rows`` reads it (in 64-row batches,
    memory bounded by a data page: up to the whole group). A dictionary-typed column (dictionary<binary>, a valid
    layout) is decoded to binary first: pyarrow's binary_length does not take it."""
    sizes = []
    for batch in opened.iter_batches(batch_size=64, row_groups=[group], columns=["image.bytes"]):
        images = batch.column(0).field("bytes")
        if pa.types.is_dictionary(images.type):
            images = images.cast(images.type.value_type)
        sizes += pc.binary_length(images).fill_null(0).to_pylist()
    return sizes


def _spool(shards, streamed, folder: Path, in_flight: int, job: dict | None, resumed, stop: threading.Event):
    yield from (s for s in shards if not _spooled_read(s))
    if not streamed:
        return
    done, kept = resumed or (set(), {})
    need, left, files, waiting = {}, {}, {}, []  # need: {archive: {location name: (shard, path)}}
    lengths = {}  # shard -> [spool file bytes, index file bytes], as written so far
    for i, s in enumerate(streamed):
        for path, (at, name, _, _, _) in s.source["members"].items():
            need.setdefault(at, {})[name] = (i, path)
        files[i] = (_spool_file(folder, s), kept.get(i, {}))
        left[i] = len(s.source["members"]) - len(files[i][1])
        lengths[i] = [os.path.getsize(p) if p.exists() else 0 for p in (files[i][0], _index_file(files[i][0]))]
    written = set()  # shards appended to since the last progress record

    def room() -> bool:
        """Whether a spool file may go to the workers: fewer than ``in_flight`` wait (each worker deletes its own
        when done); False once ``stop`` is set."""
        while sum(p.exists() for p in waiting) >= in_flight:
            if stop.wait(0.05):
                return False
        return not stop.is_set()

    def hand_over(i):
        waiting.append(files[i][0])
        return _spooled(streamed[i], *files[i])

    for i in [i for i, n in left.items() if n == 0]:  # complete in the spool a killed run left
        if not room():
            return
        yield hand_over(i)
    archive_paths = streamed[0].source["archives"]
    for at in sorted(set(need) - done):
        for name, data in _members_of(archive_paths[at], set(need[at])):
            if stop.is_set():
                return
            i, path = need[at][name]
            spool_file, located = files[i]
            if isinstance(data, OSError) or data is None:
                located[path] = streamed[i].source["members"][path]  # read in place, as an unspooled shard would
                entry = [path, None, None]
            else:
                with open(spool_file, "ab") as f:
                    start = f.tell()
                    if isinstance(data, bytes):
                        f.write(data)
                    else:
                        shutil.copyfileobj(data, f)
                    located[path] = (0, start, f.tell() - start, TAR, None)
                    lengths[i][0] = f.tell()
                entry = [path, start, lengths[i][0] - start]
            with open(_index_file(spool_file), "ab") as f:  # after the bytes it points at
                f.write(json.dumps(entry).encode() + b"\n")
                lengths[i][1] = f.tell()
            written.add(i)
            left[i] -= 1
            if left[i] == 0:
                if not room():
                    return
                yield hand_over(i)
        done.add(at)
        _record_progress(folder, job, done, {_shard_name(streamed[i]): n for i, n in lengths.items()},
                         [files[i][0] for i in written])
        written.clear()
    for i in (i for i, n in left.items() if n):  # members the listing saw but the archive no longer has
        yield _spooled(streamed[i], *files[i])


def _record_progress(folder: Path, job: dict, done: set, lengths: dict, written: list) -> None:
    """``progress.json`` once an archive is read whole, the spool and index files it wrote synced first: a reboot
    must not leave a record of bytes that never reached the disk."""
    for spool_file in written:
        for path in (spool_file, _index_file(spool_file)):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # its shard is done and its files deleted (``release``)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    atomic_write_text(folder / PROGRESS, json.dumps({**job, "done": sorted(done), "lengths": lengths}))


def _spooled(shard, spool_file: Path, located: dict):
    """The shard located in its spool file (archive 0); rows left in a Parquet file keep their location, its index
    one up behind the spool file's."""
    spool_file.touch()
    located = {p: loc if loc[3] != PARQUET else (loc[0] + 1, *loc[1:]) for p, loc in located.items()}
    return shard._replace(source={"archives": [str(spool_file), *shard.source["archives"]], "members": located,
                                  "spool": True})


def release(source: dict | None) -> None:
    """After a shard is done: delete its spool file and its index."""
    if source and source.get("spool"):
        _index_file(source["archives"][0]).unlink(missing_ok=True)
        os.remove(source["archives"][0])


def verify_md5(found: Found) -> list[str]:
    """--verify_archives: each archive with a published MD5 against it (reads every byte); lines to print.
    A mismatch is a ValueError naming the file."""
    lines = []
    for path in found.archives:
        want = PUBLISHED_MD5.get(os.path.basename(path))
        if want is None:
            lines.append(f"{path}: no published checksum (members are checked as read: zip CRC-32, tar sizes)")
            continue
        md5 = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                md5.update(chunk)
        if md5.hexdigest() != want:
            raise ValueError(f"{path}: MD5 {md5.hexdigest()}, published {want}: damaged or another file; "
                             "download it again")
        lines.append(f"{path}: MD5 ok")
    return lines
