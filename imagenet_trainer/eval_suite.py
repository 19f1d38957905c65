"""validate.py's multi-set run: --dataset and every --eval_sets set, at every --image_sizes size, plus ReaL labels,
ImageNet-C's mCE and a throughput benchmark, into one summary, a results.csv in timm's columns and the model card.

Each set is a preprocess.py output; what it is (ImageNet-R, -C, ...) comes from its ``source.json``
(imagenet_trainer/eval_sets.py), which also gives R/A's 200-class mask. With R or A beside ILSVRC-2012's validation
split (--dataset), that split's one pass also scores its images of the 200 classes under the same mask (timm's
imagenet-r-clean and imagenet-a-clean tables). The numbers are the same on 1 or N processes: every split goes
through metrics.evaluate, whose gather drops the padding of the last batch. Each split's scores are kept as soon
as it is done (SplitParts), so a run that ends early is continued, not redone.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate.utils import broadcast_object_list
from timm.data import resolve_data_config

from imagenet_trainer import eval_sets, robustness
from imagenet_trainer.bad_samples import BadSamples
from imagenet_trainer.data import EvalSet, check_labels, collate, load_image_dataset
from imagenet_trainer.data.samples import CROP_MODES
from imagenet_trainer.ilsvrc import imagenet_wnids
from imagenet_trainer.loader_setup import PREFETCH_FACTOR, check_shm
from imagenet_trainer.metrics import evaluate
from imagenet_trainer.runinfo import atomic_write_text
from imagenet_trainer.worker_processes import local_processes, worker_context


class Target(NamedTuple):
    path: str  # as given on the command line
    name: str  # shown in tables and the card: source.json's name, else the folder's
    timm_name: str  # results.csv's dataset column: timm's name of a complete set ("imagenet-r"), else the name
    kind: str | None  # an eval_sets kind, or None for any other dataset (ImageNet's validation split)
    splits: dict  # {split: datasets.Dataset}
    label_names: list
    source: dict  # source.json ({} for a Hub dataset)
    whole_c: bool = False  # ImageNet-C scored in all its splits, as its mCE needs (not one --split of it)


# results.csv's names of complete sets, which rows of other data must not take (timm's tables would be diffed against
# a few images)
TIMM_NAMES = {"imagenet", "imagenet-real", "imagenet-r-clean", "imagenet-a-clean",
              *(info.timm_name.format(variant=variant) for info in eval_sets.SETS.values()
                for variant in eval_sets.V2_VARIANTS)}
# the names a part of a set is never shown under: timm's and the papers' (a folder named imagenet-sketch, ImageNet-R)
PUBLISHED_NAMES = TIMM_NAMES | {info.title.lower() for info in eval_sets.SETS.values()}


def wanted(cfg) -> bool:
    """Whether validate.py runs the multi-set scoring rather than its single-split one."""
    return bool(cfg.eval_sets or cfg.real_labels or cfg.image_sizes or cfg.benchmark_batch_sizes
                or cfg.mce_reference)


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag} takes whole numbers separated by commas (e.g. 160,224), "
                         f"got {text!r}") from None
    if any(v < 1 for v in values):
        raise SystemExit(f"error: {flag} values must be at least 1, got {text!r}")
    return values


def load_target(path: str, flag: str, split: str | None, given: bool = False) -> Target:
    """A dataset to score: its ``split`` (``None``: ``validation``), or every split of ImageNet-C unless the user
    named one (``given``: --split), which is then scored alone. Errors are one line naming ``flag``."""
    from modeling.card import dataset_source, public  # modeling imports imagenet_trainer, not the other way round

    # its kind and classes are preprocess.py's (--dataset: only a set's folder, a user's class tree loads as it is)
    if unread := (image_tree_line(path, flag) if flag == "--eval_sets" else unpacked_set_line(path, flag)):
        raise SystemExit(unread)
    try:
        ds = load_image_dataset(path)
    except ValueError as e:
        raise SystemExit(image_tree_line(path, flag) or f"error: {flag} {path}: {e}") from None
    source = dataset_source(path)
    kind = source.get("eval_set")
    if flag == "--eval_sets" and not kind:
        raise SystemExit(f"error: --eval_sets {path}: not an evaluation set made by preprocess.py (its source.json "
                         "names none); score other data with --dataset")
    # ImageNet-C's mCE needs every <corruption>_<severity> split; --split gaussian_noise_3 asks for one of them
    names = list(ds) if kind == eval_sets.C and not given else [split or "validation"]
    missing = [s for s in names if s not in ds]
    if missing:  # ImageNet-C has 75 to 95 splits: a few of them name the pattern
        have = ", ".join(ds) if len(ds) <= 8 else f"{', '.join(list(ds)[:5])}, ... ({len(ds)} splits)"
        raise SystemExit(f"error: {flag} {path}: no split {missing[0]!r}; it has {have}")
    empty = [s for s in names if len(ds[s]) == 0]
    if empty:  # scored, it would print a top-1 of 0% over n=0 images
        raise SystemExit(f"error: {flag} {path}: split {empty[0]!r} has no images"
                         + (f" ({len(empty)} such splits)" if len(empty) > 1 else "")
                         + "; its preprocess_report.json says which files were skipped and why")
    try:
        label_names = [check_labels(ds[s]) for s in names][0]
    except ValueError as e:
        raise SystemExit(f"error: {flag} {path}: {e}") from None
    name = source.get("name") or public(path)
    timm_name = source.get("timm_name") if source.get("complete") else None
    if kind == eval_sets.C and given:  # one split is none of the set's published numbers, nor the copy's mean
        part = " (subset)" if not timm_name and name.lower() in PUBLISHED_NAMES else ""
        # "ImageNet-C fog_3", "imagenet-c fog_3 (subset)" in the JSON, results.csv and the card
        name, timm_name = f"{name} {names[0]}{part}", None
    if not kind and source.get("ilsvrc2012_full") and names == ["validation"]:
        timm_name = "imagenet"
    if timm_name is None and name.lower() in PUBLISHED_NAMES:  # a part of a set, in a folder named as the whole is:
        name = timm_name = f"{name} (subset)"  # so on the console, in the JSON, results.csv and the card (README §4)
    return Target(path, name, timm_name or name, kind, {s: ds[s] for s in names}, label_names, source,
                  whole_c=kind == eval_sets.C and not given)


def image_tree_line(path: str, flag: str) -> str | None:
    """The error line for a local folder with no preprocess.py output in it (an evaluation set unpacked from its
    tarballs, a folder of JPEGs), else None. A preprocess.py output or a Hub clone's Parquet/Arrow files are data;
    only the top levels are looked at (a raw ImageNet-C is 3.75 million files)."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return None
    if any(p.suffix in (".parquet", ".arrow") for level in ("", "*/", "*/*/") for p in folder.glob(f"{level}*")):
        return None
    inside = eval_sets.sets_inside(folder)  # downloads/imagenet-r/: preprocess.py reads the set's own folder
    run = f"run preprocess.py --data_dir {folder / inside[0] if inside else path} --output_dir OUT on it first"
    if len(inside) > 1:
        run = (f"it holds {len(inside)} evaluation sets, {', '.join(inside)}: run preprocess.py --data_dir "
               f"{folder / inside[0]} --output_dir OUT on each first")
    return (f"error: {flag} {path}: no preprocess.py output there (no dataset_dict.json): {run} (--eval_set NAME "
            f"for a renamed set), then give OUT as {flag}")


