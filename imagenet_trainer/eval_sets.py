"""ImageNet's robustness and re-test sets as their authors distribute them, listed for preprocess.py.

Every set is labelled in ImageNet-1k's index space (ClassLabel names = the 1000 sorted wnids, n01440764 = 0), so a
1000-class model scores it as it is; ``source.json`` records which set it is (``eval_set``), and for ImageNet-R/-A
the 200-class subset (``class_subset``: 1k indices) that scoring restricts the logits to, as both papers do.

- ImageNet-V2 (Recht et al. 2019, github.com/modestyachts/ImageNetV2): ``imagenetv2-<variant>-format-val/<0..999>/``,
  folders named by class index; variants matched-frequency, threshold0.7, top-images (10,000 images each).
- ImageNet-Sketch (Wang et al. 2019, github.com/HaohanWang/ImageNet-Sketch): ``sketch/<wnid>/`` x 1000, 50,889 images.
- ImageNet-R (Hendrycks et al. 2021, github.com/hendrycks/imagenet-r): ``imagenet-r/<wnid>/`` x 200, 30,000 images.
- ImageNet-A (Hendrycks et al. 2021, github.com/hendrycks/natural-adv-examples): ``imagenet-a/<wnid>/`` x 200, 7,500.
- ImageNet-C (Hendrycks & Dietterich 2019, github.com/hendrycks/robustness): ``<corruption>/<1-5>/<wnid>/``, with or
  without the tarballs' category level (``noise/gaussian_noise/1/...``); one split per corruption and severity,
  named ``<corruption>_<severity>`` (``gaussian_noise_3``), 50,000 images each.

The 200-class lists of R and A are timm's (``timm/data/_info/imagenet_{r,a}_synsets.txt``, copied from the papers'
code). A set is recognised by ``--eval_set``, by its folder's distributed name, or (V2, C) by its folder layout.
V2's three variants share one layout, so the variant comes from the folder's name or from ``--eval_set
imagenet-v2:<variant>``; a V2 copy with neither is a warning, and is then not called by its published name.
Class folders outside ImageNet-1k, or R/A folders that are not exactly the 200, are a ValueError naming the folder;
V2, Sketch and C may miss classes (a scaled-down copy): that is a warning, and the set is then not called by its
published name. Library code: bad input is a ``ValueError`` that names the folder and what to do.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from imagenet_trainer import ilsvrc, image_tree
from imagenet_trainer.image_tree import Split

V2, SKETCH, R, A, C = "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "imagenet-c"


class SetInfo(NamedTuple):
    title: str  # the published name, used when the copy is complete
    full_images: int  # images in the published set (per split for C)
    hub_id: str | None  # the authors' own copy on the Hub, for the card's metadata; None where they have none
    timm_name: str  # timm's name of the set (its results-<name>.csv): rows to diff against ours


SETS = {
    V2: SetInfo("ImageNet-V2", 10_000, "vaishaal/ImageNetV2", "imagenetv2-{variant}"),
    SKETCH: SetInfo("ImageNet-Sketch", 50_889, "songweig/imagenet_sketch", "sketch"),
    R: SetInfo("ImageNet-R", 30_000, None, "imagenet-r"),
    A: SetInfo("ImageNet-A", 7_500, None, "imagenet-a"),
    C: SetInfo("ImageNet-C", 50_000, None, "imagenet-c"),  # timm publishes no ImageNet-C table
}
V2_VARIANTS = ("matched-frequency", "threshold0.7", "top-images")
# The 15 corruptions mCE averages over (Hendrycks & Dietterich 2019, Table 1), then the 4 held-out "extra" ones.
C_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                 "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                 "jpeg_compression")
C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
C_CATEGORIES = ("noise", "blur", "weather", "digital", "extra")  # the tarballs' top folders
C_SEVERITIES = ("1", "2", "3", "4", "5")
# the folder names the authors' archives unpack to (lowercased, "_" read as "-")
DISTRIBUTED_NAMES = {"imagenet-r": R, "imagenet-rendition": R, "imagenet-a": A, "sketch": SKETCH,
                     "imagenet-sketch": SKETCH, "imagenet-c": C}


def subset_wnids(kind: str) -> list[str]:
    """The 200 wnids of ImageNet-R or -A, sorted (= their order in 1k index space)."""
    return sorted(ilsvrc.timm_info_file(f"imagenet_{kind[-1]}_synsets.txt").read_text().split())


def split_of(corruption: str, severity: str) -> str:
    return f"{corruption}_{severity}"


def corruption_of(split: str) -> tuple[str, int]:
    """``gaussian_noise_3`` -> (``gaussian_noise``, 3)."""
    corruption, _, severity = split.rpartition("_")
    return corruption, int(severity)


def _c_root(data_dir: Path, folders: list[str]) -> dict[str, Path]:
    """{corruption: its folder} of an ImageNet-C tree, with or without the category level; {} when none."""
    known = (*C_CORRUPTIONS, *C_EXTRA)
    found = {f: data_dir / f for f in folders if f in known}
    for category in (f for f in folders if f in C_CATEGORIES):
        found.update({f: data_dir / category / f for f in image_tree._subfolders(data_dir / category) if f in known})
    return found


def parse_eval_set(eval_set: str) -> tuple[str, str | None]:
    """--eval_set's value as (kind, V2's variant or None): ``imagenet-v2:top-images`` -> (imagenet-v2, top-images);
    "" -> ("", None)."""
    kind, colon, variant = eval_set.partition(":")
    if kind and kind not in SETS:
        raise ValueError(f"--eval_set {eval_set!r}: not one of {', '.join(SETS)} (ImageNet-V2's variant as "
                         f"{V2}:{V2_VARIANTS[0]})")
    if colon and (kind != V2 or variant not in V2_VARIANTS):
        raise ValueError(f"--eval_set {eval_set!r}: only ImageNet-V2 names a variant, one of "
                         + ", ".join(f"{V2}:{v}" for v in V2_VARIANTS))
    return kind, variant or None


def named_variant(data_dir: Path) -> str | None:
    """The ImageNet-V2 variant ``data_dir``'s name names (the tarballs unpack to imagenetv2-<variant>-format-val)."""
    name = data_dir.name.lower().replace("_", "-")
    return next((v for v in V2_VARIANTS if v in name), None)


