"""Reading ILSVRC-2012 CLS-LOC as Kaggle ships it (``imagenet-object-localization-challenge``): folders, CSVs, XML.

Pure parsing, no image decoding; preprocess.py and the demo tree builder share it. Facts it relies on (read from
the Kaggle files unless cited): labels are the sorted wnids (n01440764 = 0, as torchvision's ImageFolder and timm's
``timm/data/_info/imagenet_synsets.txt`` number them); ``LOC_synset_mapping.txt`` lines are
``n01440764 tench, Tinca tinca`` and the names are not unique ("crane" twice); ``LOC_*_solution.csv`` rows are
``ImageId,PredictionString`` with repeated ``wnid xmin ymin xmax ymax`` groups; the val label is the first wnid;
the per-image PASCAL VOC XML files have float coordinates, boxes past the image edge or with min > max,
``<filename>%s</filename>`` and human names instead of wnids (tensorflow/models ``process_bounding_boxes.py``).
Library code: bad input is a ``ValueError`` that names the file (and line).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

# Paths inside the folder Kaggle's zip unzips to.
SPLIT_DIRS = {"train": "ILSVRC/Data/CLS-LOC/train", "validation": "ILSVRC/Data/CLS-LOC/val",
              "test": "ILSVRC/Data/CLS-LOC/test"}
ANNOTATION_DIRS = {"train": "ILSVRC/Annotations/CLS-LOC/train", "validation": "ILSVRC/Annotations/CLS-LOC/val"}
IMAGESETS_DIR = "ILSVRC/ImageSets/CLS-LOC"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
TRAIN_SOLUTION = "LOC_train_solution.csv"
VAL_SOLUTION = "LOC_val_solution.csv"
FULL_COUNTS = {"train": 1_281_167, "validation": 50_000, "test": 100_000}  # ILSVRC-2012, 1000 classes
# Files read as images (others are strays, left out and reported): torchvision ImageFolder's IMG_EXTENSIONS (its
# .ppm and .pgm: GTSRB ships .ppm) and the rest Pillow decodes of those formats; all but JPEGs are re-encoded
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                    ".pnm")
DESCRIPTIONS_FILE = "class_descriptions.json"  # written by preprocess.py beside the DatasetDict
DESCRIPTIONS_KEY = "class_descriptions"  # key in DatasetInfo.description (a JSON object) holding the same list


def timm_info_file(name: str) -> Path:
    """A file of timm's offline ImageNet metadata (``timm/data/_info``), found without importing timm (and torch)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("timm is not installed; it ships the offline ImageNet synset lists")
    return Path(spec.submodule_search_locations[0]) / "data" / "_info" / name


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in sorted (= label) order, from timm's ``imagenet_synsets.txt``."""
    return sorted(timm_info_file("imagenet_synsets.txt").read_text().split())


def imagenet_lemmas() -> dict[str, str]:
    """wnid -> human name (``tench, Tinca tinca``) for every synset in timm's ``imagenet_synset_to_lemma.txt``."""
    lemmas = {}
    for line in timm_info_file("imagenet_synset_to_lemma.txt").read_text().splitlines():
        wnid, _, lemma = line.partition("\t")
        if wnid:
            lemmas[wnid] = lemma.strip()
    return lemmas


