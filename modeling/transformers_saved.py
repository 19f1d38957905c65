"""Folders that transformers wrote (``Trainer``, ``run_image_classification_no_trainer.py``, ``save_pretrained`` of a
``TimmWrapperForImageClassification``) back into timm and this project with their weights and labels.

transformers 5.24 and 5.25 write such a folder in timm's layout with two differences that matter here:

- the weights of a wrapper loaded with ``trust_remote_code=True`` (the remote class is not transformers' own, so its
  key conversion does not apply) are saved under ``timm_model.``: timm's ``local-dir:`` then fails on every key
  (a family's ``modeling_<family>.py``; ``modeling_one_channel.py``'s classes save timm's names, as transformers'
  own class does);
- the labels of a fine-tune live in the root ``label_names``/``id2label`` (written from the new head's
  ``id2label``) while ``pretrained_cfg.label_names`` still lists the classes of the weights it started from.

``exported_features`` is timm's ``features_only`` model of such a folder (or of one written here) with every saved
weight in it, whatever the family's own loader does; the exports' ``modeling_<family>.py`` carries a copy of it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import timm
from safetensors import safe_open
from safetensors.torch import load_file

PREFIX = "timm_model."  # TimmWrapperModel/ForImageClassification's attribute holding the timm network


def wrapper_saved_state(weights: Path) -> dict | None:
    """The timm state dict of a ``model.safetensors`` whose keys transformers prefixed; None when none are."""
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        if not keys or not all(k.startswith(PREFIX) for k in keys):
            return None
        return {k[len(PREFIX):]: f.get_tensor(k) for k in keys}


def saved_keys(weights: Path) -> list[str]:
    """The state-dict keys of a ``model.safetensors`` (no tensor read), transformers' prefix removed."""
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    return [k[len(PREFIX):] for k in keys] if keys and all(k.startswith(PREFIX) for k in keys) else keys


def classifier_names(config: dict) -> list[str]:
    """The classifier modules config.json's ``pretrained_cfg`` names (one name, or several: DeiT's head and
    head_dist)."""
    head = (config.get("pretrained_cfg") or {}).get("classifier")
    return [head] if isinstance(head, str) else list(head or ())


def saved_headless(config: dict, keys) -> bool:
    """The weights hold no classifier while config.json names one and keeps the class count: transformers' AutoModel
    (TimmWrapperModel, built for 0 classes) saved them."""
    heads, keys = classifier_names(config), set(keys)
    return bool(heads) and not any(f"{name}.weight" in keys for name in heads)


def load_saved_weights(model, state: dict, config: dict, where) -> bool:
    """Load ``state`` (timm's key names) into ``model``, built from the folder of config.json ``config``, strictly:
    every tensor of the network must be saved, with its shape, and nothing else may be. A classifier of another class
    count, or none saved (AutoModel), leaves the head as built, as timm's loader does for a new class count; returns
    whether it did. Raises ValueError in one line naming ``where``."""
    heads = classifier_names(config)
    in_head = tuple(f"{name}." for name in heads)
    classes = getattr(model, "num_classes", 0)
    new_head = bool(heads) and (not classes or any(
        f"{name}.weight" not in state or state[f"{name}.weight"].shape[0] != classes for name in heads))
    if new_head:
        state = {k: v for k, v in state.items() if not k.startswith(in_head)}
    arch = config.get("architecture")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ: torch lists every tensor, one line names the first
        lines = str(e).splitlines()
        raise ValueError(f"{where}: model.safetensors does not fit architecture '{arch}' as built "
                         f"({(lines[1:] or lines)[0].strip()})") from None
    wrong = [k for k in result.missing_keys if not (new_head and k.startswith(in_head))] + result.unexpected_keys
    if wrong:
        raise ValueError(f"{where}: model.safetensors does not fit architecture '{arch}' ({', '.join(wrong[:3])}"
                         f"{', ...' if len(wrong) > 3 else ''} missing or unexpected)")
    return new_head


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


def exported_features(folder: str, **kwargs):
    """timm's ``features_only`` model of an export folder holding all its weights; ``kwargs``: timm's
    (``out_indices``, ``feature_cls``, ``output_stride``). timm's own features_only load is not strict: it loads as
    for 0 classes, so it drops the saved head and then ignores every key that does not fit; a folder transformers
    saved (keys prefixed "timm_model.") gives a random network unless the family's filter strips the prefix. Here the
    prefix goes, and timm's loader gets the state as the cfg's own ``state_dict`` with no classifier named: it loads
    every key into the network that features_only wraps (its head has the saved class count, none when the weights
    hold no classifier), strictly. A family whose features_only model is a class of its own (EfficientNetFeatures,
    MobileNetV3Features, HighResolutionNetFeatures) is built with the classifier's key names and loaded non-strictly
    by its builder, the head's keys left over: here every tensor it holds must have been saved. The network is what
    timm's registry holds for the folder's architecture: the caller picks whose code that is."""
    # imported here: this function is copied, alone, into the exports' modeling_<family>.py
    import logging

    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet
    from timm.models._features_fx import FeatureGraphNet

    state = load_file(os.path.join(folder, "model.safetensors"))
    if state and all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    with open(os.path.join(folder, "config.json")) as f:
        head = (json.load(f).get("pretrained_cfg") or {}).get("classifier")
    heads = [head] if isinstance(head, str) else list(head or ())
    # transformers' AutoModel (TimmWrapperModel, built for 0 classes) saves no classifier while config.json keeps
    # the class count
    if heads and not any(f"{name}.weight" in state for name in heads):
        kwargs = {"num_classes": 0, **kwargs}
    builder_log = logging.getLogger("timm.models._builder")

    def left_over(record):  # the head a family's features class leaves out: what it holds is checked below
        return not str(record.msg).startswith("Unexpected keys")

    builder_log.addFilter(left_over)
    try:
        model = timm.create_model("local-dir:" + os.path.abspath(folder), pretrained=True, features_only=True,
                                  pretrained_cfg_overlay=dict(source="", state_dict=state, classifier=None), **kwargs)
    finally:
        builder_log.removeFilter(left_over)
    for module in model.modules():  # the cfgs would keep a second copy of every weight
        getattr(module, "pretrained_cfg", {}).pop("state_dict", None)
    if not isinstance(model, (FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureGraphNet)):
        # a BatchNorm frozen before the export (timm's freeze_batch_norm_2d, as detection fine-tunes do) saves no
        # step counter, which nothing computes from; the literal: this function is copied alone
        missing = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{folder}: model.safetensors lacks {len(missing)} of the tensors the features_only "
                             f"{type(model).__name__} holds ({', '.join(missing[:3])}): another architecture or width")
    return model
