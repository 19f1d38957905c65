"""The listing of each archive packaging of ILSVRC-2012 (see archives.py): the splits preprocess.py stores.

Each lister returns what image_tree.list_ilsvrc_splits returns for the unpacked tree, ``(wnids, descriptions,
{split: Split}, warnings)``, with the tree's relative paths, labels (sorted-wnid order), image ids and boxes, and
``Split.source`` locating every path in the archives; and, as it does, adds to a ``left_out`` list the report's entry
of each member not read (its path as ``skipped`` names it: the tree's path inside Kaggle's archives, else the
archive's path under --data_dir, then the member's: ILSVRC2012_img_train.tar/n01440764.tar/x.txt). Reads headers,
CSVs, XML and Parquet's path and label columns only; decodes no image. The Hub's ImageNet-1k is recognised by its
label names here (``hub_imagenet_wnids``), for preprocess.py and for data/sources.py, which reads that Parquet as it
is.
One module over 400 lines: the packagings share their helpers (kaggle_splits, _boxes_of, no_train_images; the two
Hub layouts read_hub_classes and hub_descriptions), and LISTERS is the one table archives.list_splits dispatches on.
"""
from __future__ import annotations

import io
import itertools
import os
import ast
import json
import posixpath
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

from imagenet_trainer import archives, ilsvrc, image_tree
from imagenet_trainer.archives import INSIDE, PARQUET, STREAM, TAR, Found
from imagenet_trainer.image_tree import HIDDEN, NOT_IMAGE, OUTSIDE_CLASSES, Split, hidden

KAGGLE_ZIP, IMAGENET_ORG, WEBDATASET, HUB = "kaggle-zip", "image-net.org", "webdataset", "hub-imagenet-1k"
HUB_PARQUET = "hub-imagenet-1k-parquet"  # the same repo as the Hub holds it now: data/<split>-NNNNN-of-NNNNN.parquet
PARQUET_SPLITS = ("train", "validation", "test")  # data/<split>-*.parquet
KAGGLE_TGZ = "kaggle-tar-gz"  # Kaggle's older zip unzipped: the LOC files beside the tar.gz of the ILSVRC tree
KAGGLE_TGZ_NAME = "imagenet_object_localization_patched2019.tar.gz"
TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
BBOX_ARCHIVES = ("ILSVRC2012_bbox_train_v2.tar.gz", "ILSVRC2012_bbox_val_v3.tgz")  # optional: boxes as VOC XML
HUB_SPLITS = {"train": "train_images", "validation": "val_images", "test": "test_images"}  # data/<prefix>*.tar.gz
HUB_CLASSES = "classes.py"  # IMAGENET2012_CLASSES = OrderedDict({"n01440764": "tench, Tinca tinca", ...})
# the Hub's class names are unique, so its second "crane" (the machine; the first is the bird) is "crane2" there; the
# descriptions every route gives are LOC_synset_mapping.txt's, "crane" twice
HUB_RENAMED = {"n03126707": ("crane2", "crane")}
HUB_NAME_WNID = re.compile(r"_(n\d{8})$")  # the Hub names a file <original stem>_<wnid>.JPEG (test: <stem>.JPEG)
WDS_SPLITS = {"train": ("-train-",), "validation": ("-validation-", "-val-")}  # in shard names: timm's naming
KAGGLE_ZIP_KEY = "imagenet-object-localization"  # in the name of Kaggle's zip, found in a folder
# the names detect() recognises, for the message of a folder of archives it does not (``unrecognised``)
RECOGNISED = (f"Kaggle's {KAGGLE_ZIP_KEY}-challenge.zip (or any .zip given as --data_dir itself), its older "
              f"{KAGGLE_TGZ_NAME} with {ilsvrc.SYNSET_MAPPING} and {ilsvrc.VAL_SOLUTION} beside it, image-net.org's "
              f"{TRAIN_TAR} and {VAL_TAR} with {DEVKIT}, the folder of a snapshot of the Hub's ILSVRC/imagenet-1k "
              f"(data/{{{','.join(PARQUET_SPLITS)}}}-NNNNN-of-NNNNN.parquet, or {HUB_CLASSES} with "
              f"data/{{{','.join(HUB_SPLITS.values())}}}*.tar.gz), WebDataset shards named "
              + " or ".join(f"*{keys[0]}*.tar" for keys in WDS_SPLITS.values()))
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".parquet")


def detect(data_dir: Path) -> Found | None:
    if data_dir.is_file():
        if data_dir.name == KAGGLE_TGZ_NAME:
            return _kaggle_tgz(data_dir.parent, data_dir)
        if data_dir.suffix.lower() == ".zip":
            return Found(KAGGLE_ZIP, [str(data_dir)], str(data_dir), f"Kaggle's zip, read in place: {data_dir.name}")
        hub = data_dir.parent.name == "data" and data_dir.name.lower().endswith((".parquet", ".tar.gz")) and \
            (hub_parquet_files(data_dir.parent.parent) or data_dir.name.startswith(tuple(HUB_SPLITS.values())))
        if hub:  # one file of a Hub snapshot: the snapshot is read whole, from its folder
            raise ValueError(f"--data_dir {data_dir}: a file of a snapshot of the Hub's ILSVRC/imagenet-1k, which is "
                             f"read whole: pass its folder, --data_dir {data_dir.parent.parent}")
        raise ValueError(f"--data_dir {data_dir}: a file preprocess.py does not read; it takes a folder of image "
                         f"files (an image tree) or of archives, or an archive: it recognises {RECOGNISED}")
    if data_dir.is_dir() and (data_dir / KAGGLE_TGZ_NAME).is_file() and not (data_dir / "ILSVRC").exists():
        return _kaggle_tgz(data_dir, data_dir / KAGGLE_TGZ_NAME)
    if not data_dir.is_dir() or (data_dir / "ILSVRC").exists():
        return None  # an unpacked tree, read as files
    names = sorted(n for n in os.listdir(data_dir) if not hidden(n))  # ._ILSVRC2012_img_val.tar: macOS
    zips = [n for n in names if _kaggle_zip_name(n)]
    # Kaggle's LOC files make the folder a tree only when no layout below claims it (the last line): one kept beside
    # image-net.org's tars or the Hub's files does not make them Kaggle's tree
    loc = (data_dir / ilsvrc.SYNSET_MAPPING).exists()
    # image-net.org's files claim the folder with one of their image tars there; without, unless another layout
    # (Kaggle's zip or LOC files, the Hub's files, WebDataset shards) does: a devkit kept beside them is not a set of
    # image-net.org's missing its tars (the last of the checks below)
    org = any(n.startswith(("ILSVRC2012_img_", "ILSVRC2012_devkit")) for n in names)
    if org and (TRAIN_TAR in names or VAL_TAR in names):
        return _imagenet_org(data_dir, names)
    hub = sorted(p for p in data_dir.glob("data/*.tar.gz") if p.name.startswith(tuple(HUB_SPLITS.values())))
    if hub and (data_dir / HUB_CLASSES).is_file():
        return Found(HUB, [str(p) for p in hub], str(data_dir), "a snapshot of the Hub's ILSVRC/imagenet-1k, read "
                     f"as a stream: {', '.join(p.name for p in hub)} and {HUB_CLASSES}")
    parquet = hub_parquet_files(data_dir)
    if parquet:
        counts = ", ".join(f"{len(files)} {split}" for split, files in parquet.items())
        classes = f" and {HUB_CLASSES}" if (data_dir / HUB_CLASSES).is_file() else ""
        return Found(HUB_PARQUET, [str(p) for files in parquet.values() for p in files], str(data_dir),
                     f"a snapshot of the Hub's ILSVRC/imagenet-1k in Parquet, read in place: data/*.parquet ({counts})"
                     + classes)
    if len(zips) == 1:
        return Found(KAGGLE_ZIP, [str(data_dir / zips[0])], str(data_dir), f"Kaggle's zip, read in place: {zips[0]}")
    if zips:  # a download kept twice: "... (1).zip" beside the first
        raise ValueError(f"{data_dir}: {len(zips)} of Kaggle's zips, {', '.join(zips)}; pass one, --data_dir "
                         f"{data_dir / min(zips, key=len)}")
    shards = [n for n in names if n.endswith(".tar") and any(k in n for ks in WDS_SPLITS.values() for k in ks)]
    if shards:
        return Found(WEBDATASET, [str(data_dir / n) for n in shards], str(data_dir),
                     f"WebDataset shards, read in place: {len(shards)} tar files")
    if hub:
        raise ValueError(f"{data_dir}: the Hub's older ILSVRC/imagenet-1k snapshot (data/*.tar.gz) without its "
                         f"{HUB_CLASSES}, the class list; put it beside data/ (hf download ILSVRC/imagenet-1k "
                         f"{HUB_CLASSES} --repo-type dataset --local-dir {data_dir})")
    if org and not loc:  # image-net.org's set without its image tars: the route names what is missing
        return _imagenet_org(data_dir, names)
    return None  # a tree: with LOC files but no ILSVRC/, image_tree says it is missing


