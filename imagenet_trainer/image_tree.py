"""Listing the input trees preprocess.py reads: Kaggle's ILSVRC tree (list_ilsvrc_splits, over ilsvrc.py's file
readers) and a class-per-folder image tree of a user's own images (list_splits). In: a folder. Out: the class names
and, per split, the image files with their labels (Split), plus warnings. Archives (archives.py) and evaluation sets
(eval_sets.py) give the same.

Two class-folder layouts, told apart by the top-level folders:

- ``class-folders``: ``train/<class>/<image>`` with ``val/`` or ``validation/`` and/or ``test/`` beside it, each
  of class folders too (a ``test/`` of loose files is read unlabelled, label -1, as ILSVRC's is);
- ``class-folders-split``: ``<class>/<image>`` (or ``train/<class>/<image>`` alone) with ``--val_fraction F``: a
  seeded, stratified split, so every class with two or more images has at least one in each split.

Label names are the sorted class-folder names of the training images, hidden folders left out (torchvision's
ImageFolder numbers them the same way only where there are none: it keeps a hidden folder, ``.ipynb_checkpoints``
becomes its class 0). Only files directly in a class folder are read, with an image file extension; others are
counted and reported, hidden ones (``.DS_Store``, ``._*``) too. Library code: bad input is a ``ValueError`` that
names the folder and what to do.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import NamedTuple

from imagenet_trainer import ilsvrc

ILSVRC = "ilsvrc-kaggle"
CLASS_FOLDERS = "class-folders"
CLASS_FOLDERS_SPLIT = "class-folders-split"
ACCEPTED = ("Kaggle's ILSVRC tree (LOC_synset_mapping.txt, ILSVRC/Data/CLS-LOC/), a class-per-folder tree with "
            "train/ and val/ (or validation/, test/), or one class-per-folder tree (<class>/<image>) with "
            "--val_fraction F")
VAL_NAMES = ("val", "validation")


class Split(NamedTuple):
    image_dir: str  # relative to data_dir ("" = data_dir itself)
    annotation_dir: str | None  # relative to data_dir; None when there are no XML files for this split
    items: list  # [(path relative to image_dir, label), ...] sorted
    csv_boxes: dict  # stem -> [(wnid, xmin, ymin, xmax, ymax)], the fallback for images without XML (val)
    ids_with_folder: bool = False  # image_id = "<class>/<stem>": a user's file stems repeat across classes
    source: dict | None = None  # paths inside archives -> where their bytes lie (imagenet_trainer/archives.py)


def hidden(path: str) -> bool:
    """Whether the file at ``path`` ("/"-separated, relative: an archive member's name) is one the tree route leaves
    out: ilsvrc.scan skips every entry whose name starts with ".", so a hidden file, or any file below a hidden
    folder. That covers macOS's AppleDouble ``._*`` files (all that ``__MACOSX/`` holds) and ``.DS_Store``; "." and
    ".." (a tar's leading ``./``) are no names."""
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))


HIDDEN = 'hidden: its name starts with "." (macOS\'s .DS_Store and ._* files, Jupyter\'s .ipynb_checkpoints/)'


