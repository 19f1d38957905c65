"""Evaluate a backbone: top-1/top-5, loss, images/s, per-class accuracy and the most-confused pairs.

    python validate.py --model runs/r50/final --dataset OUT [--split validation] [--batch_size 256] [--output r.json]
    accelerate launch validate.py --model user/resnet50-in1k --dataset OUT     # same numbers on 1 or N processes
    python validate.py --model runs/r50/final --dataset OUT --real_labels real.json --eval_sets V2,SKETCH,R,A,C \
        --image_sizes 192,224,256 --benchmark_batch_sizes 1,256 --output r.json   # the papers' suite, one run

--model is a train.py export (RUN/final), a training checkpoint (RUN/checkpoints/step_N), a Hub id (timm's or ours) or
a timm name with its pretrained tag (resnet50.a1_in1k: timm's weights, from the local Hub cache when offline).
The eval transform is the model's own (resize to image_size / crop_pct, center crop, its mean/std); for a checkpoint
it is the one train.py evaluated with (the run's --eval_image_size, else its --image_size, and the architecture's
crop_pct/mean/std), so the numbers equal the val_* rows of the run's metrics.jsonl. Works offline: top-k is computed
here, not by `evaluate.load("accuracy")`, which needs the Hub (huggingface/evaluate #456).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the heavy imports: the DataLoader workers' fork server imports what they need
    # beside this process's imports, not after them (imagenet_trainer/worker_processes.py)
    from imagenet_trainer import worker_processes

    worker_processes.start_early(sys.argv[1:])

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import yaml
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data import resolve_data_config
from tqdm.auto import tqdm

import modeling
from imagenet_trainer import checkpoints
from imagenet_trainer.bad_samples import BadSamples
from imagenet_trainer.config import parse_config
from imagenet_trainer import eval_suite
from imagenet_trainer.data import check_labels, load_image_dataset
from imagenet_trainer.ilsvrc import class_descriptions
from imagenet_trainer.metrics import evaluate
from imagenet_trainer.process_exit import exit_now
from imagenet_trainer.runinfo import atomic_write_text

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's, in the order train.py nests them


@dataclass(kw_only=True)  # kw_only: required fields stand among fields with defaults
class ValidateConfig:
    model: str  # RUN/final, RUN/checkpoints/step_N, a Hub model id (OWNER/NAME) or a timm name (resnet50.a1_in1k)
    dataset: str = ""  # preprocess.py output folder or Hub dataset id
    split: str = "validation"  # dataset split to evaluate
    batch_size: int = 256  # images per device per forward pass
    image_size: int = 0  # eval crop side in px; 0 uses the model's (a checkpoint's: the run's eval size)
    num_workers: int = 8  # DataLoader processes per device; JPEG decoding is the CPU cost
    channels_last: bool = True  # NHWC: faster convolutions on GPUs
    flip: bool | None = None  # mean logits of each image and its mirror; none: a checkpoint's own --eval_flip, else off
    output: str = ""  # JSON summary path; <stem>_per_class.json and <stem>_confused.json are written beside it (a
    # suite run: <stem>_results.csv, and <stem>_parts/ until the end, so that a rerun scores only what is missing)
    update_model_card: bool = False  # write the results into --model's README.md and metadata (local exports only)
    hub_dataset_id: str = ""  # Hub id of --dataset's data (OWNER/NAME) for the card's metadata; full ILSVRC: automatic
    # Scoring like the papers (imagenet_trainer/eval_suite.py): any of these scores every set in one run
    eval_sets: str = ""  # comma-separated preprocess.py outputs of ImageNet-V2/-Sketch/-R/-A/-C, scored after --dataset
    real_labels: str = ""  # ReaL's real.json (Beyer et al. 2020): --dataset's ILSVRC-2012 val also scored against it
    image_sizes: str = ""  # px, comma-separated (160,192,224): each scored, the best named (FixRes, Touvron 2019)
    crop_pct: float = 0.0  # centre crop / resized side (0.875: resize 256, crop 224); 0 = the model's own
    mce_reference: str = ""  # validate.py --output JSON of a reference model on ImageNet-C: mCE relative to it too
    benchmark_batch_sizes: str = ""  # e.g. 1,256: inference images/s at each on random input (timm's benchmark.py)
    benchmark_steps: int = 20  # timed forward passes per batch size (a quarter as many warm-up passes first)
    benchmark_train: bool = False  # also time a training step (forward, backward, SGD update) at those batch sizes
    # a flipped byte costs one image; more than a few mean a damaged copy, which preprocess.py --verify names
    max_bad_samples: int = 10  # undecodable images left out of the scores (and named) before it fails instead


def load_checkpoint(path: Path) -> torch.nn.Module:
    """The model of a train.py checkpoint (accelerate save_state folder): architecture and eval settings from the
    config.yaml train.py saves in it (imagenet-trainer 0.1.0's may lack it: then the run's, two levels up), class
    count from the saved classifier. Its pretrained_cfg gets that size, as train.py's export does, so the eval
    transform is the one train.py evaluated with. These are the raw weights: with --ema_decay the EMA copy sits in
    custom_checkpoint_*.pkl (pickled, not read here); its export is RUN/final."""
    run_config = path / "config.yaml" if (path / "config.yaml").is_file() else path.parent.parent / "config.yaml"
    if (path / "checkpoints").is_dir():
        raise ValueError("this is a run folder: give RUN/final or RUN/checkpoints/step_N")
    if not (path / "model.safetensors").is_file() or not run_config.is_file():
        raise ValueError(f"neither an export folder (config.json) nor a train.py checkpoint (model.safetensors with "
                         f"{run_config}); FSDP sharded checkpoints are not read, use the run's final export")
    run = yaml.safe_load(run_config.read_text())
    if not isinstance(run, dict) or not run.get("model"):
        raise ValueError(f"{run_config} names no model; it is not the config.yaml train.py writes")
    if (damaged := checkpoints.problem(path)) is not None:
        raise ValueError(f"damaged checkpoint: {damaged}; give another step_N of the run")
    try:
        saved = load_file(path / "model.safetensors")
    except SafetensorError as e:
        raise ValueError(f"{path / 'model.safetensors'} is damaged ({e}); give another step_N of the run") from None
    weights = {}
    for key, value in saved.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        weights[key] = value
    model = modeling.create_model(run["model"])
    head = weights.get(f"{model.pretrained_cfg.get('classifier')}.weight")
    if head is not None and head.shape[0] != model.num_classes:
        model = modeling.create_model(run["model"], num_classes=head.shape[0])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # the checkpoint is of another architecture than config.yaml says
        raise ValueError(f"its weights do not fit {run['model']} from {run_config} "
                         f"({str(e).strip().splitlines()[0]})") from None
    # train.py evaluates at --eval_image_size when it is > 0 (FixRes: train small, test large), else at --image_size
    size = next((s for s in (run.get("eval_image_size"), run.get("image_size")) if isinstance(s, int) and s > 0),
                model.pretrained_cfg["input_size"][-1])
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
    model.eval_flip = bool(run.get("eval_flip"))  # the run's --eval_flip: metrics.jsonl's numbers used it
    return model.eval()


def is_timm_name(ref: str) -> bool:
    """``resnet50`` or ``resnet50.a1_in1k``: a timm architecture (with a pretrained tag), not a path or Hub repo."""
    return "/" not in ref and not Path(ref).expanduser().exists() and timm.is_model(ref.split(".")[0])


def load_any(path_or_id: str) -> torch.nn.Module:
    """An export folder (config.json), a train.py checkpoint, a Hub id (``modeling.load_model``) or a timm name
    with its pretrained tag (timm's weights, as ``timm.create_model(name, pretrained=True)`` resolves them)."""
    if path_or_id.startswith(("hf-hub:", "local-dir:")):
        return modeling.load_model(path_or_id)
    if is_timm_name(path_or_id):
        return modeling.create_model(path_or_id, pretrained=True).eval()
    path = Path(path_or_id).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return load_checkpoint(path)
    if not path.exists() and (path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1):
        raise ValueError("no such folder (give RUN/final, RUN/checkpoints/step_N or a Hub id OWNER/NAME)")
    return modeling.load_model(path_or_id)


def check_model_classes(model_ref: str, label_names: list[str]) -> str | None:
    """Same classes in the same index order, or the accuracy is computed against the wrong labels: a ValueError when
    only the order differs, a warning (returned) when the names cannot be compared. Ids (wnids) are compared and so
    are human names, since Hub copies of ImageNet may name their ClassLabels by description."""
    if is_timm_name(model_ref):  # timm's ImageNet weights: their classes are its ImageNet subset's, if any
        pretrained_cfg = timm.models.get_pretrained_cfg(model_ref)
        subset = timm.data.infer_imagenet_subset(pretrained_cfg.to_dict() if pretrained_cfg else {})
        info = timm.data.ImageNetInfo(subset) if subset else None
        ids, descriptions = (info.label_names(), info.label_descriptions()) if info else (None, None)
    else:
        ids, descriptions = modeling.label_info(model_ref)
    if ids is None or label_names in (ids, descriptions):
        return None
    if set(label_names) in (set(ids), set(descriptions or ())):
        raise ValueError(f"it has the dataset's classes in another index order (model: {ids[:3]}..., dataset: "
                         f"{label_names[:3]}...); re-export it or preprocess with the same class order")
    return (f"warning: --model's class names ({ids[:3]}...) are not the dataset's ({label_names[:3]}...); scoring "
            "by class index")


def load_scored_model(cfg, label_names: list[str], flag: str, main_process: bool) -> torch.nn.Module:
    """--model, checked against the classes of the data ``flag`` names; a one-line SystemExit when it cannot
    score them, a warning on stderr when its class names are not the data's."""
    try:
        model = load_any(cfg.model)
        if model.num_classes != len(label_names):
            raise ValueError(f"it predicts {model.num_classes} classes but {flag} "
                             f"{cfg.dataset if flag == '--dataset' else cfg.eval_sets} has {len(label_names)}")
        local = Path(cfg.model).expanduser()
        warning = None  # a checkpoint has no labels of its own: its classes are its run's dataset's
        if not local.is_dir() or (local / "config.json").is_file():
            warning = check_model_classes(cfg.model, label_names)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --model {cfg.model}: {e}") from None
    if warning and main_process:
        print(warning, file=sys.stderr)
    return model


def main(argv=None):
    cfg = parse_config(ValidateConfig, argv, description=__doc__.split("\n")[0])
    if not cfg.dataset and not cfg.eval_sets:
        raise SystemExit("error: --dataset is required (or --eval_sets)")
    for flag, low in (("batch_size", 1), ("image_size", 0), ("num_workers", 0), ("benchmark_steps", 1),
                      ("max_bad_samples", 0)):
        if getattr(cfg, flag) < low:  # image_size 0: the model's own
            raise SystemExit(f"error: --{flag} must be at least {low}, got {getattr(cfg, flag)}")
    if not 0 <= cfg.crop_pct <= 1:
        raise SystemExit(f"error: --crop_pct must be in (0, 1] (0 = the model's own), got {cfg.crop_pct}")
    if cfg.update_model_card and not (Path(cfg.model) / "config.json").is_file():  # fail before the long eval
        raise SystemExit(f"error: --update_model_card needs a local export folder (RUN/final), not {cfg.model}")
    if cfg.hub_dataset_id and not modeling.is_repo_id(cfg.hub_dataset_id):
        raise SystemExit(f"error: --hub_dataset_id must be a Hub dataset id OWNER/NAME, got {cfg.hub_dataset_id!r}")
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())  # cpu=True: DDP on GPU-less hosts
    if eval_suite.wanted(cfg) or is_eval_set(cfg.dataset):
        return score_suite(cfg, accelerator)

    # data: checked before the model, whose download may be long
    try:
        ds = load_image_dataset(cfg.dataset)
    except ValueError as e:
        raise SystemExit(f"error: --dataset {cfg.dataset}: {e}") from None
    if cfg.split not in ds:
        raise SystemExit(f"error: --split {cfg.split}: the dataset has {', '.join(ds)}")
    split = ds[cfg.split]
    if len(split) == 0:
        raise SystemExit(f"error: --split {cfg.split} of --dataset {cfg.dataset} has no images")
    try:
        label_names = check_labels(split)
    except ValueError as e:
        raise SystemExit(f"error: --split {cfg.split}: {e}") from None

    model = load_scored_model(cfg, label_names, "--dataset", accelerator.is_main_process)
    data_cfg = resolve_data_config(model=model)
    if cfg.crop_pct:
        data_cfg["crop_pct"] = cfg.crop_pct
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).eval()
    # evaluation_mode: device placement and mixed precision, but no DDP/FSDP wrapper (there is nothing to sync);
    # every rank keeps a full replica and scores its shard of the batches
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = eval_suite.eval_loader(accelerator, split, image_size, data_cfg["crop_pct"], data_cfg["interpolation"],
                                    cfg.batch_size, cfg.num_workers)
    mean, std = data_cfg["mean"], data_cfg["std"]  # 0..1 units; normalize() runs on the device, after the uint8 copy

    start = time.perf_counter()
    batches = tqdm(loader, disable=not accelerator.is_main_process, desc=f"validate {cfg.split}")
    flip = getattr(model, "eval_flip", False) if cfg.flip is None else cfg.flip
    topk, loss = evaluate(accelerator, model, batches, mean, std, memory_format, flip=flip)  # train.py's code
    elapsed = time.perf_counter() - start
    bad = BadSamples({cfg.split: split}, cfg.max_bad_samples)
    bad.add_left_out(cfg.split, topk.left_out, warn=accelerator.is_main_process)
    bad.check()
    summary = {"model": cfg.model, "dataset": cfg.dataset, "split": cfg.split, **topk.compute(),
               "loss": loss, "images_per_sec": topk.n / elapsed,
               "image_size": image_size, "crop_pct": data_cfg["crop_pct"], "interpolation": data_cfg["interpolation"],
               "flip": flip, "num_processes": accelerator.num_processes}
    accelerator.end_training()  # destroys the process group under DDP
    if not accelerator.is_main_process:
        return summary
    print(f"{cfg.split}: top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  loss {summary['loss']:.4f}  "
          f"n={summary['n']}  {summary['images_per_sec']:.1f} img/s"
          + (f"  ({summary['left_out']} left out: they do not decode)" if summary["left_out"] else ""))
    if cfg.output:
        out = Path(cfg.output)
        descriptions = class_descriptions(ds)
        per_class = [{**row, "wnid": label_names[row["label"]], "name": descriptions[row["label"]]}
                     for row in topk.per_class()]
        confused = [{**row, "true_name": descriptions[row["true"]], "predicted_name": descriptions[row["predicted"]]}
                    for row in topk.most_confused(20)]
        atomic_write_text(out, json.dumps(summary, indent=2))
        atomic_write_text(out.with_name(out.stem + "_per_class.json"), json.dumps(per_class, indent=1))
        atomic_write_text(out.with_name(out.stem + "_confused.json"), json.dumps(confused, indent=1))
        print(f"wrote {out} and its _per_class/_confused companions")
    if cfg.update_model_card:
        # the eval transform goes with the numbers: --image_size may differ from the export's own input size
        modeling.update_model_card_results(Path(cfg.model), {
            **{k: summary[k] for k in ("top1", "top5", "n", "image_size", "crop_pct", "interpolation", "flip")},
            "split": cfg.split, "dataset": cfg.dataset, "dataset_id": cfg.hub_dataset_id or None})
        print(f"wrote the results into {Path(cfg.model) / 'README.md'}")
    return summary