def unpacked_set_line(path: str, flag: str) -> str | None:
    """``image_tree_line`` for a local folder that is, or holds, an evaluation set as its archive unpacks (told as
    preprocess.py tells it), else None: datasets' imagefolder would read its class folders as one train split (no
    --split validation, or another class count), never saying what to run. A user's class tree loads as before."""
    folder = Path(os.path.abspath(Path(path).expanduser()))  # "." and a trailing "/": the folder's own name
    try:
        return line if (line := image_tree_line(path, flag)) and eval_sets.detect(folder, "") else None
    except OSError:  # unreadable: the loader says so
        return None


def clean_kind(kind: str) -> str:
    """The kind, and timm's name, of the -clean row of R or A: ``imagenet-r-clean``."""
    return f"{eval_sets.SETS[kind].timm_name}-clean"


def clean_subsets(cfg, targets: list[Target], main_process: bool) -> dict[str, list[int]]:
    """{R or A: its 200 classes (1k indices, class_subset)} for the -clean rows of --dataset: each of the two among
    --eval_sets, when --dataset is ImageNet-1k data (its 1000 wnids; not an evaluation set); else {}."""
    if not cfg.dataset or targets[0].kind:
        return {}
    found = {t.kind: t.source["class_subset"] for t in targets[1:] if t.kind in (eval_sets.R, eval_sets.A)}
    if found and targets[0].label_names != imagenet_wnids():  # the masks are 1k indices
        if main_process:
            print(f"note: no {' or '.join(map(clean_kind, found))} row: --dataset {targets[0].path} does not have "
                  "ImageNet-1k's 1000 wnids as its classes, which the 200-class masks index")
        return {}
    return found


