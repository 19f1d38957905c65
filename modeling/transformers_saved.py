"""Folders that transformers wrote (``Trainer``, ``run_image_classification_no_trainer.py``, ``save_pretrained`` of a
``TimmWrapperForImageClassification``) back into timm and this project with their weights and labels.

transformers 5.24 and 5.25 write such a folder in timm's layout with two differences that matter here:

- the weights of a wrapper loaded with ``trust_remote_code=True`` (the remote class is not transformers' own, so its
  key conversion does not apply) are saved under ``timm_model.``: timm's ``local-dir:`` then fails on every key;
- the labels of a fine-tune live in the root ``label_names``/``id2label`` (written from the new head's
  ``id2label``) while ``pretrained_cfg.label_names`` still lists the classes of the weights it started from.
"""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

PREFIX = "timm_model."  # TimmWrapperModel/ForImageClassification's attribute holding the timm network


def wrapper_saved_state(weights: Path) -> dict | None:
    """The timm state dict of a ``model.safetensors`` whose keys transformers prefixed; None when none are."""
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        if not keys or not all(k.startswith(PREFIX) for k in keys):
            return None
        return {k[len(PREFIX):]: f.get_tensor(k) for k in keys}


def saved_by_transformers(config: dict) -> bool:
    return "model_type" in config  # transformers writes it; save_pretrained here does not


def head_labels(config: dict) -> list[str] | None:
    """The labels of the saved head as transformers keeps them (root ``label_names``, else ``id2label`` in index
    order); None without either."""
    names = config.get("label_names")
    if names:
        return list(names)
    id2label = config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))] if id2label else None
