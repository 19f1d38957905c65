"""BlockNet: a "design your own" CNN family. A variant is a ``BlockNetCfg`` (stem, blocks per stage, widths, strides,
block type) and a three-line function; the network below reads nothing else.

Blocks: ``basic`` (two 3x3 convs, ResNet-18/34), ``bottleneck`` (1x1-3x3-1x1 with the stride on the 3x3, ResNet-50
"v1.5"), ``inverted`` (expand 1x1, depthwise 3x3, linear 1x1 projection, MobileNetV2; Sandler et al. 2018). He et al.
2016 for the residual layout. ``blocknet_r18`` is ResNet-18 exactly (11,689,512 parameters); the bottleneck config
``depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048)`` is ResNet-50 (25,557,032).

timm's model contract holds as for its own ResNet: ``forward_intermediates``/``prune_intermediate_layers``,
``reset_classifier(0, "")`` for the unpooled map, ``output_stride=8/16`` by dilation (Chen et al. 2017, DeepLab),
TorchScript and FX, ``features_only`` for any number of stages. No ``from __future__ import annotations``: TorchScript
reads the annotations and fails on strings.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, get_pretrained_cfg
from timm.models._features import feature_take_indices  # timm's own families import it from here

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


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
            dilation: int = 1) -> nn.Sequential:
    # no conv bias: the BatchNorm shift replaces it; "same" padding at any dilation
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=dilation * (kernel_size // 2), dilation=dilation,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    )


def projection(in_chs: int, out_chs: int, stride: int, resamples: bool) -> nn.Module:
    # resamples: the block's nominal stride is not 1 (a stage's first block, also when dilation replaced the stride),
    # so the same weights load whatever the output_stride
    return conv_bn(in_chs, out_chs, 1, stride) if resamples or in_chs != out_chs else nn.Identity()


# Every block takes (in_chs, out_chs, stride, expansion, drop_path, dilation, first_dilation): under output_stride
# a stage's stride becomes dilation; its first 3x3 keeps the previous stage's dilation, the rest get the new one
# (timm's ResNet does the same).
class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float, dilation: int = 1,
                 first_dilation: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_chs, out_chs, 3, stride, dilation=first_dilation)
        self.conv2 = conv_bn(out_chs, out_chs, 3, dilation=dilation)
        self.shortcut = projection(in_chs, out_chs, stride, stride != 1 or first_dilation != dilation)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.conv2[1].weight)

    def forward(self, x):
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(self.drop_path(y) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float, dilation: int = 1,
                 first_dilation: int = 1):
        super().__init__()
        mid = out_chs // expansion
        self.conv1 = conv_bn(in_chs, mid, 1)
        # stride on the 3x3 ("v1.5"): +0.5 % top-1 over v1 (NVIDIA DLE)
        self.conv2 = conv_bn(mid, mid, 3, stride, dilation=first_dilation)
        self.conv3 = conv_bn(mid, out_chs, 1)
        self.shortcut = projection(in_chs, out_chs, stride, stride != 1 or first_dilation != dilation)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.conv3[1].weight)

    def forward(self, x):
        y = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return self.act(self.drop_path(y) + self.shortcut(x))


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float, dilation: int = 1,
                 first_dilation: int = 1):
        super().__init__()
        hidden = in_chs * expansion
        self.conv_pw = conv_bn(in_chs, hidden, 1)
        self.conv_dw = conv_bn(hidden, hidden, 3, stride, groups=hidden, dilation=first_dilation)
        self.conv_pwl = conv_bn(hidden, out_chs, 1)  # linear bottleneck: no activation after the projection
        # MobileNetV2 adds no projection shortcut, and none where dilation replaced a stride
        self.has_skip = stride == 1 and first_dilation == dilation and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()
        self.act = nn.ReLU6(inplace=True)

    def zero_init_last(self):
        if self.has_skip:
            nn.init.zeros_(self.conv_pwl[1].weight)

    def forward(self, x):
        y = self.conv_pwl(self.act(self.conv_dw(self.act(self.conv_pw(x)))))
        return self.drop_path(y) + x if self.has_skip else y


BLOCK_CLASSES = dict(basic=BasicBlock, bottleneck=Bottleneck, inverted=InvertedResidual)


def make_stages(cfg: BlockNetCfg, in_chs: int, reduction: int, output_stride: int,
                drop_path_rate: float) -> Tuple[nn.Sequential, List[dict]]:
    """The stages after a stem of ``in_chs`` channels at ``reduction``, and their feature_info taps. Once the
    reduction reaches ``output_stride`` a stage's stride turns into dilation (same weights, denser maps)."""
    block_cls = BLOCK_CLASSES[cfg.block]
    total_blocks, block_idx = sum(cfg.depths), 0
    dilation, stages, info = 1, [], []
    for i, (depth, width, stride) in enumerate(zip(cfg.depths, cfg.widths, cfg.strides)):
        first_dilation = dilation
        if reduction * stride > output_stride:
            dilation, stride = dilation * stride, 1
        reduction *= stride
        blocks = []
        for j in range(depth):
            # stochastic depth rises linearly with depth (Huang et al. 2016)
            dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
            blocks.append(block_cls(in_chs, width, stride if j == 0 else 1, cfg.expansion, dpr, dilation,
                                    first_dilation if j == 0 else dilation))
            in_chs, block_idx = width, block_idx + 1
        stages.append(nn.Sequential(*blocks))
        info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
    return nn.Sequential(*stages), info


