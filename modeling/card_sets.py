"""Results on several evaluation sets (ImageNet-V2, -Sketch, -R, -A, -C, ReaL) in a saved folder's model card.

One ``model-index`` entry per set and metric, merged into the metadata already there: an entry is replaced only by
a new one of the same set, split and metric, so results on other sets stay. The "Results by dataset" table of the
card text is rebuilt from that merged metadata each time, so the text never drops what the metadata holds.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard

from imagenet_trainer.runinfo import atomic_write_text

from .card import cell
from .hub import CARD_NAME, CONFIG_NAME, write_eval_results

SECTION = "## Results by dataset"
TOP1, TOP5, MCE = "top-1 accuracy (%)", "top-5 accuracy (%)", "mCE (%)"  # top-k names as card.py's _metric_name


def entries(rows: list[dict]) -> list[EvalResult]:
    """``rows``: {name, dataset_id (Hub id or None), split, top1, top5 (%), mce (%, ImageNet-C), image_size, variant
    (ImageNet-V2's)}. The variant is the entry's dataset config: the model-index groups entries by dataset id,
    config and split, not by name, so the three variants of vaishaal/ImageNetV2 would read back as one."""
    found = []
    for row in rows:
        metrics = [("accuracy", TOP1, row.get("top1")), ("accuracy", TOP5, row.get("top5")),
                   ("mCE", MCE, row.get("mce"))]
        found += [EvalResult(task_type="image-classification", task_name="Image Classification",
                             dataset_type=row.get("dataset_id") or row["name"], dataset_name=row["name"],
                             dataset_config=row.get("variant"),
                             dataset_split=row.get("split", "validation"), metric_type=kind, metric_name=metric,
                             metric_value=round(float(value), 2),
                             metric_config=f"{row['image_size']}px" if row.get("image_size") else None)
                  for kind, metric, value in metrics if value is not None]
    return found


def _key(e: EvalResult) -> tuple:
    return e.dataset_type, e.dataset_name, e.dataset_split, e.metric_name


def merge(old: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    keys = {_key(e) for e in new}
    return [e for e in old or [] if _key(e) not in keys] + new


def section(results: list[EvalResult]) -> str:
    """The markdown table of every (dataset, split) in ``results``, in the metadata's order."""
    table: dict[tuple, dict] = {}
    for e in results:
        table.setdefault((e.dataset_name, e.dataset_split), {})[e.metric_name] = e.metric_value
    def value(metrics, name):
        return f"{metrics[name]:.2f}" if name in metrics else "-"
    lines = [SECTION, "", "| dataset | split | top-1 (%) | top-5 (%) | mCE (%) |", "|---|---|---|---|---|"]
    lines += [f"| {cell(name)} | {cell(split)} | {value(m, TOP1)} | {value(m, TOP5)} | {value(m, MCE)} |"
              for (name, split), m in table.items()]
    lines += ["", "R and A: top-k over their 200 classes; ReaL: the labels of Beyer et al. 2020, images without a "
              "label left out; mCE: ImageNet-C's corruption errors normalised by AlexNet's (lower is better).", ""]
    return "\n".join(lines)


def update_card_sets(folder, rows: list[dict]) -> None:
    """Merge ``rows`` (see ``entries``) into ``folder``'s README.md (metadata and the Results-by-dataset table)
    and, for sets on the Hub, their ``.eval_results/`` files (huggingface_hub 2.x's format)."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise ValueError(f"{folder}: no {CARD_NAME}; write the folder with modeling.save_pretrained first")
    card = ModelCard.load(folder / CARD_NAME)
    card.data.eval_results = merge(card.data.eval_results, entries(rows))
    ids = [r["dataset_id"] for r in rows if r.get("dataset_id")]
    card.data.datasets = list(dict.fromkeys([*(card.data.datasets or []), *ids])) or None
    if not card.data.model_name:
        card.data.model_name = json.loads((folder / CONFIG_NAME).read_text())["architecture"]
    body, text = card.text, section(card.data.eval_results)
    match = re.search(rf"^{SECTION}\n.*?(?=^## |\Z)", body, flags=re.S | re.M)
    if match:
        body = body[:match.start()] + text + "\n" + body[match.end():]
    elif "\n## Training" in body:
        body = body.replace("\n## Training", "\n" + text + "\n## Training", 1)
    else:
        body = body.rstrip("\n") + "\n\n" + text + "\n"
    atomic_write_text(folder / CARD_NAME, f"---\n{card.data.to_yaml()}\n---\n{body}")
    for row in rows:
        if row.get("dataset_id"):
            write_eval_results(folder, eval_results_row(row), row["dataset_id"])


def eval_results_row(row: dict) -> dict:
    """``row`` as ``.eval_results/`` records it, its variant (ImageNet-V2's) and eval transform in the notes."""
    return {k: row[k] for k in ("top1", "top5", "split", "n", "variant", "image_size", "crop_pct", "crop_mode",
                                "interpolation") if row.get(k) is not None}