def read_text(path) -> str:
    """A UTF-8 text file (a leading BOM is fine); unreadable or undecodable files are a ValueError naming them."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None


def read_synset_mapping(path, text: str | None = None) -> tuple[list[str], list[str]]:
    """(wnids, descriptions) from ``LOC_synset_mapping.txt``, sorted by wnid so index = label. ``text``: its
    contents when read from an archive (``path`` then only names it in errors)."""
    pairs = []
    for lineno, line in enumerate((read_text(path) if text is None else text).splitlines(), 1):
        if not line.strip():
            continue
        wnid, description = (line.split(None, 1) + [""])[:2]  # a space in Kaggle's file; a tab is fine too
        if not is_wnid(wnid):
            raise ValueError(f"{path}:{lineno}: expected 'nXXXXXXXX description', got {line[:60]!r}")
        pairs.append((wnid, description.strip()))
    if not pairs:
        raise ValueError(f"{path}: no synsets in it")
    wnids = [w for w, _ in pairs]
    if len(set(wnids)) != len(wnids):
        twice = next(w for w in wnids if wnids.count(w) > 1)
        raise ValueError(f"{path}: {twice} is listed twice")
    pairs.sort()
    return [w for w, _ in pairs], [d for _, d in pairs]


def read_solution_csv(path, known_wnids, text: str | None = None) -> dict[str, list[tuple]]:
    """ImageId -> [(wnid, xmin, ymin, xmax, ymax), ...] from ``LOC_{train,val}_solution.csv``, in file order.
    ``text``: its contents when read from an archive (``path`` then only names it in errors)."""
    known = set(known_wnids)
    rows = {}
    reader = csv.reader(io.StringIO(read_text(path) if text is None else text, newline=""))
    header = next(reader, None)
    if header != ["ImageId", "PredictionString"]:
        raise ValueError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header}")
    for lineno, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != 2:
            raise ValueError(f"{path}:{lineno}: expected 2 columns, got {len(row)}")
        tokens = row[1].split()
        if not tokens or len(tokens) % 5:
            raise ValueError(f"{path}:{lineno}: PredictionString must be groups of 'wnid xmin ymin xmax ymax'")
        boxes = []
        for i in range(0, len(tokens), 5):
            wnid = tokens[i]
            if wnid not in known:
                raise ValueError(f"{path}:{lineno}: unknown wnid {wnid!r} (not in {SYNSET_MAPPING})")
            try:
                boxes.append((wnid, *(float(t) for t in tokens[i + 1:i + 5])))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: non-numeric box coordinate in {row[1][:60]!r}") from None
        if rows.get(row[0], boxes) != boxes:  # the label is the first wnid: which row would be right is a guess
            raise ValueError(f"{path}:{lineno}: {row[0]} is listed twice with different boxes; keep one row")
        rows[row[0]] = boxes
    return rows


def read_voc_xml(path, data: bytes | None = None) -> list[tuple]:
    """[(name, xmin, ymin, xmax, ymax), ...] of a PASCAL VOC annotation, coordinates as floats; ``data``: the
    file's bytes when read from an archive (``path`` then only names it in errors).

    ``<filename>`` is ignored (some files say ``%s``): the XML's own file name is the image id. ``name`` is what the
    file says, usually a wnid, sometimes a human name (see ``label_lookup``).
    """
    try:
        root = ET.parse(path if data is None else io.BytesIO(data)).getroot()
    except (ET.ParseError, LookupError, ValueError) as e:  # expat's errors for a declared encoding it cannot use:
        # LookupError (unknown: "ISO-8859-1x", or "rot13"), ValueError ("utf-32": multi-byte), UnicodeError ("idna")
        raise ValueError(f"{path}: not valid XML ({e})") from None
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: an <object> without a numeric <bndbox>") from None
        boxes.append((name, *coords))
    return boxes


def is_wnid(name: str) -> bool:
    """n01440764-style WordNet id."""
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def label_lookup(wnids, descriptions) -> dict[str, int]:
    """Box name -> label index: every wnid, plus each human name (whole description or one comma-separated lemma,
    lowercased) that points at exactly one class. Ambiguous names ("crane") are left out, so they cannot mislabel."""
    lookup = {w: i for i, w in enumerate(wnids)}
    by_name: dict[str, set] = {}
    for i, description in enumerate(descriptions):
        for name in {description, *description.split(",")}:
            by_name.setdefault(name.strip().lower(), set()).add(i)
    for name, labels in by_name.items():
        if name and len(labels) == 1:
            lookup.setdefault(name, labels.pop())
    return lookup


GONE = "their target is gone"  # scan's reason for a link to nothing, said of several in broken_link_warnings


def scan(folder) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(files, folders, broken links) directly in ``folder``, each sorted by name, hidden entries left out. A broken
    link, (name, why), is a link whose target is gone or cannot be reached (a loop of links): neither a file nor a
    folder, and never fatal; its caller warns (``broken_link_warnings``)."""
    files, folders, broken = [], [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                if e.is_symlink():
                    os.stat(e.path)  # raises for a link whose target is gone or that loops
                if e.is_file():
                    files.append(e.name)
                elif e.is_dir():
                    folders.append(e.name)
            except OSError as err:
                why = GONE if isinstance(err, FileNotFoundError) else (err.strerror or str(err))
                broken.append((e.name, why[0].lower() + why[1:]))
    return sorted(files), sorted(folders), sorted(broken)


def broken_link_warnings(broken, folder) -> list[str]:
    """One warning per reason for the broken links ``scan`` found, their names relative to ``folder``."""
    by_why = {}
    for name, why in broken:
        by_why.setdefault(why, []).append(name)
    return [f"{len(names)} broken links ({why}) in {folder} left out, e.g. {names[0]}"
            for why, names in sorted(by_why.items())]


def broken_links_left_out(broken) -> list[dict]:
    """preprocess_report.json's ``left_out`` entries of the broken links ``scan`` found, one per link."""
    return [{"path": name, "reason": "a broken link: " + ("its target is gone" if why == GONE else why)}
            for name, why in broken]


def left_out(paths, reason: str) -> list[dict]:
    """preprocess_report.json's ``left_out`` entries of ``paths``, all for one ``reason``."""
    return [{"path": path, "reason": reason} for path in paths]


def folder_warnings(folders, folder, read: str) -> list[str]:
    """One warning for the folders ``list_images`` found among image files, named relative to ``folder``: a folder
    named like an image, or a subfolder of images, is not read (``read``: where images are read, for the warning)."""
    if not folders:
        return []
    return [f"{len(folders)} folders among the images of {folder} left out (images are read only as files directly "
            f"in {read}), e.g. {folders[0]}"]


def list_images(folder, images_only: bool = False) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(sorted names of the files in ``folder``, hidden files left out; its broken links, as ``scan`` gives them; its
    folders, which are not read: the caller warns, ``folder_warnings``).
    os.scandir, not datasets' imagefolder: the latter spends ~50 min resolving ImageNet's files (datasets #6359).
    File names must be UTF-8 (they are stored as Arrow strings) and stems unique (the stem is the image id); either
    failing is a ValueError naming the file. ``images_only``: the caller reads only the files with an image extension,
    so only their stems must be unique (a phone's IMG_0001.AAE edit file beside IMG_0001.JPG is a stray, not a twin)."""
    names, folders, broken = scan(folder)
    stems = {}
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # repr: the undecodable byte shows as \udcXX, which print() cannot encode
            raise ValueError(f"{os.path.join(folder, name)!r}: the file name is not valid UTF-8; rename it") from None
        if images_only and not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise ValueError(f"{Path(folder) / stems[stem]} and {name}: two files with one image id; remove one")
        stems[stem] = name
    return names, broken, folders


def list_train_images(train_dir, wnids) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]],
                                                 list[str], list[str], list[tuple[str, str]]]:
    """([("<wnid>/<file>", label), ...] sorted, [wnids without a folder or with no file in it], broken links as
    ``scan`` gives them, ["<wnid>/<folder>", ...], the folders inside class folders, which are not read: a class whose
    files are all in them counts as empty; [files directly in ``train_dir``], not read either: no class folder names
    their label; [(wnid, the wnid listed already), ...], class folders that are a folder listed already (a link),
    not read: the same images under a second label) for the per-class train folders, named relative to
    ``train_dir``. The folders are read in sorted order, so of two names for one folder the first is read."""
    index = {w: i for i, w in enumerate(wnids)}
    loose, folders, broken = scan(train_dir)
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ValueError(f"{Path(train_dir) / unknown[0]}: folder of unknown wnid {unknown[0]!r} "
                         f"(not in {SYNSET_MAPPING}; {len(unknown)} such folders)")
    items, nested, seen, linked = [], [], {}, []
    for wnid in folders:
        real = os.path.realpath(Path(train_dir) / wnid)
        if real in seen:  # as image_tree.list_classes: stored twice, every image would have two labels
            linked.append((wnid, seen[real]))
            continue
        seen[real] = wnid
        names, links, inside = list_images(Path(train_dir) / wnid)
        items += [(f"{wnid}/{name}", index[wnid]) for name in names]
        broken += [(f"{wnid}/{name}", why) for name, why in links]
        nested += [f"{wnid}/{name}" for name in inside]
    found = {rel.split("/", 1)[0] for rel, _ in items}
    return items, [w for w in wnids if w not in found], broken, nested, loose, linked


