"""A small ILSVRC-2012 tree in Kaggle's layout, built offline from real images that PyPI wheels ship.

- ``source="photos"``: scikit-image's bundled colour photos (astronaut, chelsea, coffee, rocket, ...). Class k uses
  one photo; each instance is a random crop, resize (60-400 px sides, not square) and flip of it, saved as JPEG at a
  random quality, some progressive, so sizes and encodings vary like ImageNet's. More classes than photos reuse
  the photos with the colour channels permuted / rotated.
- ``source="digits"``: scikit-learn's 1797 handwritten 8x8 digits, upscaled to 32-64 px and coloured. At most 10
  classes; the split is stratified (``train_per_class`` / ``val_per_class`` per digit), so a small net can learn it.

Class k is the k-th real ImageNet wnid in sorted order (n01440764 is 0), so the tree has ILSVRC's layout and ids,
but ``LOC_synset_mapping.txt`` describes what the images show: "digit 0" ... "digit 9", or the photo's name
("astronaut", "chelsea", ...; "astronaut (variant 1)" for a reused photo in other colours), never the fish or dog that
the wnid stands for in ImageNet, which would reach a trained model's card and its pipeline's answers.
Layout written (all of it, as Kaggle's ``imagenet-object-localization-challenge`` unzips)::

    LOC_synset_mapping.txt  LOC_train_solution.csv  LOC_val_solution.csv  LOC_sample_submission.csv
    ILSVRC/Data/CLS-LOC/{train/<wnid>/<wnid>_<n>.JPEG, val/ILSVRC2012_val_%08d.JPEG, test/ILSVRC2012_test_%08d.JPEG}
    ILSVRC/Annotations/CLS-LOC/{train/<wnid>/<stem>.xml (half of train), val/<stem>.xml (all of val)}
    ILSVRC/ImageSets/CLS-LOC/{train_cls,train_loc,val,test}.txt   (<path without extension> <line number>)
    demo_manifest.json      (not Kaggle's: what was planted, for tests; see below)

``faults=True`` also plants ImageNet's real quirks in place of some normal images: ``cmyk`` / ``val_cmyk`` (like
n01739381_1309, one of the 22 CMYK train files listed in cytsai/ilsvrc-cmyk-image-list, and the CMYK val file
ILSVRC2012_val_00019877), ``grayscale``, ``png_named_jpeg`` (like n02105855_2933, the PNG that tensorflow/models
research/inception/inception/data/build_imagenet_data.py converts), ``exif_orientation_6`` (stored rotated, with a
pure-red rectangle painted over its box), which must all come out as RGB JPEGs (``grayscale`` stays a grayscale
JPEG, its bytes kept, that every reader decodes to RGB); broken files that must be skipped:
``truncated`` (train), ``empty`` (val), ``garbage`` (test); and box faults in the XML, the kinds tensorflow/models
research/inception/inception/data/process_bounding_boxes.py works around: ``box_float``, ``box_past_edge`` (right
edge 37 px past the image), ``box_inverted`` (a second object with xmin > xmax), ``box_filename_placeholder``
(``<filename>%s</filename>``), ``box_human_name`` (the class's description instead of its wnid),
``box_unknown_name`` (a name of no class), and ``box_several`` (a val image with three boxes).

``demo_manifest.json`` holds: ``wnids``, ``descriptions``, ``files`` (files per split on disk), ``broken`` (fault
kinds that must be skipped), ``planted`` (kind -> {split, stem, path}), ``val_labels`` (stem -> label),
``xml_objects`` (stem -> [[name, xmin, ymin, xmax, ymax], ...] as written) and ``image_sizes`` (stem -> [w, h] of
the stored pixels, before any EXIF rotation). ``python -m imagenet_trainer.demo --output DIR`` writes one.

``--layout folders`` writes the photos as a class-folder tree instead (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``,
no test split, no boxes, no faults; preprocess.py reads it as your own images), one image per task over
``--num_proc`` processes: the fast way to a few thousand ImageNet-sized files for benchmarks. Each image is seeded by
(seed, split, class, index), so the files do not depend on the process count.
"""
from __future__ import annotations

import csv
import functools
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagenet_trainer import ilsvrc
from imagenet_trainer.config import parse_config
from imagenet_trainer.demo_quirks import BOX_FAULTS, BOX_XML, SAVE, TRAIN_FAULTS, VAL_FAULTS, jpeg_bytes, random_box

