"""Shipped recipes and launch configs stay loadable: a typo in a YAML key must fail here, not on a cluster."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.imports import get_torch_accelerator_backend
from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from test_cluster import free_port

import modeling
from imagenet_trainer.config import read_yaml, parse_config
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
    # accelerate reads it with yaml.safe_load: no key given twice, no number YAML 1.1 reads as octal or base 60
    assert read_yaml(path)[0]["distributed_type"] == config.distributed_type


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("visible", ["2", ""])
def test_launch_config_keeps_the_callers_visible_gpus(path, visible, monkeypatch):
    """The GPUs a scheduler or user hands the launch (CUDA_VISIBLE_DEVICES=2; empty: none) are what train.py sees:
    accelerate's own launch preparation, as `accelerate launch --config_file` runs it, builds the child's environment.
    A gpu_ids list in the file replaces the variable (gpu_ids: '0' puts every job on the machine's GPU 0, whatever
    GPU the scheduler gave it)."""
    if get_torch_accelerator_backend(check_available=False)[0] != "cuda":
        pytest.skip("accelerate sets CUDA_VISIBLE_DEVICES only under a CUDA build of torch")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    args = launch_command_parser().parse_args(["--config_file", str(path), "--main_process_port", str(free_port()),
                                               str(ROOT / "train.py")])
    args, _, _ = _validate_launch_command(args)
    torchrun = (args.multi_gpu or args.use_fsdp) and not args.cpu  # accelerate's launch_command picks so
    env = prepare_multi_gpu_env(args) if torchrun else prepare_simple_launcher_cmd_env(args)[1]
    assert env["CUDA_VISIBLE_DEVICES"] == visible, (args.gpu_ids, env["CUDA_VISIBLE_DEVICES"])


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnext_tiny", "vgg16", "alexnet", "efficientnet_b0",
                                  *modeling.list_models()])
def test_fsdp_config_wraps_each_models_blocks(name):
    """accelerate's own FSDP2 wrap-policy builder, fed fsdp.yaml's settings, on each backbone: it must not fail (it
    does for any class the config names that a model lacks) and must shard the residual blocks one by one."""
    fsdp = load_config_from_file(str(ROOT / "accelerate_configs" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=fsdp.get("fsdp_transformer_layer_cls_to_wrap"),
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"], state_dict_type=fsdp["fsdp_state_dict_type"])
    with torch.device("meta"):
        model = modeling.create_model(name, num_classes=10)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [type(m).__name__ for m in model.modules() if policy(m)]
    # every instance of a known block class is its own unit; a model with none (VGG, AlexNet, a user's plain CNN)
    # is one unit (the comment in fsdp.yaml says so): what any family needs, residual blocks or not
    blocks = [type(m).__name__ for m in model.modules() if type(m).__name__ in modeling.BLOCK_CLASSES]
    assert units == blocks, units
    if name in ("resnet18", "resnet50", "convnext_tiny", "efficientnet_b0", "blocknet_r18", "blocknet_mobile"):
        assert len(units) >= 4  # the residual families this project ships or recipes name
