"""AlexNet (Krizhevsky et al., 2012, "ImageNet Classification with Deep Convolutional Neural Networks") in the
one-GPU layout of torchvision's ``alexnet`` (Krizhevsky 2014, arXiv:1404.5997: 64/192/384/256/256 channels, no LRN).

Module and parameter names equal torchvision's, so ``model.load_state_dict(torchvision_alexnet.state_dict())`` works
unchanged: 61,100,840 parameters with 1000 classes; torchvision's weights give 56.52 % top-1.

timm's model contract, for a classifier on a fixed grid (as timm's VGG, whose fc6 also reads a fixed grid): the
"global pool" is the adaptive pool to fc6's 6x6 grid, and ``reset_classifier(0, "")`` drops it with the MLP,
so ``forward`` returns the unpooled (N, 256, H/32, W/32) map of ``forward_features``. The reductions come from max
pools and an unpadded stride-4 conv, with no stage to dilate: ``output_stride`` is refused below 32. No
``from __future__ import annotations``: TorchScript reads the annotations and fails on strings.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices  # timm's own families import it from here

from ._registry import register

# conv + ReLU (+ pool) per segment under grad checkpointing: an in-place ReLU must not edit the input a segment saved
CHECKPOINT_SEGMENTS = ((0, 3), (3, 6), (6, 8), (8, 10), (10, 13))
POOLS = ("avg", "")  # the 6x6 adaptive average pool fc6 reads, or none (the unpooled map, no MLP)


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, global_pool: str = "avg",
                 output_stride: int = 32):
        super().__init__()
        if output_stride != 32:
            raise ValueError(f"AlexNet: output_stride={output_stride}: only 32 (its strides are in max pools and a "
                             "stride-4 conv, with no stage to dilate); use a BlockNet or ResNet for 8 or 16")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.num_features = 256  # channels of forward_features()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 12
        )
        # Pools any input size to the 6x6 grid that fc6 expects (224 px input gives 6x6 already).
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),  # fc8, index 6 as in torchvision
        )
        self.global_pool = ""
        self.head_hidden_size = 4096
        self._set_pool(global_pool, num_classes)
        # Reductions are nominal: an 11x11/4 conv without "same" padding gives 55 px, not 56, from 224 px.
        self.feature_info = [
            dict(num_chs=64, reduction=4, module="features.1"),
            dict(num_chs=192, reduction=8, module="features.4"),
            dict(num_chs=256, reduction=16, module="features.11"),
            dict(num_chs=256, reduction=32, module="features.12"),
        ]

    def _set_pool(self, global_pool: str, num_classes: int):
        if global_pool not in POOLS or (not global_pool and num_classes > 0):
            raise ValueError(f"AlexNet: global_pool={global_pool!r}: 'avg' (fc6's 6x6 grid), or '' with "
                             "num_classes=0 for the unpooled feature map")
        self.global_pool = global_pool
        # width of the pre-logits vector: fc7's, or the map's channels when the MLP is bypassed
        self.head_hidden_size = 4096 if global_pool else self.num_features

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier[6]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self._set_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.classifier[6] = nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The maps of ``feature_info`` picked by ``indices`` (last n if an int, all if None), plus the final
        features unless ``intermediates_only``; ``stop_early`` skips the layers after the last one picked. No norm
        layers, so ``norm`` changes nothing (timm's signature)."""
        if output_fmt != "NCHW":
            raise ValueError(f"AlexNet.forward_intermediates: output_fmt '{output_fmt}': only 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = [int(info["module"].split(".")[1]) for info in self.feature_info]
        last = taps[max_index] if stop_early else len(self.features) - 1
        intermediates = []
        start = 0
        # the layers up to each tap as one segment, so grad checkpointing (a segment keeps only its input for
        # backward and recomputes the rest) still hands out the taps' maps; an in-place ReLU edits its conv's output
        # inside the segment, never the input the segment saved
        for end in sorted({*(t for t in taps if t <= last), last}):
            segment = self.features[start:end + 1]
            x = checkpoint(segment, x) if self.grad_checkpointing and not torch.jit.is_scripting() else segment(x)
            if end in taps and taps.index(end) in take_indices:
                intermediates.append(x)
            start = end + 1
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the layers after the last tap in ``indices``, and the classifier when ``prune_head`` (always when
        layers go: fc6 is sized for the last one); returns the taps kept."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = int(self.feature_info[max_index]["module"].split(".")[1])
        if last < len(self.features) - 1:
            self.features = self.features[:last + 1]
            self.num_features = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():  # recompute activations in backward
            return checkpoint_seq([self.features[a:b] for a, b in CHECKPOINT_SEGMENTS], x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.global_pool:
            return x
        x = torch.flatten(self.avgpool(x), 1)
        # fc6 and fc7 by index: TorchScript cannot slice a Sequential
        x = self.classifier[2](self.classifier[1](self.classifier[0](x)))
        x = self.classifier[5](self.classifier[4](self.classifier[3](x)))
        return x if pre_logits else self.classifier[6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    defaults = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(6, 6), crop_pct=0.875,
                    interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                    first_conv="features.0", classifier="classifier.6")
    return {**defaults, **kwargs}


default_cfgs = generate_default_cfgs({
    "alexnet": _cfg(paper_name="ImageNet Classification with Deep Convolutional Neural Networks"),
})


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    # weights saved through transformers' TimmWrapper (a Trainer fine-tune of a trust_remote_code load) carry the
    # wrapper's "timm_model." prefix: timm's local-dir:/hf-hub: loads apply this to every checkpoint
    return {k.removeprefix("timm_model."): v for k, v in state_dict.items()}


def _create(variant: str, pretrained: bool = False, **kwargs) -> AlexNet:
    # flatten_sequential lets feature_info name layers inside `features` ("features.4") for features_only=True;
    # a caller's feature_cfg (feature_cls="fx", as timm's tests pass it) goes over these defaults
    feature_cfg = {"flatten_sequential": True, "out_indices": (0, 1, 2, 3), **(kwargs.pop("feature_cfg", None) or {})}
    return build_model_with_cfg(AlexNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=feature_cfg, **kwargs)


@register
def alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    return _create("alexnet", pretrained, **kwargs)