def hidden_in(folder) -> list[str]:
    """The names in ``folder`` that ilsvrc.scan passes over, those starting with ".", sorted: a hidden folder is one
    name, its contents unread. A second listing of the folder, made only where a report collects ``left_out``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.startswith("."))


def hidden_warnings(left_out: list | None, where) -> list[str]:
    """One line for the hidden entries in ``left_out`` (a few per class is usual: each is listed in the report)."""
    found = [e["path"] for e in left_out or () if e["reason"] == HIDDEN]
    return [f"{len(found)} hidden files and folders (names starting with \".\": .DS_Store, ._*, .ipynb_checkpoints) "
            f"in {where} left out, e.g. {min(found)}"] if found else []


def _subfolders(folder: Path) -> list[str]:
    return ilsvrc.scan(folder)[1]


def _has_images(folder: Path) -> bool:
    return any(name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS) for name in ilsvrc.scan(folder)[0])


def kaggle_root_above(data_dir: Path) -> Path | None:
    """The folder Kaggle's zip unzips to (it holds LOC_synset_mapping.txt), where ``data_dir`` is its ILSVRC/ or a
    folder inside it: ILSVRC/Data/CLS-LOC (the folder timm's and torchvision's guides read), its train/ (a tree of
    class folders, whose val/ beside it would be lost) or val/; else None."""
    for root in data_dir.parents:
        if (root / ilsvrc.SYNSET_MAPPING).is_file() and root / "ILSVRC" in (data_dir, *data_dir.parents):
            return root
    return None


def check_not_inside_kaggle(data_dir: Path) -> None:
    """A ValueError naming what to pass when ``data_dir`` is part of Kaggle's tree that cannot be read alone: its
    ILSVRC/ or ILSVRC/Data, or its CLS-LOC with val/ as Kaggle ships it, flat (labelled by LOC_val_solution.csv
    above). A CLS-LOC whose val/ was sorted into class folders (valprep.sh) is a tree of class folders: read."""
    flat_val = (data_dir / "val").is_dir() and _has_images(data_dir / "val")
    root = kaggle_root_above(data_dir)
    if root is not None and (flat_val or not (data_dir / "train").is_dir()):
        raise ValueError(f"--data_dir {data_dir} is inside Kaggle's ILSVRC tree, which is read whole (val labels "
                         f"from {ilsvrc.VAL_SOLUTION}, boxes from ILSVRC/Annotations): pass --data_dir {root}")
    if root is None and flat_val and data_dir.parts[-3:] == ("ILSVRC", "Data", "CLS-LOC"):
        raise ValueError(f"--data_dir {data_dir} is Kaggle's ILSVRC/Data/CLS-LOC, whose flat val/ is labelled by "
                         f"{ilsvrc.VAL_SOLUTION} beside ILSVRC/, not found above it: pass --data_dir the folder "
                         f"that holds {ilsvrc.SYNSET_MAPPING}, {ilsvrc.VAL_SOLUTION} and ILSVRC/")


def detect_layout(data_dir: Path, val_fraction: float | None) -> str:
    """Which of the accepted layouts ``data_dir`` is; a ValueError naming them when it is none."""
    if not data_dir.is_dir():
        raise ValueError(f"--data_dir {data_dir}: " + ("a file, where a folder is needed" if data_dir.exists() else
                                                       "no such file or folder"))
    if (data_dir / ilsvrc.SYNSET_MAPPING).exists() or (data_dir / "ILSVRC").exists():
        return ILSVRC
    check_not_inside_kaggle(data_dir)  # CLS-LOC/ looks like a tree of train/ and val/; Kaggle's val/ is not one
    folders = _subfolders(data_dir)
    if "train" in folders:
        held_out = [f for f in (*VAL_NAMES, "test") if f in folders]
        if val_fraction is not None:
            if held_out:
                raise ValueError(f"--val_fraction: {data_dir} already has {held_out[0]}/; drop --val_fraction")
            return CLASS_FOLDERS_SPLIT
        if not held_out:
            raise ValueError(f"{data_dir / 'train'}: no val/, validation/ or test/ beside it; add one, or add "
                             "--val_fraction 0.1 to split one off train/")
        return CLASS_FOLDERS
    if folders and any(_has_images(data_dir / f) for f in folders):
        if val_fraction is None:
            raise ValueError(f"{data_dir}: one class-per-folder tree without train/ and val/; add --val_fraction "
                             "0.1 to hold out a seeded, stratified 10% of each class for validation")
        return CLASS_FOLDERS_SPLIT
    from imagenet_trainer import archive_layouts  # it imports this module

    hint = archive_layouts.unrecognised(data_dir)  # a download renamed, or a part of one: say what to pass
    if hint and not folders:
        raise ValueError(f"--data_dir {data_dir}: not a layout preprocess.py reads; {hint}")
    # folders beside the archives may be a tree one level too deep: the trees taken are named too
    more = ", ..." if len(folders) > 3 else ""
    shown = f" (its folders, {', '.join(folders[:3])}{more}, hold no image files directly)" if folders else ""
    raise ValueError(f"--data_dir {data_dir}: not a layout preprocess.py reads; it takes {ACCEPTED}{shown}"
                     + (f"; {hint}" if hint else ""))


def list_classes(folder: Path, left_out: list | None = None, where: str = ""
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """({class: [image file names, sorted]}, warnings) for ``folder/<class>/<file>``. ``left_out``: a list that gets
    preprocess_report.json's entry of each file and folder not read, its path under ``where`` (``folder`` relative
    to --data_dir)."""
    classes = {}
    strays, nested, seen, links = [], [], {}, []
    loose, broken, _ = ilsvrc.list_images(folder)
    dotted = hidden_in(folder) if left_out is not None else []
    for name in _subfolders(folder):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # repr: the undecodable byte shows as \udcXX, which print() cannot encode
            raise ValueError(f"{str(folder / name)!r}: the folder name is not valid UTF-8; rename it") from None
        real = os.path.realpath(folder / name)
        if real in seen:  # a link to a class folder listed already: the same images under a second label
            links.append((name, seen[real]))
            continue
        seen[real] = name
        files, bad, inside = ilsvrc.list_images(folder / name, images_only=True)
        broken += [(f"{name}/{file}", why) for file, why in bad]
        nested += [f"{name}/{sub}" for sub in inside]
        classes[name] = [f for f in files if f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
        strays += [f"{name}/{f}" for f in files if not f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
        dotted += [f"{name}/{f}" for f in hidden_in(folder / name)] if left_out is not None else []
    warnings = []
    if loose:
        warnings.append(f"{len(loose)} files directly in {folder} left out (images go in a class folder), "
                        f"e.g. {loose[0]}")
    if strays:
        warnings.append(f"{len(strays)} files without an image extension in {folder} left out, e.g. {strays[0]}")
    warnings += ilsvrc.folder_warnings(nested, folder, "a class folder")
    warnings += linked_warnings(links, folder)
    collect(left_out, where, ilsvrc.left_out(loose, OUTSIDE_CLASSES) + ilsvrc.left_out(strays, NOT_IMAGE)
            + ilsvrc.left_out(nested, folder_reason("a class folder")) + linked_left_out(links)
            + ilsvrc.broken_links_left_out(broken) + ilsvrc.left_out(dotted, HIDDEN))
    return classes, warnings + ilsvrc.broken_link_warnings(broken, folder)


OUTSIDE_CLASSES = "outside the class folders: no folder names its label"
NOT_IMAGE = "no image file extension"


def folder_reason(read: str) -> str:
    return f"a folder among the images (images are read only as files directly in {read})"


def collect(left_out: list | None, where: str, entries: list[dict]) -> None:
    """``entries`` (paths relative to the folder at ``where``, itself relative to --data_dir) into ``left_out``
    with paths relative to --data_dir, as preprocess_report.json names files; nothing where it is None."""
    if left_out is not None:
        left_out += [{**e, "path": f"{where}/{e['path']}" if where else e["path"]} for e in entries]


def collect_hidden(left_out: list | None, data_dir: Path, folders) -> None:
    """The hidden entries (``hidden_in``) of each of ``folders``, relative to ``data_dir``, into ``left_out``."""
    if left_out is not None:
        collect(left_out, "", [{"path": f"{rel}/{name}", "reason": HIDDEN} for rel in folders
                               for name in hidden_in(data_dir / rel)])


def linked_warnings(links, folder) -> list[str]:
    """One warning for the class folders of ``folder`` that are a folder listed already (a link): (name, that
    folder's name) each; read once, under the first name."""
    if not links:
        return []
    return [f"{len(links)} folders in {folder} are the same folder as a class listed already, not listed twice: "
            + ", ".join(f"{name} -> {first}" for name, first in links[:3])]


def linked_left_out(links) -> list[dict]:
    return [{"path": name, "reason": f"the same folder as {first}, listed already: its images would be stored "
             "twice, under two labels"} for name, first in links]


def stratified_split(classes: dict[str, list[str]], fraction: float, seed: int) -> tuple[dict, dict]:
    """({class: train files}, {class: val files}): n x fraction of each class's n files, rounded half up, at least
    one and never all when it has two or more, drawn by a generator seeded with (seed, class), so adding a class
    leaves the others' splits as they were."""
    train, val = {}, {}
    for name, files in classes.items():
        n = len(files)
        k = min(n - 1, max(1, math.floor(n * fraction + 0.5))) if n >= 2 else 0
        chosen = set(random.Random(f"{seed}/{name}").sample(files, k))
        train[name] = [f for f in files if f not in chosen]
        val[name] = [f for f in files if f in chosen]
    return train, val


def _items(classes: dict[str, list[str]], index: dict[str, int], folder: Path) -> list[tuple[str, int]]:
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise ValueError(f"{folder / unknown[0]}: class folder {unknown[0]!r} is not in train/ (the model could "
                         f"not learn it); rename or remove it ({len(unknown)} such folders)")
    return [(f"{c}/{f}", index[c]) for c in classes for f in classes[c]]


def list_splits(data_dir: Path, layout: str, val_fraction: float | None, seed: int, one_tree: bool = False,
                left_out: list | None = None) -> tuple[list[str], dict[str, Split], list[str]]:
    """(class names, {split: Split}, warnings) of a ``class-folders`` or ``class-folders-split`` tree;
    ``one_tree`` (--layout folders): data_dir's folders are the classes, a ``train`` among them too. ``left_out``:
    a list that gets preprocess_report.json's entry of each file and folder not read."""
    root = "train" if (data_dir / "train").is_dir() and not one_tree else ""
    classes, warnings = list_classes(data_dir / root, left_out, root)
    names = sorted(classes)
    if not names:
        raise ValueError(f"{data_dir / root}: no class folders (expected <class>/<image> in it)")
    index = {c: i for i, c in enumerate(names)}
    held = {}
    if layout == CLASS_FOLDERS_SPLIT:
        classes, val = stratified_split(classes, val_fraction, seed)
        held["validation"] = (root, val)
    else:
        present = [v for v in VAL_NAMES if (data_dir / v).is_dir()]
        if len(present) > 1:
            raise ValueError(f"{data_dir}: both val/ and validation/; keep one")
        for split, folder in (("validation", present[0] if present else None), ("test", "test")):
            if folder is None or not (data_dir / folder).is_dir():
                continue
            if split == "test" and not _subfolders(data_dir / folder):  # loose files: unlabelled, as ILSVRC's
                held[split] = (folder, None)
                continue
            if split == "validation" and _has_images(data_dir / folder):
                raise ValueError(f"{data_dir / folder}: images outside class folders have no label; move them into "
                                 f"{data_dir / folder}/<class>/")
            found, more = list_classes(data_dir / folder, left_out, folder)
            held[split] = (folder, found)
            warnings += more
    splits = {"train": Split(root, None, _items(classes, index, data_dir / root), {}, True)}
    for split, (folder, found) in held.items():
        if found is None:
            files, broken, _ = ilsvrc.list_images(data_dir / folder, images_only=True)  # no folders: classes
            strays = [f for f in files if not f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]  # a README.txt
            if strays:
                warnings.append(f"{len(strays)} non-image files in {data_dir / folder} left out, e.g. {strays[0]}")
            warnings += ilsvrc.broken_link_warnings(broken, data_dir / folder)
            collect(left_out, folder, ilsvrc.left_out(strays, NOT_IMAGE) + ilsvrc.broken_links_left_out(broken))
            collect_hidden(left_out, data_dir, [folder])
            splits[split] = Split(folder, None, [(f, -1) for f in files if f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)],
                                  {})
        elif layout == CLASS_FOLDERS_SPLIT:
            splits[split] = Split(root, None, _items(found, index, data_dir / root), {}, True)
        else:
            splits[split] = Split(folder, None, _items(found, index, data_dir / folder), {}, True)
    empty = [c for c in names if not classes[c]]
    if empty:
        warnings.append(f"{len(empty)} class folders of {data_dir / root} have no train images, e.g. {empty[0]}")
    for split, s in splits.items():
        if not s.items:
            raise ValueError(f"{data_dir / (s.image_dir or root)}: no images, the {split} split would be empty")
    return names, splits, warnings