def real_scorer(cfg, target: Target | None) -> robustness.RealLabels | None:
    if not cfg.real_labels:
        return None
    if target is None:
        raise SystemExit("error: --real_labels scores --dataset's ILSVRC-2012 validation split; give --dataset")
    if target.kind:  # an evaluation set given as --dataset: the flag is there, its data is another set
        title = target.source.get("title") or eval_sets.SETS[target.kind].title
        raise SystemExit(f"error: --real_labels: --dataset {target.path} is {title}; ReaL relabels ILSVRC-2012's "
                         "validation split: give that as --dataset")
    if target.label_names != imagenet_wnids():
        raise SystemExit(f"error: --real_labels: --dataset {target.path} does not have ImageNet-1k's 1000 classes "
                         "(ReaL's labels are 1k indices)")
    (split,) = target.splits.values()
    if "image_id" not in split.column_names:
        raise SystemExit(f"error: --real_labels: --dataset {target.path} has no image_id column, which matches each "
                         "image to its real.json entry (ILSVRC2012_val_NNNNNNNN); give ILSVRC-2012's validation split "
                         "as preprocess.py writes it")
    try:
        real = robustness.read_real_labels(cfg.real_labels)
        return robustness.RealLabels(real, split["image_id"])
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def eval_loader(accelerator, split, image_size: int, crop_pct: float, interpolation: str, batch_size: int,
                num_workers: int, crop_mode: str = "center", mean=(0.485, 0.456, 0.406)):
    """The Accelerate-prepared loader of ``split`` in the model's eval transform (resize, centre crop, uint8; timm's
    ``crop_mode``, ``mean`` the padding colour of its border mode)."""
    eval_set = EvalSet(split, image_size, crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode,
                       mean=mean)
    check_shm(num_workers, image_size ** 2 * 3 * batch_size, local_processes(), ring_slots=0)  # uint8 batches
    loader = torch.utils.data.DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate, pin_memory=accelerator.device.type == "cuda",
                                         prefetch_factor=PREFETCH_FACTOR if num_workers else None,
                                         multiprocessing_context=worker_context() if num_workers else None)
    return accelerator.prepare_data_loader(loader)


def score_split(accelerator, model, split, size: int, transform: dict, cfg, subset=None, on_logits=None) -> dict:
    """top1, top5 (%), n, loss, left_out and left_out_rows (the images that do not decode) of one split;
    ``subset``: the 1k indices the logits are restricted to (R/A)."""
    batches = eval_loader(accelerator, split, size, transform["crop_pct"], transform["interpolation"],
                          cfg.batch_size, cfg.num_workers, transform["crop_mode"], transform["mean"])
    net = model
    if subset:
        net = robustness.ClassSubset(model, subset, accelerator.device)
        batches = robustness.subset_labels(batches, subset, len(split.features["label"].names), accelerator.device)
    topk, loss = evaluate(accelerator, net, batches, transform["mean"], transform["std"], transform["memory_format"],
                          flip=transform["flip"], on_logits=on_logits)
    return {**topk.compute(), "loss": loss, "left_out_rows": topk.left_out}


def parts_folder(output: str) -> Path:
    """Where a suite run with ``--output`` keeps each split's scores until its outputs are written (SplitParts)."""
    return Path(output).with_name(Path(output).stem + "_parts")


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): which weights made a set of scores."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes: real.json replaced in place keeps its path, not its labels."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError:  # gone since real_scorer read it: its next read says so in one line
        return f"unreadable {path}"