def _kaggle_zip_name(name: str) -> bool:
    """Whether ``name`` is Kaggle's zip's, in any case (...-challenge.ZIP), or a second download's ("... (1).zip")."""
    return name.lower().endswith(".zip") and KAGGLE_ZIP_KEY in name.lower()


def _read_in_a_set(name: str) -> bool:
    """Whether ``name`` is that of an archive ``detect`` reads only with others or in a place of its own: a box
    archive of image-net.org's, a file of the Hub's snapshots outside its data/."""
    return name in BBOX_ARCHIVES or (name.startswith(tuple(HUB_SPLITS.values())) and name.endswith(".tar.gz")) or \
        bool(re.fullmatch(rf"({'|'.join(PARQUET_SPLITS)})-.*\.parquet", name))


def unrecognised(data_dir: Path) -> str | None:
    """What to do, for the error of a folder no layout claims that holds archives (``ARCHIVE_SUFFIXES``): where it is
    the data/ folder of a snapshot of the Hub's ILSVRC/imagenet-1k, pass the snapshot; else the archive names this
    reader recognises (a download renamed, imagenet.zip; or a recognised name without the rest of its set); None for
    a folder without archives."""
    if not data_dir.is_dir():
        return None
    names = sorted(n for n in os.listdir(data_dir) if not hidden(n) and n.lower().endswith(ARCHIVE_SUFFIXES))
    if not names:
        return None
    hub_tars = [n for n in names if n.startswith(tuple(HUB_SPLITS.values())) and n.endswith(".tar.gz")]
    if data_dir.name == "data" and (hub_parquet_files(data_dir.parent) or hub_tars):
        return (f"it is the data/ folder of a snapshot of the Hub's ILSVRC/imagenet-1k: pass the folder above it, "
                f"--data_dir {data_dir.parent}")
    held = f"it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
    if any(_read_in_a_set(n) for n in names):
        return (f"{held}, named as this reader's archives are, but not in a layout it reads (a file missing, or out "
                f"of place); it recognises {RECOGNISED}")
    zips = [n for n in names if n.lower().endswith(".zip")]
    instead = f" (Kaggle's zip renamed? pass the zip itself: --data_dir {data_dir / zips[0]})" if zips else ""
    return f"{held}, under no archive name this reader recognises{instead}; it recognises {RECOGNISED}"


def _imagenet_org(data_dir: Path, names: list[str]) -> Found:
    read = [n for n in (TRAIN_TAR, VAL_TAR, DEVKIT) if n in names]
    read += [n for n in names if n.startswith("ILSVRC2012_img_test") and n.endswith(".tar")]
    read += [n for n in BBOX_ARCHIVES if n in names]
    return Found(IMAGENET_ORG, [str(data_dir / n) for n in read], str(data_dir),
                 "image-net.org's archives, read in place: " + ", ".join(read))


def _kaggle_tgz(folder: Path, tgz: Path) -> Found:
    return Found(KAGGLE_TGZ, [str(tgz)], str(folder), f"Kaggle's older release, unzipped: {tgz.name} read as a "
                 f"stream, with {ilsvrc.SYNSET_MAPPING} and {ilsvrc.VAL_SOLUTION} beside it")


# ---------------------------------------------------------------------------------------------------------------
# Kaggle's zip: the tree's paths, found in the central directory.
# ---------------------------------------------------------------------------------------------------------------

def list_kaggle_zip(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    path = found.archives[0]
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and not hidden(i.filename)]
            dirs = [i.filename for i in zf.infolist() if i.is_dir() and not hidden(i.filename)]
            dotted = [i.filename for i in zf.infolist() if hidden(i.filename)]
            undecodable(path, infos)
            mapping = [i.filename for i in infos if os.path.basename(i.filename) == ilsvrc.SYNSET_MAPPING]
            prefix = min(mapping, key=len)[:-len(ilsvrc.SYNSET_MAPPING)] if mapping else ""
            texts = {n: zf.read(prefix + n).decode("utf-8-sig") for n in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION)
                     if prefix + n in zf.NameToInfo}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a complete zip ({type(e).__name__}: {e}); download it again") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: a text file in it is not UTF-8 ({e.reason})") from None
    size = os.path.getsize(path)
    members = {i.filename[len(prefix):]: (0, i.header_offset, i.compress_size, i.compress_type, i.CRC)
               for i in infos if i.filename.startswith(prefix)}
    inner = [p for p in members if p.endswith((".tar.gz", ".tgz"))]
    if inner and not any(p.startswith(ilsvrc.SPLIT_DIRS["train"] + "/") for p in members):
        return list_kaggle_stream(found._replace(archives=[f"{path}{INSIDE}{prefix}{inner[0]}"]), texts,
                                  left_out=left_out)
    late = [p for p, loc in members.items() if loc[1] + loc[2] > size]
    if late:
        raise ValueError(f"{path}: truncated ({len(late)} members lie past its end, e.g. {late[0]}); download it again")
    hint = f"is {path} Kaggle's imagenet-object-localization-challenge zip?"
    for name in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION):
        if name not in texts:
            raise ValueError(f"{path}: no {name} in it ({hint})")
    wnids, descriptions = ilsvrc.read_synset_mapping(f"{path}/{ilsvrc.SYNSET_MAPPING}", texts[ilsvrc.SYNSET_MAPPING])
    val_csv = ilsvrc.read_solution_csv(f"{path}/{ilsvrc.VAL_SOLUTION}", wnids, texts[ilsvrc.VAL_SOLUTION])
    source = {"archives": found.archives, "members": members}
    folders = [d[len(prefix):].rstrip("/") for d in dirs if d.startswith(prefix)]
    dotted = [d[len(prefix):] for d in dotted if d.startswith(prefix)]
    return (wnids, descriptions, *kaggle_splits(path, members, wnids, val_csv, source, folders=folders,
                                                dotted=dotted, left_out=left_out))