def is_eval_set(dataset: str) -> bool:
    """A preprocess.py output of ImageNet-R, -C, ...: scored the way its paper does (mask, mCE) by the suite."""
    return bool(modeling.card.dataset_source(dataset).get("eval_set"))


def score_suite(cfg: ValidateConfig, accelerator: Accelerator) -> dict:
    """--eval_sets, --real_labels, --image_sizes, --benchmark_batch_sizes: every set and size in one run, into the
    summary, <stem>_results.csv and the card (imagenet_trainer/eval_suite.py)."""
    summary = eval_suite.run(cfg, accelerator, load_scored_model)
    accelerator.end_training()
    if not accelerator.is_main_process:
        return summary
    if "best_image_size" in summary:
        best = summary["best_image_size"]
        print(f"best image size on {best['dataset']}: {best['image_size']} px (top-1 {best['top1']:.2f}%)")
    for row in summary.get("throughput", []):
        train = f", train {row['train_samples_per_sec']:.1f} img/s" if row.get("train_samples_per_sec") else ""
        print(f"throughput at batch {row['batch_size']}: inference {row['infer_samples_per_sec']:.1f} img/s{train} "
              f"({summary['params_m']:.2f} M params, {summary['gmacs']:.3g} GMACs)")
    if cfg.output:
        eval_suite.write_outputs(summary, cfg.output)
    if cfg.update_model_card:
        eval_suite.update_card(Path(cfg.model), summary, cfg)
        print(f"wrote the results into {Path(cfg.model) / 'README.md'}")
    if cfg.output:
        shutil.rmtree(eval_suite.parts_folder(cfg.output), ignore_errors=True)  # every split is in the outputs now
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_now()  # everything is written: skip the interpreter's teardown (imagenet_trainer/process_exit.py)