class SplitParts:
    """Each split's scores as soon as it is scored, in ``parts_folder(output)``: one JSON file a split, written
    atomically by the main process and named by a digest of all that makes its numbers (the weights, the eval
    transform and size, the split's data, the bytes of ReaL's labels file). ImageNet-C alone is 75 splits of 50,000
    images: a rerun of the same command after a crash, a time limit or a preemption scores only the splits not there
    yet.
    Without --output nothing is kept. The main process reads the folder once and gives every rank the same list."""

    def __init__(self, output: str, accelerator, model: torch.nn.Module, transform: dict, real_labels: str):
        self.folder = parts_folder(output) if output else None
        self.main, self.taken, self.unkept = accelerator.is_main_process, 0, 0
        self.base = {"weights": weights_digest(model) if self.folder else None,
                     "real_labels": file_digest(real_labels) if self.folder and real_labels else None,
                     "precision": accelerator.mixed_precision, "memory_format": str(transform["memory_format"]),
                     **{k: transform[k] for k in ("interpolation", "crop_mode", "mean", "std", "flip")}}
        found = {}
        if self.folder is not None and self.main and self.folder.is_dir():
            found = {f.stem: part for f in self.folder.glob("*.json") if (part := read_part(f)) is not None}
        self.kept = broadcast_object_list([found])[0] if accelerator.num_processes > 1 else found

    def key(self, target: Target, split: str, data, size: int, transform: dict) -> str:
        where = Path(target.path).expanduser()
        what = {**self.base, "dataset": str(where.resolve()) if where.exists() else target.path, "split": split,
                "rows": len(data), "fingerprint": getattr(data, "_fingerprint", None), "image_size": size,
                "crop_pct": transform["crop_pct"], "subset": target.source.get("class_subset")}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key: str, real, clean=()) -> dict | None:
        """The kept scores of ``key`` (ReaL's counts after that split restored into ``real``), or None; None too when
        they lack a -clean score of ``clean`` (R, A: kept by a run without that set), so the split is scored again."""
        part = self.kept.get(key)
        if part is None or (real is not None) != (part["real"] is not None):
            return None
        # ReaL's counts of another shape (kept without its left_out): the split is scored again
        if real is not None and (not isinstance(part["real"], list) or len(part["real"]) != len(real.counts())):
            return None
        if not set(clean) <= set(part["scores"].get("clean") or {}):
            return None
        if real is not None:
            real.restore(part["real"])
        self.taken += 1
        return part["scores"]

    def put(self, key: str, scores: dict, real) -> dict:
        if self.folder is not None and self.main:
            counts = None if real is None else real.counts()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.folder / f"{key}.json", json.dumps({"scores": scores, "real": counts}))
            except OSError as e:  # a full disk: the scores are in memory, and the run goes on to its outputs
                if not self.unkept:
                    print(f"warning: {self.folder}: cannot keep the splits' scores there ({e.strerror or e}); the "
                          "run goes on, but a rerun after an early end scores them again", file=sys.stderr)
                self.unkept += 1
        return scores


def read_part(path: Path) -> dict | None:
    """A split's kept scores (written whole, atomically), or None for a file that is not one: a copy cut short, or
    something else saved there; that split is scored again."""
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(part, dict) and isinstance(part.get("scores"), dict) and "real" in part
          and {"top1", "top5", "n", "loss"} <= part["scores"].keys())
    return part if ok else None


def bad_samples(targets: list[Target], limit: int) -> BadSamples:
    """The suite's undecodable images, every set's and split's together against --max_bad_samples, as validate.py
    counts one split's."""
    return BadSamples({split_label(t, s): ds for t in targets for s, ds in t.splits.items()}, limit)


def split_label(target: Target, split: str) -> str:
    return f"{target.name} {split}"