# what reads a zip's members: zipfile, the small files and a tar.gz inside; the reader of each image and XML file
# (archives.MemberReader), stored and deflated ones, as Kaggle's zip has them
ZIPFILE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
READER_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def undecodable(path: str, infos: list) -> None:
    """A ValueError, before any read, for members of the zip at ``path`` that would not decode: a re-zip (Windows'
    Explorer writes Deflate64 past 2 GB; 7-Zip may choose bzip2, or a password) would list every image, then skip
    each one at decoding, hours later, or end in a traceback."""
    def fails(i) -> bool:
        small = os.path.basename(i.filename).endswith((".txt", ".csv", ".tar.gz", ".tgz"))
        return bool(i.flag_bits & 1) or i.compress_type not in (ZIPFILE_METHODS if small else READER_METHODS)
    odd = [i for i in infos if fails(i)]
    if odd:
        how = "encrypted" if odd[0].flag_bits & 1 else f"compressed with zip method {odd[0].compress_type}"
        raise ValueError(f"{path}: {len(odd)} members {how} (e.g. {odd[0].filename}), which this reader does not "
                         "decode (stored and deflated members, as in Kaggle's zip): unzip it and give that folder "
                         "as --data_dir, or zip it again with deflate")


def list_kaggle_tgz(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    """Kaggle's older zip unzipped: the LOC files read from the folder, the tar.gz as from inside the zip. As for
    the unpacked tree, both LOC files are needed (the labels are the CSV's, not the XML's); checked before the
    tar.gz is read, since reading it takes as long as gunzipping it."""
    folder = Path(found.root)
    wanted = {ilsvrc.SYNSET_MAPPING: "the class names", ilsvrc.VAL_SOLUTION: "the validation labels"}
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        them = "them" if len(missing) > 1 else "it"
        raise ValueError(f"{folder}: no {' or '.join(missing)} beside {KAGGLE_TGZ_NAME} "
                         f"({' and '.join(wanted[n] for n in missing)}); put {them} there from Kaggle's zip "
                         f"(unzip imagenet-object-localization-challenge.zip {' '.join(missing)})")
    return list_kaggle_stream(found, {n: ilsvrc.read_text(folder / n) for n in wanted}, texts_at=str(folder),
                              left_out=left_out)


def list_kaggle_stream(found: Found, texts: dict, texts_at: str | None = None, left_out: list | None = None
                       ) -> tuple[list, list, dict, list]:
    """Kaggle's older zip: the LOC files beside ``imagenet_object_localization_patched2019.tar.gz``, which holds
    the ILSVRC tree; listed in one read of the tar.gz (the XML files parsed on the way), processed in a second.
    ``texts``: the LOC files' text, read from ``texts_at`` (messages name it; the tar.gz by default)."""
    path = found.archives[0]
    members, xml_boxes, errors, links, folders, dotted = {}, {}, [], [], [], []
    for m, data in archives.stream_tar(path, links, folders, dotted):
        rel = m.name[2:] if m.name.startswith("./") else m.name
        if rel.endswith(".xml") and rel.startswith(tuple(ilsvrc.ANNOTATION_DIRS.values())):
            xml = data.read()  # not in the try below: a cut archive is its own error, not an unreadable XML file
            try:
                xml_boxes[os.path.splitext(os.path.basename(rel))[0]] = ilsvrc.read_voc_xml(f"{path}/{rel}", xml)
            except ValueError as e:
                errors.append(str(e))
        elif rel in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION):
            texts.setdefault(rel, data.read().decode("utf-8-sig"))
        else:
            members[rel] = (0, m.offset, m.size, STREAM, None)  # a name stored twice: the last, as tar x keeps
    for name in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION):
        if name not in texts:
            raise ValueError(f"{path}: no {name} in it or beside it; is it Kaggle's ImageNet archive?")
    at = texts_at or path
    wnids, descriptions = ilsvrc.read_synset_mapping(f"{at}/{ilsvrc.SYNSET_MAPPING}", texts[ilsvrc.SYNSET_MAPPING])
    val_csv = ilsvrc.read_solution_csv(f"{at}/{ilsvrc.VAL_SOLUTION}", wnids, texts[ilsvrc.VAL_SOLUTION])
    splits, warnings = kaggle_splits(path, members, wnids, val_csv, {"archives": found.archives, "members": members},
                                     xml_boxes, [posixpath.normpath(f) for f in folders], dotted, left_out)
    image_tree.collect(left_out, "", archives.links_left_out(links))
    warnings += [f"{len(errors)} XML files in {path} unreadable, e.g. {errors[0]}"] if errors else []
    return wnids, descriptions, splits, warnings + archives.link_warnings(links, path)


def _files_in(members, folder: str, depth: int, dirs=()) -> tuple[list[str], list[str], list[str]]:
    """(paths below ``folder/``, relative to it, with exactly ``depth`` parts; those with fewer; the folders
    ``depth`` parts down that hold files deeper still, or that ``dirs``, the archive's folder entries, name: an
    empty folder), each sorted, hidden files left out. The tree route reads only the first; it warns of the others,
    as files directly in train/ and as folders among the images."""
    start, files, fewer, folders = folder + "/", [], [], set()
    for p in members:
        rel = p[len(start):]
        if not p.startswith(start) or hidden(rel):
            continue
        parts = rel.split("/")
        if len(parts) > depth:
            folders.add("/".join(parts[:depth]))
        else:
            (files if len(parts) == depth else fewer).append(rel)
    parts = [d[len(start):].split("/") for d in dirs if d.startswith(start) and not hidden(d[len(start):])]
    folders.update("/".join(p[:depth]) for p in parts if len(p) >= depth)
    return sorted(files), sorted(fewer), sorted(folders)


def _hidden_in(names, folder: str, left: list[str]) -> list[str]:
    """The hidden entries (archives.hidden_tops) of member ``names`` below ``folder/``, but those inside one of the
    folders ``left`` out already, whose entry stands for all they hold (the tree's route lists them so)."""
    start = folder + "/" if folder else ""
    tops = archives.hidden_tops(n[len(start):] for n in map(archives.member_path, names) if n.startswith(start))
    return [start + top for top in tops if not any((start + top).startswith(f + "/") for f in left)]