def distributed_kind(folder_name: str) -> str | None:
    """The set a folder of this name is as its authors' archive unpacks it, or None."""
    name = folder_name.lower().replace("_", "-")
    return V2 if name.startswith(("imagenetv2", "imagenet-v2")) else DISTRIBUTED_NAMES.get(name)


def sets_inside(data_dir: Path, folders: list[str] | None = None) -> list[str]:
    """The subfolders of ``data_dir`` (``folders``: its subfolders, listed already) that are each a set, named as its
    archive unpacks (imagenet-r/, imagenetv2-top-images-format-val/); a training tree in one (sketch/train/) is none."""
    folders = image_tree._subfolders(data_dir) if folders is None else folders
    return [f for f in folders if distributed_kind(f) and detect(data_dir / f, "")]


def _set_inside(data_dir: Path, folders: list[str]) -> str | None:
    """The set ``data_dir``'s one subfolder is (imagenet-r/imagenet-r/: its archive unpacked one level too deep), or
    None."""
    inside = sets_inside(data_dir, folders) if len(folders) == 1 else []
    return detect(data_dir / inside[0], "") if inside else None


def detect(data_dir: Path, eval_set: str) -> str | None:
    """Which evaluation set ``data_dir`` is (``eval_set`` if given), or None when it is none of them."""
    if eval_set:
        return parse_eval_set(eval_set)[0]
    folders = image_tree._subfolders(data_dir)
    if "train" in folders or "ILSVRC" in folders or (data_dir / ilsvrc.SYNSET_MAPPING).exists():
        return None  # a training tree (Kaggle's or class folders), whatever its folder is called
    # a folder named as a set, or holding only one (its archive unpacked one level too deep: list_splits says so)
    if kind := distributed_kind(data_dir.name) or _set_inside(data_dir, folders):
        return kind
    # sets side by side (downloads/imagenet-r/, downloads/imagenet-a/): read as a set, so that list_splits names them
    if len(inside := sets_inside(data_dir, folders)) > 1:
        return detect(data_dir / inside[0], "")
    if _c_root(data_dir, folders):
        return C
    if len(folders) == 1000 and all(f.isdigit() for f in folders):
        return V2
    return None