def orient_box(box, orientation: int, width: int, height: int) -> tuple:
    """(xmin, ymin, xmax, ymax) in stored-pixel coordinates -> the same box after the EXIF orientation is applied
    the way ``PIL.ImageOps.exif_transpose`` applies it. ``width``/``height`` are the stored (un-rotated) sizes."""
    x0, y0, x1, y1 = box
    w, h = width, height
    mapping = {  # where a point (x, y) lands; orientations 5-8 swap the axes
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),          # FLIP_LEFT_RIGHT
        3: lambda x, y: (w - x, h - y),      # ROTATE_180
        4: lambda x, y: (x, h - y),          # FLIP_TOP_BOTTOM
        5: lambda x, y: (y, x),              # TRANSPOSE
        6: lambda x, y: (h - y, x),          # ROTATE_270 (90 degrees clockwise)
        7: lambda x, y: (h - y, w - x),      # TRANSVERSE
        8: lambda x, y: (y, w - x),          # ROTATE_90 (counter-clockwise)
    }
    if orientation not in mapping:
        raise ValueError(f"EXIF orientation must be 1-8, got {orientation}")
    (ax, ay), (bx, by) = mapping[orientation](x0, y0), mapping[orientation](x1, y1)
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def clip_box(box, width: int, height: int) -> tuple[tuple | None, str]:
    """(box or None, status): status is "ok", "clipped" (moved inside the image), "inverted" (min > max, dropped:
    swapping would guess), "empty" (no area left inside the image, dropped) or "nan" (a NaN coordinate, dropped)."""
    x0, y0, x1, y1 = box
    if any(math.isnan(v) for v in box):  # every comparison with NaN is False: it would pass the checks below
        return None, "nan"
    if x0 > x1 or y0 > y1:
        return None, "inverted"
    clipped = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
               min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, "empty"
    return clipped, ("ok" if tuple(clipped) == tuple(box) else "clipped")


