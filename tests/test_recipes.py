"""Shipped recipes and launch configs stay loadable: a typo in a YAML key must fail here, not on a cluster."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

import modeling
from imagenet_trainer.config import parse_config
from train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
LAUNCH_CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_names_a_model(recipe):
    cfg = parse_config(TrainConfig, ["--config", str(recipe), "--dataset", "x"])
    assert cfg.model and cfg.epochs > 0 and cfg.lr > 0
    with torch.device("meta"):  # resolves the name without allocating weights
        modeling.create_model(cfg.model, num_classes=1000)
    assert recipe.read_text().startswith("#"), "a recipe says what it aims at and cites where that figure comes from"


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_loads(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
    assert path.read_text().startswith("#"), "every launch config is commented"


def test_fsdp_wraps_block_classes_that_exist():
    config = load_config_from_file(str(ROOT / "accelerate_configs" / "fsdp.yaml"))
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    wrap = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    found = set()
    for name in ("resnet50", "convnext_tiny", "blocknet_r18", "blocknet_mobile"):
        with torch.device("meta"):
            model = modeling.create_model(name, num_classes=10)
        classes = {type(m).__name__ for m in model.modules()} & wrap
        assert classes, f"fsdp.yaml would wrap nothing in {name} (NO_WRAP: one flat unit, no memory saved)"
        found |= classes
    assert found == wrap, f"fsdp.yaml names classes no model has: {wrap - found}"
    assert yaml.safe_load((ROOT / "accelerate_configs" / "fsdp.yaml").read_text())["fsdp_config"]["fsdp_version"] == 2