def _check_wnids(folder: Path, classes: list[str], known: set[str]) -> None:
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise ValueError(f"{folder / unknown[0]}: {unknown[0]!r} is not an ImageNet-1k wnid ({len(unknown)} such "
                         "folders); an evaluation set's class folders are ImageNet-1k's wnids (for your own "
                         "class tree add --val_fraction 0.1)")


def _missing_warning(folder: Path, title: str, found: int, expected: int) -> list[str]:
    return ([f"{folder}: {found} of {title}'s {expected} class folders; scored as a subset, not as {title}"]
            if found < expected else [])


def _class_split(data_dir: Path, rel: str, index: dict[str, int], kind: str, left_out: list | None = None
                 ) -> tuple[Split, list[str]]:
    """One split of ``<class>/<image>`` folders, labelled through ``index`` (folder name -> 1k label); ``left_out``: a
    list that gets preprocess_report.json's entry of each file and folder not read, its path under ``data_dir``."""
    classes, warnings = image_tree.list_classes(data_dir / rel if rel else data_dir, left_out, rel)
    items = [(f"{c}/{f}", index[c]) for c in classes for f in classes[c]]
    empty = [c for c in classes if not classes[c]]
    if empty:
        warnings.append(f"{len(empty)} class folders of {data_dir / rel} are empty, e.g. {empty[0]}")
    if not items:
        raise ValueError(f"{data_dir / rel}: no images in its class folders ({SETS[kind].title})")
    return Split(rel, None, items, {}, True), warnings


def _list_v2(data_dir: Path, folders: list[str], variant: str | None, left_out: list | None = None
             ) -> tuple[Split, list[str], str | None]:
    """ImageNet-V2's one split, its warnings and its variant (``variant``: --eval_set's, else the folder name's)."""
    bad = [f for f in folders if not (f.isdigit() and 0 <= int(f) < 1000 and str(int(f)) == f)]
    if bad:
        raise ValueError(f"{data_dir / bad[0]}: ImageNet-V2's class folders are named by class index 0..999, "
                         f"not {bad[0]!r} (for your own class tree add --val_fraction 0.1)")
    named = named_variant(data_dir)
    if variant and named and variant != named:
        raise ValueError(f"--eval_set {V2}:{variant}: {data_dir}'s name says it is ImageNet-V2's {named} variant; "
                         f"give --eval_set {V2}:{named}, or rename the folder")
    split, warnings = _class_split(data_dir, "", {str(i): i for i in range(1000)}, V2, left_out)
    warnings += _missing_warning(data_dir, SETS[V2].title, len(folders), 1000)
    if not (variant or named):  # the three share 0..999/: only the name tells which published numbers compare
        warnings.append(f"{data_dir}: its name names none of ImageNet-V2's variants, so it is scored as a subset, "
                        f"not as ImageNet-V2; name the variant: --eval_set {V2}:{V2_VARIANTS[0]} (or "
                        + ", ".join(f":{v}" for v in V2_VARIANTS[1:]) + ")")
    return split, warnings, variant or named


