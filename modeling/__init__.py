"""Backbones by name (our designs and the timm zoo) and a Hub format that timm and transformers both load.

    import modeling
    model = modeling.create_model("blocknet_tiny", num_classes=10)    # ours; "resnet50", "convnext_tiny": timm's
    modeling.list_models()                                            # ['alexnet', 'blocknet_mobile', ...]
    modeling.save_pretrained(model, "out/model", label_names=wnids, label_descriptions=names)
    model = modeling.load_model("out/model")                          # or "hf-hub:OWNER/NAME"
    modeling.push_to_hub("out/model", "OWNER/NAME")
    backbone = modeling.timm_backbone("out/model")                    # transformers' TimmBackbone, exact weights

Importing ``modeling`` registers our designs with timm, so ``timm.create_model("blocknet_tiny")``, timm's scripts
and transformers' ``TimmWrapper`` classes take their names too: ``pip install -e .`` (or ``pip install git+URL`` of
this repository) makes ``import modeling`` work anywhere. An export of an architecture timm does not ship also
carries the file that defines it, so transformers loads it with ``trust_remote_code=True`` and no project code.

Adding a backbone takes one file, ``modeling/mynet.py``, plus one import line at the bottom of this file:

    from typing import List, Optional, Tuple, Union

    import torch
    from torch import nn
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.layers import SelectAdaptivePool2d
    from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs
    from timm.models._features import feature_take_indices

    from ._registry import register


    class MyNet(nn.Module):
        # timm passes num_classes and in_chans (from the cfg below) plus whatever the caller gives
        def __init__(self, num_classes=1000, in_chans=3, width=32, drop_rate=0.0, global_pool="avg",
                     output_stride=32):
            super().__init__()
            self.in_chans = in_chans                        # what timm's data config and our exports read it from
            self.num_features = 2 * width
            # output_stride 2 (DeepLab-style): the stage's stride becomes a dilation, same weights
            s, d = (1, 2) if output_stride < 4 else (2, 1)
            self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
            self.stage = nn.Sequential(nn.Conv2d(width, 2 * width, 3, s, d, d), nn.BatchNorm2d(2 * width), nn.ReLU())
            self.head_drop = nn.Dropout(drop_rate)
            self.reset_classifier(num_classes, global_pool)     # num_classes, global_pool, head_hidden_size, fc
            self.grad_checkpointing = False
            # where features_only=True taps the network: channels, stride from the input, module name (a layer
            # inside a Sequential, "stem.2", needs flatten_sequential=True below)
            self.feature_info = [dict(num_chs=width, reduction=2, module="stem.2"),
                                 dict(num_chs=2 * width, reduction=2 * s, module="stage.2")]

        @torch.jit.ignore
        def set_grad_checkpointing(self, enable: bool = True):
            self.grad_checkpointing = enable                # each layer keeps its input only, recomputed in backward

        @torch.jit.ignore
        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
            # timm's pools: "avg", "max", "avgmax", "catavgmax" (twice the width); "" passes the map through
            pool = self.global_pool.pool_type if global_pool is None else global_pool
            if not pool and num_classes:
                raise ValueError("MyNet: global_pool='' (no pooling) needs num_classes=0: the classifier is a "
                                 "Linear layer on pooled features")
            self.global_pool = SelectAdaptivePool2d(pool_type=pool, flatten=bool(pool))  # flattening "" gives N, C*H*W
            self.num_classes, self.head_hidden_size = num_classes, self.num_features * self.global_pool.feat_mult()
            self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()

        def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                                  norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                                  intermediates_only: bool = False):
            # timm's feature API (transformers' backbones call it): the feature_info maps picked by indices
            take, last = feature_take_indices(len(self.feature_info), indices)
            maps = []
            for layer in (self.stem,) if stop_early and last == 0 else (self.stem, self.stage):
                x = checkpoint(layer, x) if self.grad_checkpointing and not torch.jit.is_scripting() else layer(x)
                maps.append(x)
            picked = [maps[i] for i in take]
            return picked if intermediates_only else (maps[-1], picked)

        def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                      prune_head: bool = True):
            take, last = feature_take_indices(len(self.feature_info), indices)
            if last == 0:                                   # the stage is not needed: drop it (empty Sequential)
                self.stage, self.num_features, prune_head = nn.Sequential(), self.feature_info[0]["num_chs"], True
            if prune_head:
                self.reset_classifier(0, "")
            return take

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:      # image -> feature map
            if self.grad_checkpointing and not torch.jit.is_scripting():
                return checkpoint_seq([self.stem, self.stage], x)
            return self.stage(self.stem(x))

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            x = self.head_drop(self.global_pool(x))         # feature map -> pooled features -> logits
            return x if pre_logits else self.fc(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(x))


    # preprocessing the weights expect, one entry per variant name (a variant without one fails at import);
    # pool_size: forward_features' map at input_size. save_pretrained(pretrained_cfg=...) overrides it
    default_cfgs = generate_default_cfgs({"mynet_small": dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(56, 56), crop_pct=0.875, interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.0", classifier="fc")})


    def checkpoint_filter_fn(state_dict, model):
        # weights saved by transformers (save_pretrained of a trust_remote_code load) carry its wrapper's
        # "timm_model." prefix: timm's local-dir: and hf-hub: loads pass every checkpoint through this
        return {k.removeprefix("timm_model."): v for k, v in state_dict.items()}


    @register                                               # timm's register_model + modeling.list_models()
    def mynet_small(pretrained=False, **kwargs):
        # a caller's feature_cfg (feature_cls="fx", ...) goes over the family's defaults
        feature_cfg = {"flatten_sequential": True, "out_indices": (0, 1), **(kwargs.pop("feature_cfg", None) or {})}
        return build_model_with_cfg(MyNet, "mynet_small", pretrained, width=32, feature_cfg=feature_cfg,
                                    pretrained_filter_fn=checkpoint_filter_fn, **kwargs)

then ``from . import mynet`` below (without it, ``create_model("mynet_small")`` says which files are not imported).
Keep the file to torch, timm and the standard library (plus the ``register`` import and modules of your own next
to it, imported as ``from .mylayers import MyBlock``): the export copies them as the architecture's source. No
``from __future__ import annotations``: TorchScript reads the annotations. ``tests/test_modeling.py`` runs every
registered name through forward/backward, features_only (the maps must match ``feature_info``; any number of them,
at any stride), a save/load round trip and the FSDP wrap (residual blocks are not required);
``tests/test_timm_contract.py`` holds it to timm's model contract (forward_intermediates, prune_intermediate_layers,
the unpooled ``reset_classifier(0, "")``, output_stride, TorchScript, FX, grad checkpointing): a new family is
tested by being registered.
"""
from ._registry import BLOCK_CLASSES, create_model, list_models, rebuild, register
from .hub import (check_hub_ready, class_order, is_repo_id, label_info, load_model, pretrained_labels, push_to_hub,
                  save_pretrained, update_model_card_results)
from .backbone import (backbone_config, load_backbone_weights, name_hidden_layers, reload_norm_activations,
                       timm_backbone, timm_name)
from .remote_code import check_exportable

from . import alexnet, blocknet  # noqa: E402,F401  registers the families with timm

__all__ = ["BLOCK_CLASSES", "create_model", "list_models", "rebuild", "register", "save_pretrained", "load_model",
           "label_info", "push_to_hub", "check_hub_ready", "is_repo_id", "update_model_card_results", "timm_backbone",
           "backbone_config", "load_backbone_weights", "name_hidden_layers", "reload_norm_activations", "timm_name",
           "check_exportable", "class_order", "pretrained_labels"]
