"""Backbones by name (our designs and the timm zoo) and a Hub format that timm and transformers both load.

    import modeling
    model = modeling.create_model("blocknet_tiny", num_classes=10)    # ours; "resnet50", "convnext_tiny": timm's
    modeling.list_models()                                            # ['alexnet', 'blocknet_mobile', ...]
    modeling.save_pretrained(model, "out/model", label_names=wnids, label_descriptions=names)
    model = modeling.load_model("out/model")                          # or "hf-hub:OWNER/NAME"
    modeling.push_to_hub("out/model", "OWNER/NAME")

Importing ``modeling`` registers our designs with timm, so ``timm.create_model("blocknet_tiny")``, timm's scripts
and transformers' ``TimmWrapper`` classes take their names too: ``pip install -e .`` (or ``pip install git+URL`` of
this repository) makes ``import modeling`` work anywhere. An export of an architecture timm does not ship also
carries the file that defines it, so transformers loads it with ``trust_remote_code=True`` and no project code.

Adding a backbone takes one file, ``modeling/mynet.py``, plus one import line at the bottom of this file:

    import torch
    from torch import nn
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import build_model_with_cfg, generate_default_cfgs

    from ._registry import register


    class MyNet(nn.Module):
        # timm passes num_classes and in_chans (from the cfg below) plus whatever the caller gives
        def __init__(self, num_classes=1000, in_chans=3, width=32, drop_rate=0.0):
            super().__init__()
            self.num_classes, self.num_features = num_classes, 2 * width
            self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
            self.stage = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
            self.head_drop = nn.Dropout(drop_rate)
            self.fc = nn.Linear(2 * width, num_classes) if num_classes else nn.Identity()
            # where features_only=True taps the network: channels, stride from the input, module name (a layer
            # inside a Sequential, "stem.2", needs flatten_sequential=True below)
            self.feature_info = [dict(num_chs=width, reduction=2, module="stem.2"),
                                 dict(num_chs=2 * width, reduction=4, module="stage.2")]

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes, global_pool=None):
            self.num_classes = num_classes
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        def forward_features(self, x):                      # image -> feature map
            return self.stage(self.stem(x))

        def forward_head(self, x, pre_logits=False):        # feature map -> logits (or pooled features)
            x = self.head_drop(x.mean((2, 3)))
            return x if pre_logits else self.fc(x)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))


    # preprocessing the weights expect, one entry per variant name (a variant without one fails at import);
    # save_pretrained(pretrained_cfg=...) overrides it for trained weights
    default_cfgs = generate_default_cfgs({"mynet_small": dict(
        num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.0", classifier="fc")})


    @register                                               # timm's register_model + modeling.list_models()
    def mynet_small(pretrained=False, **kwargs):
        return build_model_with_cfg(MyNet, "mynet_small", pretrained, width=32,
                                    feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1)), **kwargs)

then ``from . import mynet`` below (without it, ``create_model("mynet_small")`` says which files are not imported).
Keep the file to torch, timm and the standard library (plus the ``register`` import): the export copies it as the
architecture's source. ``tests/test_modeling.py`` runs every registered name through forward/backward,
features_only (the maps must match ``feature_info``; any number of them, at any stride), a save/load round trip
and the FSDP wrap (residual blocks are not required), so a new family is tested by being registered.
"""
from ._registry import BLOCK_CLASSES, create_model, list_models, register
from .hub import (check_hub_ready, is_repo_id, label_info, load_model, push_to_hub, save_pretrained,
                  update_model_card_results)

from . import alexnet, blocknet  # noqa: E402,F401  registers the families with timm

__all__ = ["BLOCK_CLASSES", "create_model", "list_models", "register", "save_pretrained", "load_model", "label_info",
           "push_to_hub", "check_hub_ready", "is_repo_id", "update_model_card_results"]