def list_ilsvrc_splits(data_dir: Path, left_out: list | None = None
                       ) -> tuple[list[str], list[str], dict[str, Split], list[str]]:
    """(wnids, descriptions, {split: Split}, warnings) of Kaggle's tree. ``left_out``: a list that gets
    preprocess_report.json's entry of each file and folder not read."""
    hint = "is --data_dir the folder Kaggle's imagenet-object-localization-challenge zip unzips to?"
    for rel in (ilsvrc.SYNSET_MAPPING, ilsvrc.VAL_SOLUTION, *(ilsvrc.SPLIT_DIRS[s] for s in ("train", "validation"))):
        if not (data_dir / rel).exists():
            raise ValueError(f"{data_dir / rel}: not found ({hint})")
    wnids, descriptions = ilsvrc.read_synset_mapping(data_dir / ilsvrc.SYNSET_MAPPING)
    warnings = []
    annotation_dirs = {}
    for split, rel in ilsvrc.ANNOTATION_DIRS.items():
        if (data_dir / rel).is_dir():
            annotation_dirs[split] = rel
        else:
            warnings.append(f"{data_dir / rel}: not found, " + ("train images get no boxes" if split == "train" else
                                                                 f"{split} boxes come from {ilsvrc.VAL_SOLUTION} only"))

    train_dir, train_rel = data_dir / ilsvrc.SPLIT_DIRS["train"], ilsvrc.SPLIT_DIRS["train"]
    train, missing, broken, nested, loose, linked = ilsvrc.list_train_images(train_dir, wnids)
    if loose:
        warnings.append(f"{len(loose)} files directly in {train_dir} left out (train images go in "
                        f"{train_rel}/<wnid>/), e.g. {loose[0]}")
    warnings += linked_warnings(linked, train_dir)
    collect(left_out, train_rel, ilsvrc.left_out(loose, OUTSIDE_CLASSES) + linked_left_out(linked))
    broken = [(f"{train_rel}/{name}", why) for name, why in broken]
    nested = [f"{train_rel}/{name}" for name in nested]
    if missing:
        warnings.append(f"{len(missing)} classes of {ilsvrc.SYNSET_MAPPING} have no train images (no folder, an "
                        f"empty one, or files only in subfolders), e.g. {missing[0]}")

    val, val_csv, strays = _ilsvrc_val(data_dir, wnids, broken, nested, warnings)
    collect(left_out, ilsvrc.SPLIT_DIRS["validation"],
            ilsvrc.left_out(strays, f"{NOT_IMAGE} and no row in {ilsvrc.VAL_SOLUTION}"))
    splits = {
        "train": Split(train_rel, annotation_dirs.get("train"), train, {}),
        "validation": Split(ilsvrc.SPLIT_DIRS["validation"], annotation_dirs.get("validation"), val, val_csv),
    }
    test_dir = data_dir / ilsvrc.SPLIT_DIRS["test"]
    test_files, links, inside = ilsvrc.list_images(test_dir, images_only=True) if test_dir.is_dir() else ([], [], [])
    broken += [(f"{ilsvrc.SPLIT_DIRS['test']}/{name}", why) for name, why in links]
    nested += [f"{ilsvrc.SPLIT_DIRS['test']}/{name}" for name in inside]
    warnings += ilsvrc.broken_link_warnings(broken, data_dir)
    read = "train/<wnid>/, val/ or test/"
    warnings += ilsvrc.folder_warnings(nested, data_dir, read)
    strays = [name for name in test_files if not name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]  # a README.txt
    test = [(name, -1) for name in test_files if name.lower().endswith(ilsvrc.IMAGE_EXTENSIONS)]
    collect(left_out, "", ilsvrc.broken_links_left_out(broken) + ilsvrc.left_out(nested, folder_reason(read)))
    collect(left_out, ilsvrc.SPLIT_DIRS["test"], ilsvrc.left_out(strays, NOT_IMAGE))
    if strays:
        warnings.append(f"{len(strays)} non-image files in {test_dir} left out, e.g. {strays[0]}")
    unlinked = [w for w in _subfolders(train_dir) if w not in dict(linked)]  # a link's files are its target's
    folders = [train_rel, *(f"{train_rel}/{w}" for w in unlinked), ilsvrc.SPLIT_DIRS["validation"]]
    collect_hidden(left_out, data_dir, folders + ([ilsvrc.SPLIT_DIRS["test"]] if test_dir.is_dir() else []))
    if test:
        splits["test"] = Split(ilsvrc.SPLIT_DIRS["test"], None, test, {})
    else:  # unlabelled anyway; people delete its 13 GB
        warnings.append(f"{test_dir}: no images; the dataset has train and validation only")
    for split, s in splits.items():
        if not s.items:
            raise ValueError(f"{data_dir / s.image_dir}: no images, the {split} split would be empty")
    return wnids, descriptions, splits, warnings