def class_descriptions(dataset_or_path) -> list[str]:
    """Human-readable class names in label order for a preprocess.py output (path, DatasetDict or Dataset).

    Looks, in order, at ``class_descriptions.json`` beside a saved DatasetDict, the JSON in
    ``DatasetInfo.description``, timm's lemma file when the ClassLabel names are ImageNet wnids (Hub copies), and
    finally the ClassLabel names themselves (datasets whose names are already human-readable).
    """
    import datasets  # here, not at the top: the parsing above must stay importable without it

    ds = dataset_or_path
    if isinstance(ds, (str, os.PathLike)):
        path = Path(ds)
        if (path / DESCRIPTIONS_FILE).is_file():
            return json.loads((path / DESCRIPTIONS_FILE).read_text())
        ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if not ds:
            raise ValueError("class_descriptions: the DatasetDict has no splits")
        ds = next(iter(ds.values()))
    label = ds.features.get("label")
    if not isinstance(label, datasets.ClassLabel):
        raise ValueError(f"class_descriptions: expected a ClassLabel column 'label', got {label!r}")
    try:
        stored = json.loads(ds.info.description or "")[DESCRIPTIONS_KEY]
    except (ValueError, TypeError, KeyError):
        stored = None
    if isinstance(stored, list) and len(stored) == label.num_classes:
        return stored
    lemmas = imagenet_lemmas()
    if all(name in lemmas for name in label.names):
        return [lemmas[name] for name in label.names]
    return list(label.names)
