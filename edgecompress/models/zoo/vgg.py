"""VGG with batch norm (Simonyan & Zisserman 2015; BN variant as in torchvision): configs A and D.

A plain chain of 3x3 convs and max-pools, then the original 3-layer classifier on a 7x7 map
(adaptive pooling makes any input >= 32 px give that map). The flatten couples each of the last
conv's channels to 49 consecutive inputs of the first linear layer, which pruning must follow.
At 1000 classes VGG-16-BN has 138M parameters, 90% of them in that classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.registry import register

M = "M"  # 2x2 max-pool
CFGS = {
    "A": (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "D": (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
}


def _features(cfg: tuple, in_chans: int, *, bias: bool) -> tuple[nn.Sequential, int]:
    """3x3 conv-BN-ReLU for each width in ``cfg``, a 2x2 max-pool for each M; and the last width."""
    layers: list[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == M:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=bias), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers), c


class VGG(nn.Module):
    def __init__(self, cfg: tuple, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features, c = _features(cfg, in_chans, bias=True)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register("vgg11_bn", "VGG-11 with BN (133M params): plain conv chain, flatten into a big MLP", (3, 224, 224))
def vgg11_bn(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return VGG(CFGS["A"], num_classes, in_chans)


@register("vgg16_bn", "VGG-16 with BN (138M params): plain conv chain, flatten into a big MLP", (3, 224, 224))
def vgg16_bn(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return VGG(CFGS["D"], num_classes, in_chans)


class VGGSmall(nn.Module):
    """A VGG-style chain for 28-32 px inputs: 3x3 conv-BN-ReLU stages with max-pools, then global
    average pooling and one linear layer (no flatten MLP: at this size it would be most of the model)."""

    def __init__(self, cfg: tuple, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.features, c = _features(cfg, in_chans, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register("vgg7-small", "VGG-style 6 conv-BN layers 24-48-96 + GAP + linear (157k params), for 28 px")
def vgg7_small(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return VGGSmall((24, M, 48, 48, M, 96, 96, M), num_classes, in_chans)
