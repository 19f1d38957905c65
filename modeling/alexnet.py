"""AlexNet (Krizhevsky et al., 2012, "ImageNet Classification with Deep Convolutional Neural Networks") in the
one-GPU layout of torchvision's ``alexnet`` (Krizhevsky 2014, arXiv:1404.5997: 64/192/384/256/256 channels, no LRN).

Module and parameter names equal torchvision's, so ``model.load_state_dict(torchvision_alexnet.state_dict())`` works
unchanged: 61,100,840 parameters with 1000 classes; torchvision's weights give 56.52 % top-1.
"""
from __future__ import annotations

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs

from ._registry import register


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = 256  # channels of forward_features()
        self.head_hidden_size = 4096  # width of the pre-logits vector (fc7)
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
        # Reductions are nominal: an 11x11/4 conv without "same" padding gives 55 px, not 56, from 224 px.
        self.feature_info = [
            dict(num_chs=64, reduction=4, module="features.1"),
            dict(num_chs=192, reduction=8, module="features.4"),
            dict(num_chs=256, reduction=16, module="features.11"),
            dict(num_chs=256, reduction=32, module="features.12"),
        ]

    def get_classifier(self) -> nn.Module:
        return self.classifier[6]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            raise ValueError("AlexNet has no global pool to change: fc6 takes a 6x6 grid")
        self.num_classes = num_classes
        self.classifier[6] = nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        for layer in self.classifier[:6]:
            x = layer(x)
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


def _create(variant: str, pretrained: bool = False, **kwargs) -> AlexNet:
    # flatten_sequential lets feature_info name layers inside `features` ("features.4") for features_only=True.
    return build_model_with_cfg(AlexNet, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)), **kwargs)


@register
def alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    return _create("alexnet", pretrained, **kwargs)