def _ilsvrc_val(data_dir: Path, wnids: list[str], broken: list, nested: list, warnings: list
                ) -> tuple[list[tuple[str, int]], dict, list[str]]:
    """(val files with their labels, LOC_val_solution.csv's boxes, the non-image files left out) of Kaggle's flat
    val/; its broken links and folders added to ``broken`` and ``nested``, its warnings to ``warnings``."""
    val_dir = data_dir / ilsvrc.SPLIT_DIRS["validation"]
    val_csv = ilsvrc.read_solution_csv(data_dir / ilsvrc.VAL_SOLUTION, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    val, strays = [], []
    val_files, links, inside = ilsvrc.list_images(val_dir)
    broken += [(f"{ilsvrc.SPLIT_DIRS['validation']}/{name}", why) for name, why in links]
    nested += [f"{ilsvrc.SPLIT_DIRS['validation']}/{name}" for name in inside]
    for name in val_files:
        stem, ext = os.path.splitext(name)
        if stem not in val_csv and ext.lower() not in ilsvrc.IMAGE_EXTENSIONS:
            strays.append(name)  # a readme.txt: not an image, so not a val image without a label
            continue
        if stem not in val_csv:
            raise ValueError(f"{val_dir / name}: no row {stem!r} in {data_dir / ilsvrc.VAL_SOLUTION}, so no label")
        val.append((name, index[val_csv[stem][0][0]]))  # the label is the first box's wnid
    if strays:
        warnings.append(f"{len(strays)} non-image files in {val_dir} left out, e.g. {strays[0]}")
    if not val and any(p.is_dir() for p in val_dir.iterdir()):
        raise ValueError(f"{val_dir}: no images, only subfolders; preprocess.py reads Kaggle's flat val/ with "
                         f"{ilsvrc.VAL_SOLUTION} (undo a valprep.sh-style sort into class folders)")
    if len(val_csv) > len(val):
        warnings.append(f"{len(val_csv) - len(val)} rows of {ilsvrc.VAL_SOLUTION} have no image in {val_dir}")
    return val, val_csv, strays
