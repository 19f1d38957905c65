"""BlockNet: a "design your own" CNN family. A variant is a ``BlockNetCfg`` (stem, blocks per stage, widths, strides,
block type) and a three-line function; the network below reads nothing else.

Blocks: ``basic`` (two 3x3 convs, ResNet-18/34), ``bottleneck`` (1x1-3x3-1x1 with the stride on the 3x3, ResNet-50
"v1.5"), ``inverted`` (expand 1x1, depthwise 3x3, linear 1x1 projection, MobileNetV2; Sandler et al. 2018). He et al.
2016 for the residual layout. ``blocknet_r18`` is ResNet-18 exactly (11,689,512 parameters); the bottleneck config
``depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048)`` is ResNet-50 (25,557,032).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, get_pretrained_cfg

from ._registry import register

BLOCKS = ("basic", "bottleneck", "inverted")
STEMS = ("conv7_pool", "conv3")


@dataclass(frozen=True)
class BlockNetCfg:
    depths: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # output channels of each stage
    strides: tuple[int, ...] = (1, 2, 2, 2)  # stride of each stage's first block; product x stem's 2 or 4 = reduction
    block: str = "basic"  # one of BLOCKS
    expansion: int = 4  # bottleneck: width / inner width (ResNet: 4); inverted: hidden / input width (MobileNetV2: 6)
    stem: str = "conv7_pool"  # conv7_pool: 7x7/2 conv + 3x3/2 max pool (reduction 4); conv3: a 3x3/2 conv (2)
    stem_width: int = 64  # channels out of the stem
    head_width: int = 0  # 1x1 conv to this many channels before pooling (MobileNetV2: 1280); 0 = none

    def __post_init__(self):
        if not len(self.depths) == len(self.widths) == len(self.strides):
            raise ValueError(f"BlockNetCfg: depths, widths and strides need one entry per stage, got {self}")
        if self.block not in BLOCKS:
            raise ValueError(f"BlockNetCfg: block '{self.block}' is not one of {BLOCKS}")
        if self.stem not in STEMS:
            raise ValueError(f"BlockNetCfg: stem '{self.stem}' is not one of {STEMS}")


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # no conv bias: the BatchNorm shift replaces it
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    )


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    return conv_bn(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        self.conv1 = conv_bn(in_chs, out_chs, 3, stride)
        self.conv2 = conv_bn(out_chs, out_chs, 3)
        self.shortcut = projection(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.conv2[1].weight)

    def forward(self, x):
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(self.drop_path(y) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        mid = out_chs // expansion
        self.conv1 = conv_bn(in_chs, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, stride)  # stride on the 3x3 ("v1.5"): +0.5 % top-1 over v1 (NVIDIA DLE)
        self.conv3 = conv_bn(mid, out_chs, 1)
        self.shortcut = projection(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.conv3[1].weight)

    def forward(self, x):
        y = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return self.act(self.drop_path(y) + self.shortcut(x))


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        hidden = in_chs * expansion
        self.conv_pw = conv_bn(in_chs, hidden, 1)
        self.conv_dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.conv_pwl = conv_bn(hidden, out_chs, 1)  # linear bottleneck: no activation after the projection
        self.has_skip = stride == 1 and in_chs == out_chs  # MobileNetV2 adds no projection shortcut
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()
        self.act = nn.ReLU6(inplace=True)

    def zero_init_last(self):
        if self.has_skip:
            nn.init.zeros_(self.conv_pwl[1].weight)

    def forward(self, x):
        y = self.conv_pwl(self.act(self.conv_dw(self.act(self.conv_pw(x)))))
        return self.drop_path(y) + x if self.has_skip else y


BLOCK_CLASSES = dict(basic=BasicBlock, bottleneck=Bottleneck, inverted=InvertedResidual)


class BlockNet(nn.Module):
    def __init__(self, cfg: BlockNetCfg, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        if cfg.stem == "conv7_pool":
            self.stem = nn.Sequential(*conv_bn(in_chans, cfg.stem_width, 7, 2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            reduction = 4
        else:
            self.stem = nn.Sequential(*conv_bn(in_chans, cfg.stem_width, 3, 2), nn.ReLU(inplace=True))
            reduction = 2
        # the tap after the stem's ReLU is at reduction 2 in both stems, like timm's ResNet "act1"
        self.feature_info = [dict(num_chs=cfg.stem_width, reduction=2, module="stem.2")]

        block_cls = BLOCK_CLASSES[cfg.block]
        total_blocks, block_idx = sum(cfg.depths), 0
        in_chs, stages = cfg.stem_width, []
        for i, (depth, width, stride) in enumerate(zip(cfg.depths, cfg.widths, cfg.strides)):
            blocks = []
            for j in range(depth):
                # stochastic depth rises linearly with depth (Huang et al. 2016)
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(block_cls(in_chs, width, stride if j == 0 else 1, cfg.expansion, dpr))
                in_chs, block_idx = width, block_idx + 1
            stages.append(nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        if cfg.head_width:
            self.head_conv = nn.Sequential(*conv_bn(in_chs, cfg.head_width, 1), nn.ReLU6(inplace=True))
            in_chs = cfg.head_width
        else:
            self.head_conv = nn.Identity()
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self._new_fc(num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # each residual block starts as identity (Goyal et al. 2017, "ImageNet in 1 Hour")
        for m in self.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()

    def _new_fc(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = self._new_fc(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)  # recompute activations in backward: less memory
        else:
            x = self.stages(x)
        return self.head_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    defaults = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                    interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                    first_conv="stem.0", classifier="fc")
    return {**defaults, **kwargs}


# the cfg of a variant with no default_cfgs entry (README's three-line blocknet_wide): the family's, not timm's
# fallback, which names no classifier (validate.py finds a checkpoint's head by it); read by modeling.register
FAMILY_CFG = _cfg()
default_cfgs = generate_default_cfgs({
    "blocknet_tiny": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), notes="CPU demos and tests"),
    "blocknet_r18": _cfg(),
    "blocknet_mobile": _cfg(),
})


def _create(variant: str, cfg: BlockNetCfg, pretrained: bool = False, **kwargs) -> BlockNet:
    if get_pretrained_cfg(variant) is None and kwargs.get("pretrained_cfg") is None:  # a variant added without a
        kwargs["pretrained_cfg"] = _cfg()  # default_cfgs entry (README's blocknet_wide): the family's, not timm's
        # fallback, which names no classifier (validate.py finds a checkpoint's head by it)
    # flatten_sequential lets feature_info name layers inside Sequentials ("stem.2") for features_only=True
    return build_model_with_cfg(BlockNet, variant, pretrained, model_cfg=cfg,
                                feature_cfg=dict(flatten_sequential=True), **kwargs)


@register
def blocknet_tiny(pretrained: bool = False, **kwargs) -> BlockNet:
    """0.44 M parameters (1000 classes), one basic block per stage: trains in minutes on a CPU at 64 px."""
    cfg = BlockNetCfg(depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), strides=(2, 2, 2, 2), stem="conv3",
                      stem_width=16)
    return _create("blocknet_tiny", cfg, pretrained, **kwargs)


@register
def blocknet_r18(pretrained: bool = False, **kwargs) -> BlockNet:
    """ResNet-18 layout (He et al. 2016), 11.7 M parameters."""
    cfg = BlockNetCfg(depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), block="basic")
    return _create("blocknet_r18", cfg, pretrained, **kwargs)


@register
def blocknet_mobile(pretrained: bool = False, **kwargs) -> BlockNet:
    """Inverted residuals with a MobileNetV2-style 1x1 head conv, ~1.5 M parameters."""
    cfg = BlockNetCfg(depths=(2, 3, 4, 2), widths=(24, 48, 96, 192), strides=(2, 2, 2, 2), block="inverted",
                      expansion=4, stem="conv3", stem_width=24, head_width=640)
    return _create("blocknet_mobile", cfg, pretrained, **kwargs)