def score_target(accelerator, model, target: Target, size: int, transform: dict, cfg, real,
                 reference: dict | None, parts: SplitParts, bad: BadSamples, clean: dict | None = None) -> list[dict]:
    """The rows of one set at one size: one per set (C: the mean over its 15 benchmark corruptions' splits, with its
    mCE, every corruption's errors and counts, and relative to ``reference``'s errors when given), plus ReaL's when
    ``real`` is a scorer and a -clean row per entry of ``clean`` (clean_subsets). A split ``parts``
    kept is not scored again. Each split's undecodable images go to ``bad``, which stops the run past the limit."""
    if target.kind == eval_sets.C:  # its images are 224 px centre crops already: the authors resize no further
        transform = {**transform, "crop_pct": 1.0}
    clean = clean or {}
    by_split = {}
    for s, ds in target.splits.items():
        key = parts.key(target, s, ds, size, transform)
        by_split[s] = parts.get(key, real, clean)
        if by_split[s] is None:
            by_split[s] = parts.put(key, score_with_clean(accelerator, model, target, ds, size, transform, cfg, real,
                                                          clean), real)
        bad.add_left_out(split_label(target, s), by_split[s].get("left_out_rows", []),
                         warn=accelerator.is_main_process)
        bad.check()
    averaged = by_split
    if target.kind == eval_sets.C:  # as published: the 4 extra corruptions are held out (their errors: `errors`)
        averaged = {s: r for s, r in by_split.items()
                    if eval_sets.corruption_of(s)[0] in eval_sets.C_CORRUPTIONS} or by_split
    row = {"dataset": target.timm_name, "name": target.name, "kind": target.kind or "imagenet", "image_size": size,
           "crop_pct": transform["crop_pct"], "dataset_id": target.source.get("hub_id"),
           **({"variant": target.source["variant"]} if target.source.get("variant") else {}),  # V2's three
           **{k: sum(r[k] for r in averaged.values()) / len(averaged) for k in ("top1", "top5", "loss")},
           **{k: sum(r.get(k, 0) for r in averaged.values()) for k in ("n", "left_out")}}
    if not target.whole_c:  # one --split of ImageNet-C has no mCE: a CE sums a corruption's 5 severities
        row["split"] = next(iter(by_split))
        rows = [row]
    else:
        errors = robustness.corruption_errors({s: r["top1"] for s, r in by_split.items()})
        row.update(split="all", errors=errors, counts=corruption_counts(by_split),
                   **robustness.mean_corruption_error(errors))
        if reference:
            row["relative_to_reference"] = robustness.mean_corruption_error(errors, reference)
        rows = [row]
    if real:  # timm's name of ReaL's row only for the complete ILSVRC-2012 val, as the ImageNet row's
        name = f"{target.name} (ReaL labels)"
        rows.append({"dataset": "imagenet-real" if target.timm_name == "imagenet" else name, "name": name,
                     "kind": "imagenet-real", "image_size": size, "crop_pct": transform["crop_pct"],
                     "split": row["split"], **real.compute()})
    if clean:  # --dataset's one split
        rows += clean_rows(target, size, transform, row["split"], by_split[row["split"]]["clean"], clean,
                           accelerator.is_main_process)
    return rows


def score_with_clean(accelerator, model, target: Target, ds, size: int, transform: dict, cfg, real,
                     clean: dict) -> dict:
    """score_split of ``ds``, ReaL's counts into ``real``, and under ``scores["clean"]`` the -clean scores of each of
    ``clean``'s class subsets, counted from the logits of the same pass (a kept split carries them)."""
    counters = {kind: robustness.SubsetScores(subset, len(target.label_names), accelerator.device)
                for kind, subset in clean.items()}
    hooks = [h for h in (real.update if real else None, *(c.update for c in counters.values())) if h]
    scores = score_split(accelerator, model, ds, size, transform, cfg, target.source.get("class_subset"),
                         on_each(hooks))
    if counters:  # the images of each subset that do not decode, by their rows' labels
        labels = ds.with_format("arrow")["label"]
        lost = [labels[row].as_py() for row in scores["left_out_rows"]]
        scores["clean"] = {kind: c.compute(sum(label in classes for label in lost))
                           for kind, c in counters.items() for classes in [set(clean[kind])]}
    return scores


def on_each(hooks: list):
    """metrics.evaluate's ``on_logits`` calling each of ``hooks`` (None for none)."""
    if len(hooks) <= 1:
        return hooks[0] if hooks else None
    return lambda logits, labels: [hook(logits, labels) for hook in hooks]


def clean_rows(target: Target, size: int, transform: dict, split: str, scores: dict, wanted: dict,
               main_process: bool) -> list[dict]:
    """The -clean rows of ``target`` (ILSVRC-2012's val) from its split's ``scores``: timm's name only for the
    complete validation split (as the ImageNet row), else the copy's name, with its split when not validation, and
    its ``n`` (a subset's images of the 200 classes); none for a subset without an image of those classes."""
    rows = []
    for kind in wanted:
        title = eval_sets.SETS[kind].title
        name = f"{target.name}{'' if split == 'validation' else f' {split}'} ({title}'s 200 classes)"
        if not scores[kind]["n"]:  # a score over n=0 is no score
            if main_process:
                print(f"note: no {clean_kind(kind)} row at {size} px: no image of --dataset {target.path} {split} is "
                      f"of {title}'s 200 classes" + (" (they do not decode)" if scores[kind]["left_out"] else ""))
            continue
        rows.append({"dataset": clean_kind(kind) if target.timm_name == "imagenet" else name, "name": name,
                     "kind": clean_kind(kind), "image_size": size, "crop_pct": transform["crop_pct"],
                     "split": split, **scores[kind]})
    return rows


