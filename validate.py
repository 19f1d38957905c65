"""Evaluate a backbone: top-1/top-5, loss, images/s, per-class accuracy and the most-confused pairs.

    python validate.py --model runs/r50/final --dataset OUT [--split validation] [--batch_size 256] [--output r.json]
    accelerate launch validate.py --model user/resnet50-in1k --dataset OUT     # same numbers on 1 or N processes

--model is a train.py export (RUN/final), a training checkpoint (RUN/checkpoints/step_N) or a Hub id (timm's or ours).
The eval transform is the model's own (resize to image_size / crop_pct, center crop, its mean/std). Works offline:
top-k is computed here, not by `evaluate.load("accuracy")`, which needs the Hub.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from timm.data import resolve_data_config
from tqdm.auto import tqdm

import modeling
from imagenet_trainer.config import parse_config
from imagenet_trainer.data import EvalSet, collate, load_image_dataset, normalize
from imagenet_trainer.ilsvrc import class_descriptions
from imagenet_trainer.metrics import TopK
from imagenet_trainer.runinfo import atomic_write_text


@dataclass
class ValidateConfig:
    model: str = ""  # RUN/final folder, RUN/checkpoints/step_N folder, or Hub model id
    dataset: str = ""  # preprocess.py output folder or Hub dataset id
    split: str = "validation"  # dataset split to evaluate
    batch_size: int = 256  # images per device per forward pass
    image_size: int = 0  # eval crop side in px; 0 uses the model's pretrained_cfg input size
    num_workers: int = 8  # DataLoader processes per device
    channels_last: bool = True  # NHWC: faster convolutions on GPUs
    output: str = ""  # JSON summary path; per-class accuracy and confusions are written beside it
    update_model_card: bool = False  # write the results into --model's README.md model-index (local folders only)


def load_any(path_or_id: str, num_classes: int) -> torch.nn.Module:
    """An export folder (config.json), a train.py checkpoint (weights + the run's config.yaml two levels up), or a Hub id."""
    path = Path(path_or_id)
    if (path / "config.json").is_file() or not path.exists():
        return modeling.load_model(path_or_id)
    run_config = path.parent.parent / "config.yaml"
    if not (path / "model.safetensors").is_file() or not run_config.is_file():
        raise ValueError(f"{path} is neither an export folder (config.json) nor a train.py checkpoint "
                         f"(model.safetensors with {run_config})")
    model = modeling.create_model(yaml.safe_load(run_config.read_text())["model"], num_classes=num_classes)
    # DDP and torch.compile prefix the saved keys ("module.", "_orig_mod.")
    weights = {k.replace("module.", "", 1).replace("_orig_mod.", "", 1): v
               for k, v in load_file(path / "model.safetensors").items()}
    model.load_state_dict(weights)
    return model


def main(argv=None):
    cfg = parse_config(ValidateConfig, argv, description=__doc__.split("\n")[0])
    for flag in ("model", "dataset"):
        if not getattr(cfg, flag):
            raise SystemExit(f"error: --{flag} is required")
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    try:
        ds = load_image_dataset(cfg.dataset)
    except ValueError as e:
        raise SystemExit(f"error: --dataset {cfg.dataset}: {e}") from None
    if cfg.split not in ds:
        raise SystemExit(f"error: --split {cfg.split}: the dataset has {', '.join(ds)}")
    split = ds[cfg.split]
    label_names = split.features["label"].names
    try:
        model = load_any(cfg.model, len(label_names))
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --model {cfg.model}: {e}") from None
    if model.num_classes != len(label_names):
        raise SystemExit(f"error: --model {cfg.model} predicts {model.num_classes} classes but --dataset has "
                         f"{len(label_names)}")
    if split[0]["label"] < 0:
        raise SystemExit(f"error: --split {cfg.split} has no labels (ILSVRC's test split never had public labels)")

    data_cfg = resolve_data_config(model=model)
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    eval_set = EvalSet(split, image_size, crop_pct=data_cfg["crop_pct"], interpolation=data_cfg["interpolation"])
    loader = torch.utils.data.DataLoader(eval_set, batch_size=cfg.batch_size, shuffle=False,
                                         num_workers=cfg.num_workers, collate_fn=collate,
                                         pin_memory=accelerator.device.type == "cuda")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).eval()
    model, loader = accelerator.prepare(model, loader)
    mean, std = data_cfg["mean"], data_cfg["std"]  # 0..1 units; normalize() runs on the device, after the uint8 copy

    topk, loss_sum = TopK(), torch.zeros((), device=accelerator.device, dtype=torch.float64)
    start = time.perf_counter()
    with torch.no_grad():
        for x, y in tqdm(loader, disable=not accelerator.is_main_process, desc=f"validate {cfg.split}"):
            x = normalize(x, mean, std).contiguous(memory_format=memory_format)
            with accelerator.autocast():
                logits = model(x)
            logits, y = accelerator.gather_for_metrics((logits.float(), y))  # no duplicated tail samples
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            topk.update(logits, y)
    elapsed = time.perf_counter() - start
    summary = {"model": cfg.model, "dataset": cfg.dataset, "split": cfg.split, **topk.compute(),
               "loss": loss_sum.item() / max(1, topk.n), "images_per_sec": topk.n / elapsed,
               "image_size": image_size, "crop_pct": data_cfg["crop_pct"], "num_processes": accelerator.num_processes}
    if not accelerator.is_main_process:
        return summary
    print(f"{cfg.split}: top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  loss {summary['loss']:.4f}  "
          f"n={summary['n']}  {summary['images_per_sec']:.1f} img/s")
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
    if cfg.update_model_card:
        if not (Path(cfg.model) / "config.json").is_file():
            raise SystemExit(f"error: --update_model_card needs a local export folder, not {cfg.model}")
        modeling.update_model_card_results(Path(cfg.model), {"top1": summary["top1"], "top5": summary["top5"],
                                                             "split": cfg.split, "dataset": cfg.dataset,
                                                             "n": summary["n"]})
        print(f"wrote the results into {Path(cfg.model) / 'README.md'}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