def list_splits(data_dir: Path, kind: str, variant: str | None = None, left_out: list | None = None
                ) -> tuple[list[str], list[str], dict[str, Split], list[str], dict]:
    """(the 1000 wnids, their descriptions, {split: Split}, warnings, what source.json records) of a set;
    ``variant``: ImageNet-V2's, from --eval_set (None: read from the folder's name). ``left_out``: a list that gets
    preprocess_report.json's entry of each file and folder not read (hidden ones, non-image files, ...)."""
    wnids = ilsvrc.imagenet_wnids()
    lemmas = ilsvrc.imagenet_lemmas()
    index = {w: i for i, w in enumerate(wnids)}
    title = SETS[kind].title
    folders = image_tree._subfolders(data_dir)
    if len(several := sets_inside(data_dir, folders)) > 1:  # imagenetv2/ with its three variants: one run each
        raise ValueError(f"{data_dir}: holds {len(several)} evaluation sets, {', '.join(several)}; pass one of them "
                         f"as --data_dir (--data_dir {data_dir / several[0]}), one preprocess.py run per set")
    if inside := _set_inside(data_dir, folders):  # no set's classes or corruptions are named so
        raise ValueError(f"{data_dir}: its one folder, {folders[0]}, is {SETS[inside].title} itself (its archive "
                         f"unpacked one level too deep); pass --data_dir {data_dir / folders[0]}")
    record = {"eval_set": kind, "class_subset": None, "variant": None}
    if kind == V2:
        split, warnings, record["variant"] = _list_v2(data_dir, folders, variant, left_out)
        return wnids, [lemmas[w] for w in wnids], {"validation": split}, warnings, record
    if kind == C:
        return (wnids, [lemmas[w] for w in wnids], *_list_c(data_dir, folders, index, left_out), record)
    _check_wnids(data_dir, folders, set(index))
    warnings = []
    if kind in (R, A):
        expected = subset_wnids(kind)
        if folders != expected:
            outside = [f for f in folders if f not in set(expected)]
            where = (f"{outside[0]} is not one of its 200 classes" if outside else
                     f"missing {next(w for w in expected if w not in set(folders))}")
            raise ValueError(f"{data_dir}: {len(folders)} class folders where {title} has its 200 ({where}); "
                             f"use the folder the authors' {kind}.tar unpacks to")
        record["class_subset"] = [index[w] for w in expected]
    else:
        warnings += _missing_warning(data_dir, title, len(folders), 1000)
    split, more = _class_split(data_dir, "", index, kind, left_out)
    return wnids, [lemmas[w] for w in wnids], {"validation": split}, warnings + more, record


def _list_c(data_dir: Path, folders: list[str], index: dict[str, int], left_out: list | None = None
            ) -> tuple[dict[str, Split], list[str]]:
    roots = _c_root(data_dir, folders)
    strays = [f for f in folders if f not in roots and f not in C_CATEGORIES]
    if not roots or strays:
        raise ValueError(f"{data_dir / (strays[0] if strays else '')}: ImageNet-C is <corruption>/<1-5>/<wnid>/ "
                         f"with corruptions named {', '.join(C_CORRUPTIONS[:3])}, ...; "
                         + (f"{strays[0]!r} is none of them" if strays else "found none"))
    splits, warnings, classes = {}, [], set()
    for corruption in sorted(roots, key=lambda c: (*C_CORRUPTIONS, *C_EXTRA).index(c)):
        root = roots[corruption]
        severities = image_tree._subfolders(root)
        if severities != list(C_SEVERITIES):
            raise ValueError(f"{root}: expected the severity folders 1 2 3 4 5, found {' '.join(severities) or 'none'}"
                             + _severity_fix(root, severities, set(index)))
        for severity in severities:
            wnid_folders = image_tree._subfolders(root / severity)
            _check_wnids(root / severity, wnid_folders, set(index))
            classes.update(wnid_folders)
            rel = str((root / severity).relative_to(data_dir))
            splits[split_of(corruption, severity)], more = _class_split(data_dir, rel, index, C, left_out)
            warnings += more
    missing = [c for c in C_CORRUPTIONS if c not in roots]
    if missing:
        warnings.append(f"{data_dir}: {len(missing)} of ImageNet-C's 15 corruptions missing (e.g. {missing[0]}); "
                        "mCE needs all 15")
    warnings += _missing_warning(data_dir, "ImageNet-C", len(classes), 1000)
    uppers = ["", *(f for f in folders if f in C_CATEGORIES), *(str(r.relative_to(data_dir)) for r in roots.values())]
    return splits, warnings + _files_above_classes(data_dir, uppers, left_out)