def make_pool(global_pool: str, num_classes: int) -> SelectAdaptivePool2d:
    """timm's head pool: flattened behind a pool, pass-through (unpooled N, C, H, W) for ``global_pool=""``."""
    if not global_pool and num_classes > 0:
        raise ValueError("BlockNet: global_pool='' (no pooling) needs num_classes=0: the classifier is a Linear "
                         "layer on pooled features")
    return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))


class BlockNet(nn.Module):
    def __init__(self, cfg: BlockNetCfg, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, output_stride: int = 32):
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
        if output_stride < reduction or output_stride & (output_stride - 1):
            raise ValueError(f"BlockNet: output_stride={output_stride} must be a power of 2 of at least the stem's "
                             f"reduction ({reduction}), e.g. 8, 16 or 32")
        # the tap after the stem's ReLU is at reduction 2 in both stems, like timm's ResNet "act1"
        self.feature_info = [dict(num_chs=cfg.stem_width, reduction=2, module="stem.2")]
        self.stages, stage_info = make_stages(cfg, cfg.stem_width, reduction, output_stride, drop_path_rate)
        self.feature_info += stage_info
        in_chs = cfg.widths[-1]

        if cfg.head_width:
            self.head_conv = nn.Sequential(*conv_bn(in_chs, cfg.head_width, 1), nn.ReLU6(inplace=True))
            in_chs = cfg.head_width
        else:
            self.head_conv = nn.Identity()
        self.num_features = in_chs
        self.global_pool = make_pool(global_pool, num_classes)
        # what forward_head(pre_logits=True) returns: a concatenating pool ("catavgmax") doubles it, as in timm's ResNet
        self.head_hidden_size = in_chs * self.global_pool.feat_mult()
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

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        # the pool first: a refused combination raises before anything changes
        pool = make_pool(self.global_pool.pool_type if global_pool is None else global_pool, num_classes)
        self.num_classes, self.global_pool = num_classes, pool
        self.head_hidden_size = self.num_features * pool.feat_mult()
        self.fc = self._new_fc(num_classes)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The maps of ``feature_info`` (stem, then each stage) picked by ``indices`` (last n if an int, all if
        None), plus the final features unless ``intermediates_only``; ``stop_early`` skips the stages after the
        last one picked. BlockNet has no final norm, so ``norm`` changes nothing (timm's signature)."""
        if output_fmt != "NCHW":
            raise ValueError(f"BlockNet.forward_intermediates: output_fmt '{output_fmt}': only 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.stem[2](self.stem[1](self.stem[0](x)))  # conv, BN, ReLU: the stem tap; a max pool may follow
        if 0 in take_indices:
            intermediates.append(x)
        x = self.stem[3:](x)
        for i, stage in enumerate(self.stages):
            if stop_early and i >= max_index:
                break
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if i + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        # the head conv takes the last stage's channels: after an early stop x is an earlier map (as timm's
        # EfficientNet, which applies its head only when the last stage ran)
        return (x if stop_early and max_index < len(self.stages) else self.head_conv(x)), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last tap in ``indices`` (and the head conv with them), and the classifier
        when ``prune_head``; returns the taps kept. As timm's ResNet does."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < len(self.stages):
            self.stages = self.stages[:max_index]
            self.stem = self.stem[:3] if max_index == 0 else self.stem  # the max pool follows the stem tap
            self.head_conv = nn.Identity()
            self.num_features = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

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


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    # weights saved through transformers' TimmWrapper (a Trainer fine-tune of a trust_remote_code load) carry the
    # wrapper's "timm_model." prefix: timm's local-dir:/hf-hub: loads apply this to every checkpoint
    return {k.removeprefix("timm_model."): v for k, v in state_dict.items()}


def _create(variant: str, cfg: BlockNetCfg, pretrained: bool = False, **kwargs) -> BlockNet:
    if get_pretrained_cfg(variant) is None and kwargs.get("pretrained_cfg") is None:  # a variant added without a
        kwargs["pretrained_cfg"] = _cfg()  # default_cfgs entry (README's blocknet_wide): the family's, not timm's
        # fallback, which names no classifier (validate.py finds a checkpoint's head by it)
    # flatten_sequential lets feature_info name layers inside Sequentials ("stem.2") for features_only=True; every
    # tap by default (the stem's and one per stage: timm's default of five would not fit a three-stage variant); a
    # caller's feature_cfg (feature_cls="fx", as timm's tests pass it) goes over these defaults
    taps = tuple(range(len(cfg.depths) + 1))
    feature_cfg = {"flatten_sequential": True, "out_indices": taps, **(kwargs.pop("feature_cfg", None) or {})}
    return build_model_with_cfg(BlockNet, variant, pretrained, model_cfg=cfg, feature_cfg=feature_cfg,
                                pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


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