def kaggle_splits(where: str, members: dict, wnids: list, val_csv: dict, source: dict,
                  xml_boxes: dict | None = None, folders=(), dotted=(), left_out: list | None = None
                  ) -> tuple[dict, list]:
    """({split: Split}, warnings) from the paths of Kaggle's tree inside an archive, as the tree gives them. With
    ``xml_boxes`` (stem -> boxes, read while listing) the XML files are not read again, per image. ``folders``: the
    archive's folder entries, which alone show an empty folder, and ``dotted``: its hidden members' names, both
    relative to the tree's root. ``left_out`` gets the tree's entries (image_tree.list_ilsvrc_splits)."""
    index = {w: i for i, w in enumerate(wnids)}
    warnings = []
    annotation_dirs = {s: d for s, d in ilsvrc.ANNOTATION_DIRS.items() if any(p.startswith(d + "/") for p in members)}
    read_boxes = {"train": {}, "validation": val_csv}
    if xml_boxes is not None:
        annotation_dirs = {}
        read_boxes = {"train": xml_boxes, "validation": {**val_csv, **xml_boxes}}  # the XML first, as in the tree
    train_dir = ilsvrc.SPLIT_DIRS["train"]
    train_files, loose, nested = _files_in(members, train_dir, 2, folders)
    # class folders with no file in them too: the tree refuses a folder of an unknown wnid, empty or not
    classes = {posixpath.basename(d) for d in folders if posixpath.dirname(d) == train_dir}
    unknown = sorted(({rel.split("/")[0] for rel in train_files + nested} | classes) - set(index))
    if unknown:
        raise ValueError(f"{where}: train folder of unknown wnid {unknown[0]!r} (not in {ilsvrc.SYNSET_MAPPING}; "
                         f"{len(unknown)} such folders)")
    train = [(rel, index[rel.split("/")[0]]) for rel in train_files]
    if loose:  # the tree's words, the archive's path for the tree's
        warnings.append(f"{len(loose)} files directly in {where}/{train_dir} left out (train images go in "
                        f"{train_dir}/<wnid>/), e.g. {loose[0]}")
    warnings += no_train_images(wnids, train, ilsvrc.SYNSET_MAPPING, where)
    nested = [f"{train_dir}/{folder}" for folder in nested]
    val_files, _, inside = _files_in(members, ilsvrc.SPLIT_DIRS["validation"], 1, folders)
    nested += [f"{ilsvrc.SPLIT_DIRS['validation']}/{folder}" for folder in inside]
    val, val_warnings, val_strays = _kaggle_val(where, val_files, val_csv, index)
    if not val and inside:  # the tree refuses this layout in the same words (image_tree.list_ilsvrc_splits)
        raise ValueError(f"{where}: no images in {ilsvrc.SPLIT_DIRS['validation']}/, only {len(inside)} subfolders "
                         f"(e.g. {inside[0]}/); preprocess.py reads Kaggle's flat val/ with {ilsvrc.VAL_SOLUTION} "
                         "(undo a valprep.sh-style sort into class folders: the images go directly in val/)")
    warnings += val_warnings
    test_files, _, inside = _files_in(members, ilsvrc.SPLIT_DIRS["test"], 1, folders)
    nested += [f"{ilsvrc.SPLIT_DIRS['test']}/{folder}" for folder in inside]
    warnings += ilsvrc.folder_warnings(nested, where, "train/<wnid>/, val/ or test/")
    strays = [name for name in test_files if not name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]  # a README.txt
    test = [(name, -1) for name in test_files if name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
    if strays:
        warnings.append(f"{len(strays)} non-image files in the test folder of {where} left out, e.g. {strays[0]}")
    image_tree.collect(left_out, "", _kaggle_left_out(loose, nested, val_strays, strays, dotted))
    splits = {"train": Split(ilsvrc.SPLIT_DIRS["train"], annotation_dirs.get("train"), train,
                             _boxes_of(read_boxes["train"], train), False, source),
              "validation": Split(ilsvrc.SPLIT_DIRS["validation"], annotation_dirs.get("validation"), val,
                                  _boxes_of(read_boxes["validation"], val), False, source)}
    if test:
        splits["test"] = Split(ilsvrc.SPLIT_DIRS["test"], None, test, {}, False, source)
    else:
        warnings.append(f"{where}: no test images; the dataset has train and validation only")
    for split in ("train", "validation"):
        if not splits[split].items:
            raise ValueError(f"{where}: no {split} images in {splits[split].image_dir}/")
    return splits, warnings


def _kaggle_left_out(loose: list, nested: list, val_strays: list, test_strays: list, dotted) -> list[dict]:
    """The left_out entries image_tree.list_ilsvrc_splits gives the same tree, from what ``kaggle_splits`` found:
    files directly in train/, folders among the images, non-image files in val/ and test/, hidden members
    (``dotted``) in the folders read."""
    dirs = ilsvrc.SPLIT_DIRS
    dots = [h for split in ("train", "validation", "test") for h in _hidden_in(dotted, dirs[split], nested)]
    return (ilsvrc.left_out([f"{dirs['train']}/{f}" for f in loose], OUTSIDE_CLASSES)
            + ilsvrc.left_out(nested, image_tree.folder_reason("train/<wnid>/, val/ or test/"))
            + ilsvrc.left_out([f"{dirs['validation']}/{f}" for f in val_strays],
                              f"{NOT_IMAGE} and no row in {ilsvrc.VAL_SOLUTION}")
            + ilsvrc.left_out([f"{dirs['test']}/{f}" for f in test_strays], NOT_IMAGE) + ilsvrc.left_out(dots, HIDDEN))


def _kaggle_val(where: str, names: list[str], val_csv: dict, index: dict) -> tuple[list, list[str], list[str]]:
    """([(name, label)], warnings, the names left out) of the files directly in Kaggle's val/: each labelled by its
    row of LOC_val_solution.csv (``val_csv``), the first box's wnid. A file without a row is an error when named as an
    image; any other (a readme) is left out with a warning, as the tree leaves it."""
    val, strays = [], []
    for name in names:
        stem, ext = os.path.splitext(name)
        if stem in val_csv:
            val.append((name, index[val_csv[stem][0][0]]))
        elif ext.lower() in ilsvrc.IMAGE_EXTENSIONS:
            raise ValueError(f"{where}: {name} has no row in {ilsvrc.VAL_SOLUTION}, so no label")
        else:
            strays.append(name)
    warnings = [f"{len(strays)} non-image files in the val folder of {where} left out, e.g. {strays[0]}"] if strays \
        else []
    if len(val_csv) > len(val):
        warnings.append(f"{len(val_csv) - len(val)} rows of {ilsvrc.VAL_SOLUTION} have no image in {where}")
    return val, warnings, strays


# ---------------------------------------------------------------------------------------------------------------
# image-net.org: a tar of per-class tars, a flat val tar, the devkit's labels, optional box archives.
# ---------------------------------------------------------------------------------------------------------------

def read_devkit(path: str) -> tuple[list, list, dict, list]:
    """(wnids sorted, their descriptions, {ILSVRC2012_ID: wnid}, [ILSVRC2012_ID of val image 1, 2, ...]) from
    ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (the 1,000 classes are the synsets with no children) and
    ``data/ILSVRC2012_validation_ground_truth.txt``."""
    import scipy.io  # imported here: only this packaging needs it

    wanted = {"meta.mat": None, "ILSVRC2012_validation_ground_truth.txt": None}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if m.isfile() and os.path.basename(m.name) in wanted and "/data/" in "/" + m.name:
                    wanted[os.path.basename(m.name)] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: not a complete tar.gz ({type(e).__name__}: {e}); download it again") from None
    for name, data in wanted.items():
        if data is None:
            raise ValueError(f"{path}: no data/{name} in it; is it ILSVRC2012_devkit_t12.tar.gz?")
    try:  # a cut file is an OSError, MATLAB's v7.3 (HDF5) format NotImplementedError, an empty one MatReadError
        meta = scipy.io.loadmat(io.BytesIO(wanted["meta.mat"]), squeeze_me=True)
    except (OSError, ValueError, TypeError, IndexError, NotImplementedError, zlib.error,
            scipy.io.matlab.MatReadError) as e:  # a cut header: IndexError; MATLAB v7's compressed data: zlib
        raise ValueError(f"{path}: its data/meta.mat does not read as the devkit's MATLAB v5 file "
                         f"({type(e).__name__}: {e}); download it again") from None
    try:
        synsets = meta["synsets"]
        leaves = sorted((str(s["WNID"]), str(s["words"]), int(s["ILSVRC2012_ID"])) for s in synsets.ravel()
                        if int(s["num_children"]) == 0)
        truth = [int(t) for t in wanted["ILSVRC2012_validation_ground_truth.txt"].decode().split()]
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: data/meta.mat or the ground truth is not as the devkit has them ({e}); download "
                         "it again") from None
    unknown = sorted(set(truth) - {i for _, _, i in leaves})
    if unknown:
        raise ValueError(f"{path}: its ground truth names ILSVRC2012_ID {unknown[0]}, which is no class of data/"
                         f"meta.mat ({len(unknown)} such IDs); download it again")
    return [w for w, _, _ in leaves], [d for _, d, _ in leaves], {i: w for w, _, i in leaves}, truth