def corruption_counts(by_split: dict) -> dict:
    """{corruption: {"n": [...], "left_out": [...]} at severity 1..5}: every corruption's images scored and left out,
    the extra ones' too (the row's n and left_out count the 15 benchmark corruptions', as its top-1 does)."""
    counts: dict[str, dict[int, dict]] = {}
    for split, scores in by_split.items():
        corruption, severity = eval_sets.corruption_of(split)
        counts.setdefault(corruption, {})[severity] = scores
    return {c: {k: [by_severity[s].get(k, 0) for s in sorted(by_severity)] for k in ("n", "left_out")}
            for c, by_severity in counts.items()}


def run(cfg, accelerator, load_model, split_given: bool = False) -> dict:
    """Score everything asked for; ``load_model(cfg, targets, main_process)`` is validate.py's loader, which checks
    --model's classes against every target's. ``split_given``: --split was on the command line (ImageNet-C: only
    that split is scored)."""
    targets = ([load_target(cfg.dataset, "--dataset", cfg.split, split_given)] if cfg.dataset else []) + [
        load_target(p.strip(), "--eval_sets", None) for p in cfg.eval_sets.split(",") if p.strip()]
    real_scorer(cfg, targets[0] if cfg.dataset else None)  # bad --real_labels fail before the model loads
    reference = read_reference(cfg, targets)
    model = load_model(cfg, targets, accelerator.is_main_process)
    data_cfg = data_config(model)
    sizes = int_list(cfg.image_sizes, "--image_sizes") or [cfg.image_size or data_cfg["input_size"][-1]]
    headline = headline_size(sizes, data_cfg["input_size"][-1], accelerator.is_main_process)
    if reference:  # {size: errors}, each size's own
        reference = reference_at(reference, sizes, cfg.mce_reference)
    transform = eval_transform(cfg, data_cfg, model)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = robustness.gmacs(model.eval(), sizes[0], "cpu")
    parts = SplitParts(cfg.output, accelerator, model, transform, cfg.real_labels)
    clean = clean_subsets(cfg, targets, accelerator.is_main_process)
    bad = bad_samples(targets, cfg.max_bad_samples)
    model = accelerator.prepare_model(model.to(memory_format=transform["memory_format"]).eval(),
                                      evaluation_mode=True)
    rows = []
    for size in sizes:
        for t in targets:
            val = t is targets[0] and cfg.dataset
            real = real_scorer(cfg, t) if val else None  # fresh counts per size
            new = score_target(accelerator, model, t, size, transform, cfg, real,
                               reference[size] if reference else None, parts, bad, clean if val else None)
            if accelerator.is_main_process:
                print("\n".join(map(format_row, new)))
            rows += new
    if parts.taken and accelerator.is_main_process:
        print(f"{parts.taken} split(s) not scored again: their scores were kept in {parts.folder} by an earlier run "
              "of this command")
    summary = {"model": cfg.model, "results": rows, "params_m": round(params_m, 6), "gmacs": round(gmacs, 4),
               "image_size": headline, **{k: transform[k] for k in ("crop_pct", "crop_mode", "interpolation", "flip")},
               "num_processes": accelerator.num_processes}
    c_row = next((r for r in rows if "errors" in r and r["image_size"] == headline), None)
    if c_row:  # what --mce_reference reads, at the size it was scored at
        summary["imagenet_c"] = {k: c_row.get(k) for k in ("image_size", "errors", "counts", "ce", "mce",
                                                           "corruptions", "relative_to_reference")}
    if len(sizes) > 1:
        first = rows[0]["dataset"]
        best = max((r for r in rows if r["dataset"] == first), key=lambda r: r["top1"])
        summary["best_image_size"] = {"dataset": first, "image_size": best["image_size"], "top1": best["top1"]}
    if cfg.benchmark_batch_sizes:
        batch_sizes = int_list(cfg.benchmark_batch_sizes, "--benchmark_batch_sizes")
        summary["throughput"] = robustness.throughput(accelerator.unwrap_model(model), sizes[0], batch_sizes,
                                                      accelerator.device, cfg.benchmark_steps, accelerator.autocast,
                                                      transform["memory_format"], train=cfg.benchmark_train)
    return summary