def _files_above_classes(data_dir: Path, folders: list[str], left_out: list | None) -> list[str]:
    """The files in ImageNet-C's ``folders`` above its class folders (imagenet-c/README.txt, noise/.DS_Store): not
    read, into ``left_out`` when it is a list; their warning (the hidden ones' is preprocess.py's)."""
    found, links = [], []
    for rel in folders:
        files, _, broken = ilsvrc.scan(data_dir / rel)
        hidden = image_tree.hidden_in(data_dir / rel) if left_out is not None else []
        image_tree.collect(left_out, rel, ilsvrc.left_out(files, image_tree.OUTSIDE_CLASSES)
                           + ilsvrc.broken_links_left_out(broken) + ilsvrc.left_out(hidden, image_tree.HIDDEN))
        found += [f"{rel}/{f}" if rel else f for f in files]
        links += [(f"{rel}/{name}" if rel else name, why) for name, why in broken]
    return ([f"{len(found)} files above ImageNet-C's class folders in {data_dir} left out (images go in "
             f"<corruption>/<1-5>/<wnid>/), e.g. {found[0]}"] if found else []) + ilsvrc.broken_link_warnings(
        links, data_dir)


def _severity_fix(root: Path, severities: list[str], wnids: set[str]) -> str:
    """What to do about a corruption folder whose severity folders are not 1..5: the end of its error line. Class
    folders in it (a copy of one severity) and severity_3-like names are the level misplaced or misnamed: moving them
    out would empty the corruption."""
    stray = [s for s in severities if s not in C_SEVERITIES]
    classes = [s for s in stray if s in wnids]
    if classes:
        return (f"; {root / classes[0]} is an ImageNet-1k class folder ({len(classes)} such): the severity folder "
                f"above them is missing; move them into {root}/N, N their severity (1..5)")
    named = {s: m[1] for s in stray if (m := re.fullmatch(r"\D*([1-5])", s))}
    if named and not set(severities) & set(C_SEVERITIES):
        first = min(named, key=named.get)
        return (f"; {', '.join(sorted(named, key=named.get))} look like severity folders: rename each to its "
                f"severity alone ({root / first} -> {root / named[first]})")
    if stray:
        return f"; {root / stray[0]} is none of them: move it out"
    missing = [s for s in C_SEVERITIES if s not in severities]
    return (f"; {root / missing[0]} is missing ({len(missing)} of 5), so this copy is incomplete: unpack every "
            f"severity of {root.name} from its tarball, or move {root} out to score the other corruptions")


def source_fields(kind: str, record: dict, counts: dict, data_dir: Path) -> dict:
    """source.json's fields for an evaluation set: its published name only when the copy is whole."""
    info = SETS[kind]
    title = info.title + (f" {record['variant']}" if record.get("variant") else "")
    # which of V2's three variants it is decides which published numbers compare, and timm's name of it
    unnamed = kind == V2 and not record.get("variant")
    # ImageNet-C: every one of the 15 benchmark corruptions at its 5 severities (75 splits of the 19 distributed may
    # include the 4 extra ones, held out by the authors, and leave a benchmark one out)
    whole = not unnamed and all(n == info.full_images for n in counts.values()) and (
        kind != C or {corruption_of(split) for split in counts} >= {(c, s) for c in C_CORRUPTIONS for s in range(1, 6)})
    return {**record, "name": title if whole else data_dir.resolve().name, "title": title, "complete": whole,
            "hub_id": info.hub_id if whole else None,
            "timm_name": None if unnamed else info.timm_name.format(variant=record.get("variant"))}