def read_box_archive(path: str) -> tuple[dict, list]:
    """({image stem: [(name, xmin, ymin, xmax, ymax)]}, unreadable XML messages) from a tar.gz of VOC XML files.
    Read as the image archives are (archives.stream_tar): tarfile's own listing ends at a damaged member header
    without a word, which would lose every box after it; here it is a one-line ValueError naming the archive."""
    boxes, errors = {}, []
    for m, data in archives.stream_tar(path):
        if m.name.endswith(".xml"):
            text = data.read()  # outside the try: damage is the archive's ValueError, not one XML's
            try:
                boxes[os.path.splitext(os.path.basename(m.name))[0]] = ilsvrc.read_voc_xml(f"{path}/{m.name}", text)
            except ValueError as e:
                errors.append(str(e))
    return boxes, errors


def list_imagenet_org(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    folder = Path(found.root)
    paths = {os.path.basename(p): p for p in found.archives}
    for name, what in ((TRAIN_TAR, "the train images"), (VAL_TAR, "the validation images"),
                       (DEVKIT, "the validation labels and the class list, data/meta.mat")):
        if name not in paths:
            raise ValueError(f"{folder}: no {name} ({what}); put image-net.org's file there (or a link to it)")
    # image-net.org has published two: ILSVRC2012_img_test.tar (2012) and _v10102019.tar (Kaggle's test/ too); the
    # job record holds every archive of the folder, so one left out here would tie the output to it
    tests = sorted(n for n in paths if n.startswith("ILSVRC2012_img_test"))
    if len(tests) > 1:
        raise ValueError(f"{folder}: {len(tests)} test tars ({', '.join(tests)}); move the one not to read out of it "
                         f"({tests[-1]} is the newer)")
    wnids, descriptions, id_to_wnid, truth = read_devkit(paths[DEVKIT])
    index = {w: i for i, w in enumerate(wnids)}
    broken = {paths[TRAIN_TAR]: []}  # archive -> its links to no file, (name, why): warned of, as the tree's are
    off = []  # the left_out entries but the val and test tars' non-image files
    members = _class_tar_members(paths[TRAIN_TAR], found.archives.index(paths[TRAIN_TAR]), wnids,
                                 broken[paths[TRAIN_TAR]], off)
    train = sorted((p[len(TRAIN_TAR) + 1:], index[p[len(TRAIN_TAR) + 1:].split(".")[0]]) for p in members)
    warnings = no_train_images(wnids, train, DEVKIT, paths[TRAIN_TAR])
    flat = {}
    for split, name in (("validation", VAL_TAR), *(("test", n) for n in tests)):
        broken[paths[name]], dotted = [], []
        top, read, nested, start, beside = _flat_files(archives.tar_members(paths[name], broken=broken[paths[name]],
                                                                            dotted=dotted))
        at = found.archives.index(paths[name])
        flat[split] = (name, sorted(top), start)
        off += _flat_left_out(name, read, nested, start, beside, dotted)
        members.update({f"{name}/{file}": (at, m.offset_data, m.size, TAR, None) for file, m in top.items()})
        warnings += ilsvrc.folder_warnings(nested, paths[name], read)
        if split == "validation" and nested and not any(f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS) for f in top):
            raise ValueError(f"{paths[name]}: no images directly in {read}, only {len(nested)} folders (e.g. "
                             f"{nested[0]}/); preprocess.py reads image-net.org's flat val tar with {DEVKIT}'s ground "
                             f"truth (use the {VAL_TAR} downloaded, or undo a valprep.sh-style sort into class "
                             "folders: pack the images with no folder)")
    val, val_warnings = _org_val(paths[VAL_TAR], flat["validation"][1], truth,
                                 {i: index[w] for i, w in id_to_wnid.items()})
    test_tar, test_names, _ = flat.get("test", (None, [], ""))
    test, test_warnings = _org_test(folder, paths.get(test_tar), test_names)
    for (name, names, start), (split, items) in zip(flat.values(), (("validation", val), ("test", test))):
        taken = {rel for rel, _ in items}  # _org_val and _org_test read each image or refuse it: these are no images
        off += ilsvrc.left_out([f"{name}/{start}{n}" for n in names if n not in taken], NOT_IMAGE + (
            f" and no line in {DEVKIT}'s ground truth" if split == "validation" else ""))
    warnings += val_warnings + test_warnings
    boxes = {}
    for name in BBOX_ARCHIVES:
        if name in paths:
            found_boxes, errors = read_box_archive(paths[name])
            boxes.update(found_boxes)
            warnings += [f"{len(errors)} XML files of {name} unreadable, e.g. {errors[0]}"] if errors else []
    if not any(n in paths for n in BBOX_ARCHIVES):
        warnings.append(f"no {' or '.join(BBOX_ARCHIVES)} in {folder}: the images get no boxes")
    source = {"archives": found.archives, "members": members}
    splits = {"train": Split(TRAIN_TAR, None, train, _boxes_of(boxes, train), False, source),
              "validation": Split(VAL_TAR, None, val, _boxes_of(boxes, val), False, source)}
    if test:
        splits["test"] = Split(test_tar, None, test, {}, False, source)
    warnings += [w for path, lost in broken.items() for w in ilsvrc.broken_link_warnings(lost, path)]
    image_tree.collect(left_out, "", off + [
        {"path": f"{os.path.basename(path)}/{archives.member_path(name)}",
         "reason": "a broken link: " + why.replace("their target", "its target")}
        for path, lost in broken.items() for name, why in lost])
    return wnids, descriptions, splits, warnings


def _flat_left_out(name: str, read: str, nested: list, start: str, beside: list, dotted: list) -> list[dict]:
    """The left_out entries of image-net.org's val or test tar ``name`` from what ``_flat_files`` found: the folders
    among its images, files beside the folder that holds them, its hidden members (``dotted``)."""
    tops = _hidden_in(dotted, "", nested)
    return (ilsvrc.left_out([f"{name}/{n}" for n in nested], image_tree.folder_reason(read))
            + ilsvrc.left_out([f"{name}/{n}" for n in beside], f"beside its {start} folder, which holds its images")
            + ilsvrc.left_out([f"{name}/{h}" for h in tops], HIDDEN))


def _flat_files(members: list) -> tuple[dict, str, list[str], str, list[str]]:
    """({file name: member} of a flat tar's files, where they are read: "the tar" or "its <folder>/ folder", [the
    folders below that, which hold files], the prefix of the names read: "" or "<folder>/", [files outside that
    folder: not read]). As the tree reads a folder: only the files directly in it, the folders among them left out
    (the caller warns, ilsvrc.folder_warnings), so a file stored twice, at the top and in a folder, is read once.
    Where the tar is read: ``_wrapping_folder``."""
    names = {posixpath.normpath(m.name).lstrip("/"): m for m in members}  # "./a" and "/a" as tar x writes "a"
    folder = _wrapping_folder(names)
    read, start = (f"its {folder}/ folder", f"{folder}/") if folder else ("the tar", "")
    inside = {n[len(start):]: m for n, m in names.items() if n.startswith(start)}
    nested = sorted({start + n.split("/")[0] for n in inside if "/" in n})  # named as in the tar
    beside = sorted(n for n in names if not n.startswith(start))
    return {n: m for n, m in inside.items() if "/" not in n}, read, nested, start, beside