def data_config(model) -> dict:
    """The model's eval transform as timm's validate.py resolves it (use_test_size unless --use_train_size): a
    pretrained_cfg's test_input_size and test_crop_pct over its input_size and crop_pct, so timm's weights are scored
    at the size of timm's results tables (resnet50.a1_in1k: trained at 224 px crop 0.95, scored at 288 px crop 1.0).
    This project's exports carry no test_* keys (modeling/hub.py drops them): their own size. --image_size and
    --crop_pct are applied over this."""
    return resolve_data_config(model=model, use_test_size=True)


def eval_transform(cfg, data_cfg: dict, model) -> dict:
    """The model's eval transform (timm's data config) with validate.py's flags applied; a crop mode timm does not
    have or a crop_pct <= 0 (a hand-edited config.json) is one line."""
    crop_mode = data_cfg.get("crop_mode") or "center"
    if crop_mode not in CROP_MODES:
        raise SystemExit(f"error: --model {cfg.model}: its pretrained_cfg crop_mode {crop_mode!r} is none of timm's "
                         f"{', '.join(CROP_MODES)}; correct its config.json")
    crop_pct = cfg.crop_pct or data_cfg["crop_pct"]  # --crop_pct's range is check_flags'
    if not crop_pct > 0:  # timm's resolve_data_config already turns 0 into its default 0.875
        raise SystemExit(f"error: --model {cfg.model}: its pretrained_cfg crop_pct {crop_pct} is not > 0 (0.875 "
                         "typical); correct its config.json or give --crop_pct")
    return {"crop_pct": crop_pct, "crop_mode": crop_mode,
            "interpolation": data_cfg["interpolation"], "mean": data_cfg["mean"], "std": data_cfg["std"],
            "memory_format": torch.channels_last if cfg.channels_last else torch.contiguous_format,
            "flip": getattr(model, "eval_flip", False) if cfg.flip is None else cfg.flip}


def headline_size(sizes: list[int], own: int, main_process: bool) -> int:
    """The size whose scores the card and the JSON's imagenet_c block give: the model's own eval size when it is
    among ``sizes`` (a sweep around it), else the first, which a note names."""
    if own in sizes:
        return own
    if main_process and len(sizes) > 1:
        print(f"note: the model's own eval size, {own} px, is not in --image_sizes: the card and the imagenet_c block "
              f"give the scores at {sizes[0]} px, the first size")
    return sizes[0]