MANIFEST = "demo_manifest.json"
# what a demo tree's images are, for source.json and the cards: ILSVRC's layout and wnids, none of ImageNet's images
ORIGINS = {"digits": "scikit-learn's handwritten digits (8x8, upscaled and coloured) laid out as ILSVRC-2012 by "
                     "imagenet_trainer.demo, not ImageNet images",
           "photos": "scikit-image's bundled photos (random crops) laid out as ILSVRC-2012 by imagenet_trainer.demo, "
                     "not ImageNet images"}


def demo_origin(root) -> str | None:
    """What the images of a tree this module wrote really are; None for any other tree (a real download)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return ORIGINS.get(json.loads(path.read_text()).get("source"), "imagenet_trainer.demo's generated images")
# skimage.data photos that load without the network (pooch) in scikit-image 0.26; 'logo' is RGBA, channels [:3].
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "stereo_motorcycle", "colorwheel", "logo")
CHANNEL_ORDERS = ((0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1), (0, 2, 1), (1, 0, 2))
BROKEN = ("truncated", "empty", "garbage")


@dataclass
class DemoConfig:
    output: str  # folder to create (replaced if it exists); it becomes preprocess.py's --data_dir
    source: str = "photos"  # "photos" (scikit-image colour photos) or "digits" (scikit-learn 8x8 digits)
    num_classes: int = 10  # the first N ImageNet wnids in sorted order; digits allow at most 10
    train_per_class: int = 12  # train images per class
    val_per_class: int = 4  # val images per class (val labels come from LOC_val_solution.csv)
    num_test: int = 10  # unlabeled test images
    faults: bool = False  # plant ImageNet's odd files and bad boxes (see the module docstring)
    seed: int = 0  # same seed, same files
    long_side: int = 0  # photos: 0 = varied 60-400 px (fast tests); 500 = ImageNet's 500x375 shapes (benchmarks)
    grain: float = 0.0  # photos: film grain std-dev, grey levels; long_side 500 + grain 32: ~106 KB files (ImageNet)
    quality: int = 0  # photos: 0 = ImageNet's mix (quality 75-95, ~20% progressive); 1-95 = every photo sequential
    # at that quality, as photos re-encoded by a camera app or a resizing script (90 + grain 11: ~85 KB files)
    layout: str = "ilsvrc"  # "ilsvrc" (Kaggle's tree, everything above) or "folders" (photos in class folders)
    num_proc: int = 1  # processes for --layout folders (ImageNet-sized images with grain are slow to make)


def _description(source: str, k: int) -> str:
    """What class k's images show (unique per class; no comma: ImageNet's descriptions list synonyms after one)."""
    if source == "digits":
        return f"digit {k}"
    variant = k // len(PHOTOS)
    return PHOTOS[k % len(PHOTOS)].replace("_", " ") + (f" (variant {variant})" if variant else "")


def _photo(k: int) -> np.ndarray:
    """The HxWx3 uint8 source photo of class k."""
    import skimage.data  # imported here: a slow import the digits source does not need

    name = PHOTOS[k % len(PHOTOS)]
    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle returns (left, right, disparity)
    variant = k // len(PHOTOS)  # more classes than photos: same photo, other channel order / quarter turn
    img = img[..., list(CHANNEL_ORDERS[variant % len(CHANNEL_ORDERS)])]
    return np.ascontiguousarray(np.rot90(img, variant // len(CHANNEL_ORDERS) % 4))


def _photo_instance(src: np.ndarray, rng, long_side: int = 0, grain: float = 0.0) -> Image.Image:
    """A random crop of 35-100% of each side, resized to 60-400 px sides (aspect 0.5-2), maybe mirrored; with
    long_side, resized to ImageNet's typical shapes instead: that long side at 4:3 or 3:4 (500x375, 375x500).
    grain adds Gaussian noise of that std-dev to luminance and half of it per channel: the high-frequency detail
    that makes real photos' JPEGs ~3x larger, and their entropy decoding as costly."""
    h, w = src.shape[:2]
    cw, ch = int(w * rng.uniform(0.35, 1.0)), int(h * rng.uniform(0.35, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out_w = int(rng.integers(60, 401))
    out_h = int(np.clip(out_w * rng.uniform(0.5, 2.0), 60, 400))
    if long_side:
        out_w, out_h = (long_side, long_side * 3 // 4) if rng.random() < 0.75 else (long_side * 3 // 4, long_side)
    img = Image.fromarray(src[y:y + ch, x:x + cw]).resize((out_w, out_h), Image.Resampling.BILINEAR)
    if grain > 0:
        pixels = np.asarray(img, dtype=np.float32)
        pixels = pixels + rng.normal(0, grain, (out_h, out_w, 1)) + rng.normal(0, grain / 2, pixels.shape)
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _digit_instance(pixels: np.ndarray, rng) -> tuple[Image.Image, tuple]:
    """An 8x8 digit (values 0-16) as a 32-64 px RGB image: bright ink on a dark background with a one-cell margin,
    near-square so a center crop keeps the whole digit; and its ink box."""
    w = int(rng.integers(32, 65))
    h = int(w * rng.uniform(0.9, 1.1))
    ink, paper = rng.uniform(150, 255, 3), rng.uniform(0, 80, 3)
    alpha = np.pad(pixels, 1)[..., None] / 16.0  # 10x10: the digit plus a margin of paper
    small = (paper * (1 - alpha) + ink * alpha).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    rows, cols = np.nonzero(pixels)
    box = ((cols.min() + 1) * w / 10, (rows.min() + 1) * h / 10, (cols.max() + 2) * w / 10, (rows.max() + 2) * h / 10)
    return img, tuple(round(v, 1) for v in box)


def _voc_xml(folder: str, stem: str, size: tuple, objects: list, filename: str | None = None) -> str:
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects)
    return (f"<annotation><folder>{folder}</folder><filename>{filename or stem}</filename>"
            f"<source><database>ILSVRC_2012</database></source><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>\n")


def _prediction_string(objects: list) -> str:
    # the real files end each row with a space
    return "".join(f"{name} {x0:g} {y0:g} {x1:g} {y1:g} " for name, x0, y0, x1, y1 in objects)


class _Instances:
    """(image, box) of class `label`'s i-th train/val image, or the i-th test image, from the demo's source."""

    def __init__(self, source: str, rng, num_classes: int, train_per_class: int, val_per_class: int, num_test: int,
                 long_side: int, grain: float):
        self.source, self.rng, self.train_per_class, self.long_side, self.grain = source, rng, train_per_class, \
            long_side, grain
        self.photos: dict[int, np.ndarray] = {}
        if source == "digits":
            self._pick_digits(num_classes, train_per_class + val_per_class, num_test)

    def _pick_digits(self, num_classes: int, per_class: int, num_test: int) -> None:
        """The stratified split: per digit, the first train_per_class + val_per_class of a permutation; test from
        the rest."""
        from sklearn.datasets import load_digits  # imported here: a slow import the photos do not need

        self.digits = load_digits()
        self.by_class = [self.rng.permutation(np.flatnonzero(self.digits.target == k)) for k in range(num_classes)]
        if min(len(ix) for ix in self.by_class) < per_class:
            raise ValueError(f"digits has only {min(len(ix) for ix in self.by_class)} images of some digit; "
                             f"train_per_class + val_per_class={per_class} is too many")
        spare = np.concatenate([ix[per_class:] for ix in self.by_class])
        if len(spare) < num_test:
            raise ValueError(f"digits has {len(spare)} images left for test, num_test={num_test} is too many")
        self.test_pool = self.rng.permutation(spare)[:num_test]

    def __call__(self, label: int, i: int, split: str) -> tuple[Image.Image, tuple]:
        if self.source == "digits":
            idx = {"train": lambda: self.by_class[label][i],
                   "validation": lambda: self.by_class[label][self.train_per_class + i],
                   "test": lambda: self.test_pool[i]}[split]()
            return _digit_instance(self.digits.images[idx], self.rng)
        if label not in self.photos:
            self.photos[label] = _photo(label)
        img = _photo_instance(self.photos[label], self.rng, self.long_side, self.grain)
        return img, random_box(*img.size, self.rng)


class _Tree:
    """The files of one demo tree as they are written, and demo_manifest.json's record of them."""

    def __init__(self, root: Path, rng, manifest: dict, quality: int = 0):
        self.root, self.rng, self.manifest, self.quality = root, rng, manifest, quality
        self.data = {split: root / d for split, d in ilsvrc.SPLIT_DIRS.items()}
        self.ann = {split: root / d for split, d in ilsvrc.ANNOTATION_DIRS.items()}
        for d in [*self.data.values(), *self.ann.values(), root / ilsvrc.IMAGESETS_DIR]:
            d.mkdir(parents=True)

    def plant(self, kind: str, split: str, stem: str, path: Path) -> None:
        self.manifest["planted"][kind] = {"split": split, "stem": stem, "path": str(path.relative_to(self.root))}

    def image(self, split: str, path: Path, stem: str, img: Image.Image, kind: str | None = None) -> Image.Image:
        """`img` saved at `path`, as ImageNet's quirk `kind` when given; the pixels as stored."""
        if kind is None and self.quality:
            path.write_bytes(jpeg_bytes(img, self.rng, self.quality))
            stored = img
        else:
            stored = SAVE[kind](path, img, self.rng)
        if kind:
            self.plant(kind, split, stem, path)
        self.manifest["image_sizes"][stem] = list(stored.size)
        return stored


def make_ilsvrc_tree(root, source: str = "photos", num_classes: int = 10, train_per_class: int = 12,
                     val_per_class: int = 4, num_test: int = 10, faults: bool = False, seed: int = 0,
                     long_side: int = 0, grain: float = 0.0, quality: int = 0) -> Path:
    """Write the tree described in the module docstring under ``root`` (replaced if present); returns ``root``.
    ``quality``: DemoConfig's (0: ImageNet's mix of qualities and codings)."""
    _check_tree_args(source, num_classes, train_per_class, val_per_class, num_test, faults, grain)
    if not 0 <= quality <= 95:
        raise ValueError(f"quality={quality}: use 1-95 (Pillow's useful range), or 0 for ImageNet's mix")
    rng = np.random.default_rng(seed)
    wnids = ilsvrc.imagenet_wnids()[:num_classes]
    descriptions = [_description(source, k) for k in range(num_classes)]
    root = _empty_root(Path(root))
    manifest = {"source": source, "seed": seed, "wnids": wnids, "descriptions": descriptions,
                "files": {}, "broken": list(BROKEN) if faults else [], "planted": {}, "val_labels": {},
                "xml_objects": {}, "image_sizes": {}}
    tree = _Tree(root, rng, manifest, quality)
    instance = _Instances(source, rng, num_classes, train_per_class, val_per_class, num_test, long_side, grain)
    train_cls, train_loc, train_rows = _write_train(tree, instance, train_per_class, faults)
    val_ids, val_rows = _write_val(tree, instance, val_per_class, faults)
    test_ids = _write_test(tree, instance, num_test, faults)
    _write_lists(tree, train_rows, val_rows, {"train_cls.txt": train_cls, "train_loc.txt": train_loc,
                                              "val.txt": val_ids, "test.txt": test_ids})
    manifest["files"] = {"train": len(train_cls), "validation": len(val_ids), "test": len(test_ids)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return root


def _check_tree_args(source: str, num_classes: int, train_per_class: int, val_per_class: int, num_test: int,
                     faults: bool, grain: float) -> None:
    if source not in ("photos", "digits"):
        raise ValueError(f"source must be 'photos' or 'digits', got {source!r}")
    most = 10 if source == "digits" else len(ilsvrc.imagenet_wnids())
    if not 1 <= num_classes <= most:
        raise ValueError(f"num_classes={num_classes}: {source} allows 1-{most}")
    if grain < 0:
        raise ValueError(f"grain={grain}: a noise std-dev must be >= 0")
    if min(train_per_class, val_per_class, num_test) < 1:
        raise ValueError("train_per_class, val_per_class and num_test must be at least 1 (an empty split is an error)")
    if faults and (num_classes < 3 or train_per_class < 4 or num_classes * val_per_class < 5 or num_test < 2):
        raise ValueError("faults=True needs num_classes >= 3, train_per_class >= 4, >= 5 val and >= 2 test images")


def _empty_root(root: Path) -> Path:
    """`root`, emptied when a demo tree is there; never a folder the demo did not write (e.g. a real download)."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; give a folder for the tree")
    if root.exists() and any(root.iterdir()):
        if not (root / MANIFEST).is_file():
            raise ValueError(f"{root} exists and is not a demo tree (no {MANIFEST}); remove it or choose another "
                             "folder")
        shutil.rmtree(root)
    return root


def _write_train(tree: _Tree, instance: _Instances, per_class: int, faults: bool):
    """train/<wnid>/<wnid>_<n>.JPEG, XML for every other image (and for the box faults and the EXIF-rotated one);
    returns the train_cls and train_loc lists and LOC_train_solution.csv's rows."""
    train_cls, train_loc, rows = [], [], []
    for label, wnid in enumerate(tree.manifest["wnids"]):
        (tree.data["train"] / wnid).mkdir()
        numbers = sorted(tree.rng.choice(np.arange(1, 40000), per_class, replace=False), key=str)  # as listed
        for i, n in enumerate(numbers):
            stem = f"{wnid}_{n}"
            path = tree.data["train"] / wnid / f"{stem}.JPEG"
            img, box = instance(label, i, "train")
            kind = TRAIN_FAULTS.get((label, i)) if faults else None
            stored = tree.image("train", path, stem, img, kind)
            train_cls.append(f"{wnid}/{stem}")
            box_kind = BOX_FAULTS.get((label, i)) if faults else None
            if kind == "truncated" or (i % 2 and not box_kind and kind != "exif_orientation_6"):
                continue
            box = stored.info.get("box", box)  # the EXIF-rotated image's box is in its stored pixels
            if box_kind:
                tree.plant(box_kind, "train", stem, path)
            objects, filename = BOX_XML[box_kind](wnid, box, stored.size[0], tree.manifest["descriptions"][label])
            tree.manifest["xml_objects"][stem] = [list(o) for o in objects]
            (tree.ann["train"] / wnid).mkdir(exist_ok=True)
            (tree.ann["train"] / wnid / f"{stem}.xml").write_text(_voc_xml(wnid, stem, stored.size, objects, filename))
            rows.append((stem, _prediction_string([(wnid, *box)])))
            train_loc.append(f"{wnid}/{stem}")
    return train_cls, train_loc, rows


def _write_val(tree: _Tree, instance: _Instances, per_class: int, faults: bool):
    """val/: flat, labels in a shuffled order, every image with XML and a CSV row; returns the ids and the rows."""
    wnids, rng = tree.manifest["wnids"], tree.rng
    val_labels = rng.permutation(np.repeat(np.arange(len(wnids)), per_class))
    seen = np.zeros(len(wnids), dtype=int)
    rows, ids = [], []
    for j, label in enumerate(val_labels):
        stem = f"ILSVRC2012_val_{j + 1:08d}"
        path = tree.data["validation"] / f"{stem}.JPEG"
        img, box = instance(int(label), int(seen[label]), "validation")
        seen[label] += 1
        kind = VAL_FAULTS.get(j) if faults else None
        size = tree.image("validation", path, stem, img, None if kind == "box_several" else kind).size
        objects = [(wnids[label], *box)]
        if kind == "box_several":
            tree.plant(kind, "validation", stem, path)
            objects += [(wnids[label], *random_box(*size, rng)), (wnids[label], *random_box(*size, rng))]
        tree.manifest["val_labels"][stem] = int(label)
        tree.manifest["xml_objects"][stem] = [list(o) for o in objects]
        (tree.ann["validation"] / f"{stem}.xml").write_text(_voc_xml("val", stem, size, objects))
        rows.append((stem, _prediction_string(objects)))
        ids.append(stem)
    return ids, rows


def _write_test(tree: _Tree, instance: _Instances, num_test: int, faults: bool) -> list[str]:
    """test/: flat, no labels; returns the ids."""
    ids = []
    for j in range(num_test):
        stem = f"ILSVRC2012_test_{j + 1:08d}"
        img, _ = instance(int(tree.rng.integers(len(tree.manifest["wnids"]))), j, "test")
        tree.image("test", tree.data["test"] / f"{stem}.JPEG", stem, img, "garbage" if faults and j == 1 else None)
        ids.append(stem)
    return ids


def _write_lists(tree: _Tree, train_rows: list, val_rows: list, image_sets: dict[str, list[str]]) -> None:
    """The text files: synset mapping, the LOC_*.csv files, the ImageSets lists."""
    root, wnids = tree.root, tree.manifest["wnids"]
    (root / ilsvrc.SYNSET_MAPPING).write_text("".join(f"{w} {d}\n" for w, d in zip(wnids,
                                                                                    tree.manifest["descriptions"])))
    for name, rows in ((ilsvrc.TRAIN_SOLUTION, train_rows), (ilsvrc.VAL_SOLUTION, val_rows)):
        order = tree.rng.permutation(len(rows))  # Kaggle's CSVs are not sorted; nothing may rely on row order
        with open(root / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows[i] for i in order)
    test_ids = image_sets["test.txt"]
    with open(root / "LOC_sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "PredictionString"], *([s, f"{wnids[0]} 0 0 100 100"] for s in test_ids)])
    for name, lines in image_sets.items():
        (root / ilsvrc.IMAGESETS_DIR / name).write_text("".join(f"{p} {n}\n" for n, p in enumerate(lines, 1)))


FOLDER_SPLITS = ("train", "val")  # the split folders make_folder_tree writes (preprocess.py's class-folder layout)


def _folder_image(task: tuple) -> None:
    """Worker of make_folder_tree: write one photo instance to its path."""
    path, label, key, long_side, grain = task
    rng = np.random.default_rng(key)
    Path(path).write_bytes(jpeg_bytes(_photo_instance(_class_photo(label), rng, long_side, grain), rng))


@functools.lru_cache(maxsize=16)
def _class_photo(label: int) -> np.ndarray:
    return _photo(label)  # once per class per worker process


def make_folder_tree(root, num_classes: int = 10, train_per_class: int = 12, val_per_class: int = 4, seed: int = 0,
                     long_side: int = 0, grain: float = 0.0, num_proc: int = 1) -> Path:
    """Photos in preprocess.py's class-folder layout (``root/{train,val}/<wnid>/<wnid>_<n>.JPEG``), written by
    ``num_proc`` processes; the same files for any ``num_proc``. ``root`` must not exist or be empty."""
    root = Path(root)
    if not 1 <= num_classes <= len(ilsvrc.imagenet_wnids()) or min(train_per_class, val_per_class) < 1:
        raise ValueError(f"num_classes={num_classes} (1-1000), train_per_class={train_per_class} and "
                         f"val_per_class={val_per_class} (>= 1) are out of range")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} exists and is not an empty folder; remove it or choose another")
    tasks = []
    for split_code, (split, per_class) in enumerate(zip(FOLDER_SPLITS, (train_per_class, val_per_class))):
        for label, wnid in enumerate(ilsvrc.imagenet_wnids()[:num_classes]):
            (root / split / wnid).mkdir(parents=True)
            tasks += [(str(root / split / wnid / f"{wnid}_{i + 1}.JPEG"), label, (seed, split_code, label, i),
                       long_side, grain) for i in range(per_class)]
    with ProcessPoolExecutor(max(1, num_proc)) as pool:
        list(pool.map(_folder_image, tasks, chunksize=max(1, len(tasks) // (16 * max(1, num_proc)))))
    return root


def main(argv=None) -> None:
    cfg = parse_config(DemoConfig, argv, description="Write a small ILSVRC-2012 tree in Kaggle's layout.")
    try:
        if cfg.layout == "folders":
            if cfg.source != "photos" or cfg.faults or cfg.quality:
                raise ValueError("--layout folders writes photos only, without faults, in ImageNet's mix of qualities")
            root = make_folder_tree(cfg.output, cfg.num_classes, cfg.train_per_class, cfg.val_per_class, cfg.seed,
                                    cfg.long_side, cfg.grain, cfg.num_proc)
            print(f"wrote {root}: {cfg.num_classes * cfg.train_per_class} train, "
                  f"{cfg.num_classes * cfg.val_per_class} val images of {cfg.num_classes} classes in class folders")
            return
        if cfg.layout != "ilsvrc":
            raise ValueError(f"--layout {cfg.layout}: use ilsvrc or folders")
        root = make_ilsvrc_tree(cfg.output, cfg.source, cfg.num_classes, cfg.train_per_class, cfg.val_per_class,
                                cfg.num_test, cfg.faults, cfg.seed, cfg.long_side, cfg.grain, cfg.quality)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    files = json.loads((root / MANIFEST).read_text())["files"]
    print(f"wrote {root}: {files['train']} train, {files['validation']} val, {files['test']} test images "
          f"of {cfg.num_classes} classes ({cfg.source}{', with faults' if cfg.faults else ''})")


if __name__ == "__main__":
    main()