def _wrapping_folder(names) -> str:
    """The folder below the tar's top that holds all its images ("" where one is at the top): a tar of a folder
    (``tar -cf ILSVRC2012_img_val.tar val``; ILSVRC2012_img_test_v10102019.tar's test/; a copy's CLS-LOC/val/), files
    beside it (a README.txt) being no images. Never a class folder nor one below it: valprep.sh's sort into
    <wnid>/ folders stays a sort, which the val tar's caller refuses."""
    images = [n for n in names if n.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
    if not images or any("/" not in n for n in images):
        return ""
    common = posixpath.commonpath([posixpath.dirname(n) for n in images]).split("/")
    return "/".join(itertools.takewhile(lambda part: not ilsvrc.is_wnid(part), common))


def _org_val(path: str, names: list[str], truth: list[int], label_of: dict) -> tuple[list, list[str]]:
    """([(name, label)], warnings) of the val tar's file ``names``: ILSVRC2012_val_<N> is labelled by line N of the
    devkit's ground truth (``truth``, ILSVRC2012_IDs; ``label_of``: ILSVRC2012_ID -> label). A file without a line
    is an error when named as an image; any other (a readme) is left out with a warning, as the tree leaves it."""
    val, strays = [], []
    for name in names:
        stem, ext = os.path.splitext(name)
        number = re.fullmatch(r"ILSVRC2012_val_([0-9]+)", stem)
        line = int(number[1]) if number else 0
        if 1 <= line <= len(truth):
            val.append((name, label_of[truth[line - 1]]))
        elif ext.lower() in ilsvrc.IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: {name} has no line in {DEVKIT}'s ground truth, so no label")
        else:
            strays.append(name)
    warnings = [f"{len(strays)} non-image files in {path} left out, e.g. {strays[0]}"] if strays else []
    if len(truth) > len(val):
        warnings.append(f"{len(truth) - len(val)} lines of {DEVKIT}'s ground truth have no image in {VAL_TAR}")
    return val, warnings


def _org_test(folder: Path, path: str | None, names: list[str]) -> tuple[list, list[str]]:
    """([(name, -1)], warnings) of the test tar at ``path`` (None: not in ``folder``, a download of its own): its
    image files; the others (a readme) left out, and no image at all said, in the tree's words for its test/."""
    test = [(name, -1) for name in names if name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
    strays = [name for name in names if not name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
    warnings = [f"{len(strays)} non-image files in {path} left out, e.g. {strays[0]}"] if strays else []
    if not test:  # unlabelled anyway, so not an error
        none = f"{path}: no test images" if path else f"{folder}: no test images (no ILSVRC2012_img_test*.tar)"
        warnings.append(f"{none}; the dataset has train and validation only")
    return test, warnings


def _class_tar_members(path: str, at: int, wnids: list[str], broken: list, left_out: list) -> dict:
    """{"ILSVRC2012_img_train.tar/<wnid>.tar/<file>": location} of the train tar's per-class tars, each class's
    tar required; links to no file added to ``broken`` as (<wnid>.tar/<name>, why), the left_out entries of hidden
    members, the train tar's and the class tars', to ``left_out``. A class tar is keyed by its name without a leading
    "./": a train tar re-packed with ``tar -C folder .`` names them ./<wnid>.tar."""
    dotted = []
    class_tars = {posixpath.normpath(m.name): m for m in archives.tar_members(path, dotted=dotted)}
    hidden_names = archives.hidden_tops(dotted)
    known = set(wnids)
    unknown = sorted(n for n in class_tars if n.removesuffix(".tar") not in known)
    missing = [w for w in wnids if f"{w}.tar" not in class_tars]
    if unknown or missing:
        raise ValueError(f"{path}: holds {len(class_tars)} class tars for the {len(wnids)} classes of {DEVKIT}: "
                         + (f"{len(missing)} missing, e.g. {missing[0]}.tar" if missing else
                            f"{len(unknown)} of no class, e.g. {unknown[0]}") + "; download it again")
    members = {}
    for wnid in wnids:
        outer, lost, dotted = class_tars[f"{wnid}.tar"], [], []
        for m in archives.tar_members(path, outer.offset_data, outer.offset_data + outer.size, lost, outer.name,
                                      dotted):
            members[f"{TRAIN_TAR}/{wnid}.tar/{os.path.basename(m.name)}"] = (at, m.offset_data, m.size, TAR, None)
        broken += [(f"{wnid}.tar/{name}", why) for name, why in lost]
        hidden_names += [f"{wnid}.tar/{h}" for h in archives.hidden_tops(dotted)]
    left_out += ilsvrc.left_out([f"{TRAIN_TAR}/{h}" for h in hidden_names], HIDDEN)
    return members


def _boxes_of(boxes: dict, items: list) -> dict:
    stems = (os.path.splitext(os.path.basename(rel))[0] for rel, _ in items)
    return {s: boxes[s] for s in stems if s in boxes}


# ---------------------------------------------------------------------------------------------------------------
# WebDataset shards (timm/imagenet-1k-wds): <key>.jpg + <key>.cls (+ <key>.json with the original file name).
# ---------------------------------------------------------------------------------------------------------------

def read_wds_shard(path: str, dotted: list | None = None) -> list[tuple[int, str, tarfile.TarInfo]]:
    """[(class index, original file name, image member)] of one shard, in its order; the names of its hidden members
    (a Mac's ._* files, not samples) added to ``dotted``."""
    by_key = {}
    for m in archives.tar_members(path, dotted=dotted):
        key, _, ext = os.path.basename(m.name).partition(".")  # WebDataset: the key ends at the first dot
        by_key.setdefault(os.path.join(os.path.dirname(m.name), key), {})[ext] = m
    samples = []
    with open(path, "rb") as f:
        def read(m):
            f.seek(m.offset_data)
            return f.read(m.size)

        for key, parts in by_key.items():
            image = next((parts[e] for e in ("jpg", "jpeg", "JPEG", "png", "webp") if e in parts), None)
            if image is None or "cls" not in parts:
                raise ValueError(f"{path}: sample {key} has no {'image' if image is None else '.cls label'}")
            try:
                cls = int(read(parts["cls"]).decode().strip())
                meta = json.loads(read(parts["json"])) if "json" in parts else {}
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: sample {key}: unreadable .cls or .json ({e})") from None
            # the base name: some shards' filename holds the class folder too (n01440764/ILSVRC2012_val_...)
            samples.append((cls, os.path.basename(meta.get("filename") or f"{key}.JPEG"), image))
    return samples


def list_webdataset(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    all_wnids = ilsvrc.imagenet_wnids()  # .cls is the index in ImageNet-1k's sorted wnids
    samples = {split: [] for split in WDS_SPLITS}  # (wnid, file name, location of the image)
    shard_of = {}  # (split, class folder in the tree or "", image id) -> the shard holding it
    for at, path in enumerate(found.archives):
        split = next(s for s, keys in WDS_SPLITS.items() if any(k in os.path.basename(path) for k in keys))
        dotted = []
        for cls, name, m in read_wds_shard(path, dotted):
            if not 0 <= cls < len(all_wnids):
                raise ValueError(f"{path}: {name}: class {cls} is not one of ImageNet's {len(all_wnids)}")
            # as the tree refuses two files with one image id: a shard kept twice would give each image twice
            key = (split, all_wnids[cls] if split == "train" else "", os.path.splitext(name)[0])
            if key in shard_of:
                raise ValueError(f"{shard_of[key]} and {path}: both hold {name} (two samples with one image id: a "
                                 "shard kept under two names?); remove one" if shard_of[key] != path else
                                 f"{path}: {name} twice (two samples with one image id); download it again")
            shard_of[key] = path
            samples[split].append((all_wnids[cls], name, (at, m.offset_data, m.size, TAR, None)))
        image_tree.collect(left_out, os.path.relpath(path, found.root),
                           ilsvrc.left_out(archives.hidden_tops(dotted), HIDDEN))
    if not samples["train"] or not samples["validation"]:
        raise ValueError(f"{found.root}: WebDataset shards of train and validation are both needed "
                         f"(names with {WDS_SPLITS['train'][0]} and {WDS_SPLITS['validation'][0]})")
    wnids = sorted({w for w, _, _ in samples["train"]})  # the classes train has, as a tree's train folders
    index = {w: i for i, w in enumerate(wnids)}
    stray = next((n for w, n, _ in samples["validation"] if w not in index), None)
    if stray:
        raise ValueError(f"{found.root}: validation image {stray} is of a class no train shard has")
    members = {}
    source = {"archives": found.archives, "members": members}
    splits = {}
    for split, found_samples in samples.items():
        paths = [(f"{w}/{n}" if split == "train" else n, w, loc) for w, n, loc in found_samples]  # the tree's paths
        members.update({p: loc for p, _, loc in paths})
        splits[split] = Split("", None, sorted((p, index[w]) for p, w, _ in paths), {}, False, source)
    lemmas = ilsvrc.imagenet_lemmas()
    return wnids, [lemmas.get(w, w) for w in wnids], splits, []


# ---------------------------------------------------------------------------------------------------------------
# A local snapshot of the Hub's ILSVRC/imagenet-1k: data/{train_images_N,val_images,test_images}.tar.gz, flat,
# train and val files named <original stem>_<wnid>.JPEG; the classes in classes.py.
# ---------------------------------------------------------------------------------------------------------------

def read_hub_classes(path: Path) -> dict[str, str]:
    """{wnid: description} from the snapshot's classes.py, parsed (never run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        node = next(n.value for n in tree.body if isinstance(n, ast.Assign))
        if isinstance(node, ast.Call):  # OrderedDict({...}), or OrderedDict([(wnid, name), ...])
            node = node.args[0]
        classes = ast.literal_eval(node)
        classes = dict(classes) if isinstance(classes, (list, tuple)) else classes
    except (OSError, SyntaxError, ValueError, StopIteration, IndexError, UnicodeDecodeError, TypeError) as e:
        raise ValueError(f"{path}: expected IMAGENET2012_CLASSES = OrderedDict({{wnid: name, ...}}) ({e})") from None
    if not isinstance(classes, dict) or not all(ilsvrc.is_wnid(w) for w in classes):
        raise ValueError(f"{path}: expected a dict of wnid -> class name")
    return classes


def list_hub(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    classes = read_hub_classes(Path(found.root) / HUB_CLASSES)
    wnids = sorted(classes)
    index = {w: i for i, w in enumerate(wnids)}
    members, items = {}, {split: {} for split in HUB_SPLITS}  # items: {rel: label}, a name stored twice once
    links = {path: [] for path in found.archives}
    for at, path in enumerate(found.archives):
        split = next(s for s, prefix in HUB_SPLITS.items() if os.path.basename(path).startswith(prefix))
        dotted = []
        for m, _ in archives.stream_tar(path, links[path], None, dotted):
            stem, ext = os.path.splitext(os.path.basename(m.name))
            image, _, wnid = stem.rpartition("_")
            if split == "test":
                rel, label = stem + ext, -1
            elif wnid in index:
                rel, label = (f"{wnid}/{image}{ext}" if split == "train" else image + ext), index[wnid]
            else:
                raise ValueError(f"{path}: {m.name} does not end in the wnid of a class of {HUB_CLASSES}")
            members[rel] = (at, m.offset, m.size, STREAM, None)  # the last of a name stored twice, as tar x keeps
            items[split][rel] = label
        within = os.path.relpath(path, found.root)
        image_tree.collect(left_out, within, ilsvrc.left_out(archives.hidden_tops(dotted), HIDDEN)
                           + archives.links_left_out(links[path]))
    items = {split: list(found_items.items()) for split, found_items in items.items()}
    *listing, warnings = hub_listing(found, items, members, wnids, [classes[w] for w in wnids], HUB_CLASSES,
                                     {split: f"{HUB_SPLITS[split]}*.tar.gz" for split in items})
    return *listing, warnings + [w for path, met in links.items() for w in archives.link_warnings(met, path)]


def hub_listing(found: Found, items: dict, members: dict, wnids: list[str], names: list[str], listed_in: str,
                files: dict[str, str]):
    """What both Hub layouts' listers return, from their splits' ``items`` and ``members``: train and validation
    required (``files``: each split's data/ files, for the error), a missing test split and a class without train
    images warned of, the class descriptions Kaggle's route gives."""
    for split in ("train", "validation"):
        if not items[split]:
            raise ValueError(f"{found.root}: no data/{files[split]} with images; download them too")
    source = {"archives": found.archives, "members": members}
    splits = {split: Split("", None, sorted(found_items), {}, False, source)
              for split, found_items in items.items() if found_items}
    warnings = [] if "test" in splits else [f"{found.root}: no test images; the dataset has train and validation only"]
    warnings += no_train_images(wnids, items["train"], listed_in, found.root)
    return wnids, hub_descriptions(wnids, names), splits, warnings


# ---------------------------------------------------------------------------------------------------------------
# The same repo as the Hub holds it now: Parquet files whose rows are (image {bytes, path}, label), the label a
# ClassLabel of the human names in sorted-wnid order; classes.py may be beside them. Rows are shuffled across files.
# ---------------------------------------------------------------------------------------------------------------

def hub_parquet_files(folder: Path) -> dict[str, list[Path]]:
    """{split: sorted data/<split>-*.parquet} of a folder in the Hub's Parquet layout; {} for any other folder."""
    data = Path(folder) / "data"
    if not data.is_dir():
        return {}
    found = {split: sorted(p for p in data.glob(f"{split}-*.parquet") if p.is_file()) for split in PARQUET_SPLITS}
    return {split: files for split, files in found.items() if files}


def check_parquet_set(folder: Path, parquet: dict[str, list[Path]]) -> None:
    """A ValueError naming what is missing when a split's numbered files (``<split>-NNNNN-of-MMMMM.parquet``, file N
    of M, as the Hub names them) are not all there: an interrupted or partial ``hf download`` would otherwise give
    part of a split without a word. Files named otherwise are not checked."""
    for split, files in parquet.items():
        numbered = [m for p in files if (m := re.fullmatch(rf"{split}-(\d+)-of-(\d+)\.parquet", p.name))]
        if not numbered:
            continue
        sizes = sorted({int(m[2]) for m in numbered})  # M, as each file gives it
        if len(sizes) > 1:
            raise ValueError(f"{folder}: data/{split}-*.parquet are of sets of {' and '.join(map(str, sizes))} files "
                             "(two downloads mixed); keep one set, downloading it whole")
        size, width, of = sizes[0], len(numbered[0][1]), numbered[0][2]
        stray = next((m[0] for m in numbered if int(m[1]) >= size), None)
        if stray:
            raise ValueError(f"{folder}: data/{stray} is not one of a set of {size} {split} files; remove it")
        have = {int(m[1]) for m in numbered}
        missing = [f"data/{split}-{i:0{width}d}-of-{of}.parquet" for i in range(size) if i not in have]
        if missing:
            one = len(missing) == 1
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"{folder}: {', '.join(missing[:3])}{more} {'is' if one else 'are'} missing (the set "
                             f"has {size} {split} files); download {'it' if one else 'them'}")


def hub_imagenet_wnids(names, classes: dict | None = None) -> list[str] | None:
    """The wnids (index = label) of the Hub's ILSVRC/imagenet-1k when ``names``, a ClassLabel's names, are that
    repo's: ``classes``' names (classes.py, {wnid: name}) in sorted-wnid order, or timm's 1000 ImageNet descriptions
    with the Hub's renames (HUB_RENAMED); None for any other names."""
    names = list(names)
    if classes and names == [classes[w] for w in sorted(classes)]:
        return sorted(classes)
    try:
        wnids = ilsvrc.imagenet_wnids() if len(names) == 1000 else []
        lemmas = ilsvrc.imagenet_lemmas() if wnids else {}
    except (ValueError, OSError):  # no timm to compare with
        return None
    if wnids and all(name in (lemmas.get(w), HUB_RENAMED.get(w, (None,))[0]) for w, name in zip(wnids, names)):
        return wnids
    return None


def hub_descriptions(wnids: list[str], names: list[str]) -> list[str]:
    """The Hub's class names as every other route describes the classes: its renames undone."""
    return [HUB_RENAMED[w][1] if HUB_RENAMED.get(w, (None,))[0] == n else n for w, n in zip(wnids, names)]


def hub_image_id(path: str) -> tuple[str, str, str | None]:
    """(image id, extension, wnid the name ends in or None) of a file name of the Hub's: n01440764_10026_n01440764.JPEG
    is n01440764_10026, as Kaggle's tree names it; no ImageNet file's own stem ends in _n########."""
    stem, ext = os.path.splitext(os.path.basename(path))
    found = HUB_NAME_WNID.search(stem)
    return (stem[:found.start()], ext, found.group(1)) if found else (stem, ext, None)


def parquet_label_names(schema) -> list[str] | None:
    """The label's ClassLabel names that datasets keeps in a Parquet file's schema metadata; None when absent."""
    try:
        label = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]["label"]
    except (KeyError, ValueError, TypeError):
        return None
    names = label.get("names") if isinstance(label, dict) and label.get("_type") == "ClassLabel" else None
    return list(names) if isinstance(names, list) else None


def readme_label_names(folder: Path) -> list[str] | None:
    """The label's ClassLabel names in the dataset card's ``dataset_info`` (README.md's front matter), or None."""
    import yaml  # here: only this fallback needs it

    try:
        text = (Path(folder) / "README.md").read_text(encoding="utf-8")
        info = yaml.safe_load(text.split("---", 2)[1]).get("dataset_info") if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, IndexError, AttributeError, yaml.YAMLError):
        return None
    for config in info if isinstance(info, list) else [info]:
        features = config.get("features") if isinstance(config, dict) else None
        for feature in features if isinstance(features, list) else []:
            dtype = feature.get("dtype") if isinstance(feature, dict) and feature.get("name") == "label" else None
            names = dtype.get("class_label", {}).get("names") if isinstance(dtype, dict) else None
            if isinstance(names, dict):
                return [names[k] for k in sorted(names, key=int)]
    return None


def _open_parquet(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a complete Parquet file ({type(e).__name__}: {e}); download it again"
                         ) from None


def list_hub_parquet(found: Found, left_out: list | None = None) -> tuple[list, list, dict, list]:
    """Every row's file name and label, read from the files' path and label columns (not the image bytes); each
    image located by (file, row group, row). The label is the Hub's index, in sorted-wnid order. Every row is read:
    nothing goes to ``left_out``."""
    import pyarrow as pa

    root = Path(found.root)
    check_parquet_set(root, hub_parquet_files(root))
    classes = read_hub_classes(root / HUB_CLASSES) if (root / HUB_CLASSES).is_file() else None
    opened, names = [], None
    for path in found.archives:
        pf = _open_parquet(path)
        schema = pf.schema_arrow
        image = schema.field("image").type if "image" in schema.names else None
        if "label" not in schema.names or not pa.types.is_struct(image) or \
                not {"bytes", "path"} <= {image.field(i).name for i in range(image.num_fields)}:
            raise ValueError(f"{path}: expected the columns image {{bytes, path}} and label, as the Hub's "
                             f"ILSVRC/imagenet-1k has them; it has {schema.names}")
        here = parquet_label_names(schema)
        if here is not None and names is not None and here != names:
            raise ValueError(f"{path}: its label names differ from {found.archives[0]}'s; download it again")
        names = here if here is not None else names
        opened.append(pf)
    names = names if names is not None else readme_label_names(root)
    wnids = hub_imagenet_wnids(names or [], classes)
    if wnids is None:
        shown = f"label names {names[:2]}..." if names else "no label names (no ClassLabel in the files or README.md)"
        raise ValueError(f"{root}: Parquet in the Hub's layout, but not ILSVRC/imagenet-1k's ({shown}, not "
                         f"{'those of ' + HUB_CLASSES if classes else 'its 1000 class names'}); train.py and "
                         "validate.py --dataset read such a folder as it is, no preprocessing needed")
    members, items = {}, {split: [] for split in PARQUET_SPLITS}
    for at, (path, pf) in enumerate(zip(found.archives, opened)):
        split = next(s for s in PARQUET_SPLITS if os.path.basename(path).startswith(f"{s}-"))
        for group in range(pf.metadata.num_row_groups):
            try:
                table = pf.read_row_group(group, columns=["image.path", "label"])
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{path}: row group {group} does not read ({type(e).__name__}: {e}); download it "
                                 "again") from None
            file_names = [c for chunk in table.column("image").chunks for c in chunk.field("path").to_pylist()]
            labels = table.column("label").to_pylist()
            for row, (name, label) in enumerate(zip(file_names, labels)):
                where = f"{path}: row {row} of row group {group}"
                if not name:
                    raise ValueError(f"{where} has no image.path (the file name that gives the image id)")
                image_id, ext, named = hub_image_id(name)
                if split == "test":
                    rel, label = image_id + ext, -1
                elif not isinstance(label, int) or not 0 <= label < len(wnids):
                    raise ValueError(f"{where} ({name}) has label {label}, not one of the {len(wnids)} classes")
                elif named is not None and named != wnids[label]:
                    raise ValueError(f"{where}: {name} is of class {named}, but its label {label} is "
                                     f"{wnids[label]}; download the file again")
                else:
                    rel = f"{wnids[label]}/{image_id}{ext}" if split == "train" else image_id + ext
                if rel in members:
                    raise ValueError(f"{where}: a second image {rel} (two rows with one image id)")
                members[rel] = (at, (group, row), len(labels), PARQUET, None)
                items[split].append((rel, label))
    return hub_listing(found, items, members, wnids, names, HUB_CLASSES if classes else "the label names",
                       {split: f"{split}-*.parquet" for split in items})


def no_train_images(wnids: list[str], train: list[tuple[str, int]], listed_in: str, where) -> list[str]:
    """The warning every route gives for classes with no train image (a class the model would never see)."""
    seen = {label for _, label in train}
    missing = [w for i, w in enumerate(wnids) if i not in seen]
    return [f"{len(missing)} classes of {listed_in} have no train images in {where}, e.g. {missing[0]}"] if missing \
        else []


LISTERS = {KAGGLE_ZIP: list_kaggle_zip, KAGGLE_TGZ: list_kaggle_tgz, IMAGENET_ORG: list_imagenet_org,
           WEBDATASET: list_webdataset, HUB: list_hub, HUB_PARQUET: list_hub_parquet}