def read_reference(cfg, targets: list[Target]) -> dict | None:
    """--mce_reference's errors (reference_errors), None without the flag. The flag with no ImageNet-C scored in all
    its splits is one line, said, not silently unused: one --split of it has no mCE to compare."""
    if not cfg.mce_reference:
        return None
    if not any(t.whole_c for t in targets):
        one = next((t for t in targets if t.kind == eval_sets.C), None)
        if one:
            raise SystemExit(f"error: --mce_reference {cfg.mce_reference}: --dataset {one.path} --split {cfg.split} "
                             "scores one split of ImageNet-C, and an mCE needs every corruption at its 5 severities; "
                             "drop --split or --mce_reference")
        raise SystemExit(f"error: --mce_reference {cfg.mce_reference}: no ImageNet-C among --dataset and --eval_sets "
                         "to compare it with; add the ImageNet-C output, or drop --mce_reference")
    try:
        return reference_errors(cfg.mce_reference)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def reference_errors(path: str) -> dict:
    """{image size (px; None where the JSON does not say): {corruption: mean error, fraction}} of a reference run,
    the JSON validate.py --output wrote with ImageNet-C (e.g. for this repository's own AlexNet): its ImageNet-C
    row at each size it scored, else its imagenet_c block. A ValueError naming the flag for any other file."""
    try:
        summary = json.loads(Path(path).expanduser().read_text())
        found = {r["image_size"]: r["errors"] for r in summary.get("results") or []
                 if isinstance(r, dict) and r.get("kind") == eval_sets.C and "errors" in r} or {  # not one --split
            summary["imagenet_c"].get("image_size"): summary["imagenet_c"]["errors"]}
        return {size: {c: sum(e) / len(e) / 100.0 for c, e in errors.items()} for size, errors in found.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        raise ValueError(f"--mce_reference {path}: not a validate.py --output JSON of an ImageNet-C run "
                         "(no imagenet_c.errors in it)") from None


def reference_at(by_size: dict, sizes: list[int], path: str) -> dict:
    """{size: the reference's errors at that size} for every size scored (an entry of unknown size serves all).
    One line for a size the reference was not scored at (ImageNet-C's errors depend on the resolution) and for a
    benchmark corruption it makes no error on there (a CE relative to 0% divides by zero)."""
    found = {}
    for size in sizes:
        found[size] = by_size.get(size, by_size.get(None))
        if found[size] is None:
            raise SystemExit(f"error: --mce_reference {path}: it scored ImageNet-C at "
                             f"{', '.join(map(str, sorted(by_size)))} px, not at {size} px as this run does; give a "
                             "reference scored at the same size (its --image_sizes)")
        perfect = [c for c in eval_sets.C_CORRUPTIONS if found[size].get(c) == 0]
        if perfect:
            raise SystemExit(f"error: --mce_reference {path}: its error on {perfect[0]} at {size} px is 0%, so an "
                             "error relative to it is undefined (a division by zero); give a reference run that errs "
                             "on every corruption")
    return found


def format_row(row: dict) -> str:
    extra = f"  mCE {row['mce']:.2f} ({row['corruptions']} corruptions)" if row.get("mce") is not None else ""
    left_out = f"  ({row['left_out']} left out: they do not decode)" if row.get("left_out") else ""
    held_out = (sum(sum(c["left_out"]) for c in row["counts"].values()) - row.get("left_out", 0)
                if "counts" in row else 0)  # ImageNet-C's rows alone have counts
    if held_out:  # ImageNet-C's extra corruptions: in its errors, not in the row's n and top-1
        left_out += f"  ({held_out} left out of the extra corruptions' errors: they do not decode)"
    return (f"{row['name']} [{row['split']}] @{row['image_size']}px: top-1 {row['top1']:.2f}%  "
            f"top-5 {row['top5']:.2f}%  n={row['n']}{extra}{left_out}")


def results_csv(summary: dict) -> str:
    """results.csv: timm's results columns (diff against its tables), one row per set and image size; the diffs
    are to the ImageNet row at the same size when there is one, as timm's tables diff ReaL, V2 and Sketch; R's and
    A's to their -clean row at that size (ImageNet's val on their 200 classes), as timm's do, and none without one:
    a diff to the 1000-class row would not line up with its tables."""
    from modeling.card import public

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=robustness.RESULTS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    base = {(r["kind"], r["image_size"]): r for r in summary["results"]}
    for r in summary["results"]:
        against = clean_kind(r["kind"]) if r["kind"] in (eval_sets.R, eval_sets.A) else "imagenet"
        own = r["kind"] == "imagenet" or r["kind"].endswith("-clean")  # a baseline: no diff
        baseline = None if own else base.get((against, r["image_size"]))
        writer.writerow(robustness.results_row(r["dataset"], public(summary["model"]), r, summary["params_m"],
                                               r["image_size"], r["crop_pct"], summary["interpolation"], baseline))
    return out.getvalue()


def update_card(folder: Path, summary: dict, cfg) -> None:
    """The export's card: the rows at the summary's image size (the model's own in a sweep around it), --dataset's
    through the single-set update (its Results section), every set's as a model-index entry and a row of the
    Results-by-dataset table."""
    import modeling
    from modeling.card_sets import update_card_sets

    size = summary.get("image_size", summary["results"][0]["image_size"])
    rows = [r for r in summary["results"] if r["image_size"] == size]
    main = rows[0] if cfg.dataset and rows[0]["kind"] == "imagenet" else None
    if main:
        modeling.update_model_card_results(folder, {
            **{k: main[k] for k in ("top1", "top5", "n", "image_size", "split")},
            **{k: summary[k] for k in ("crop_pct", "crop_mode", "interpolation", "flip")}, "dataset": cfg.dataset,
            "dataset_id": cfg.hub_dataset_id or None})
    # an mCE only of a complete copy (results.csv's timm name: a few images per split are no published mCE)
    complete_c = eval_sets.SETS[eval_sets.C].timm_name
    update_card_sets(folder, [{**r, "mce": r.get("mce") if r["dataset"] == complete_c else None,
                               "crop_mode": summary["crop_mode"], "interpolation": summary["interpolation"]}
                              for r in rows if r is not main])
