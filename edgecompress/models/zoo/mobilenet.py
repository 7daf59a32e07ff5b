"""A small MobileNetV2 (Sandler et al. 2018) for 28-32 px inputs: inverted residuals with
depthwise 3x3 convs, linear bottlenecks, ReLU6. Strides are reduced so 28 px keeps a 4x4 map.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.blocks import conv_bn_act
from edgecompress.models.zoo.registry import register


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    return conv_bn_act(cin, cout, k, stride, groups, nn.ReLU6 if act else None)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Small(nn.Module):
    # (expand, out channels, repeats, stride) — MobileNetV2's table at width 0.5, 2 fewer stages.
    SETTINGS = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 3, 2), (6, 48, 3, 1), (6, 64, 2, 2))

    def __init__(self, num_classes: int = 10, in_chans: int = 1, last: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_chans, 16, 3)]
        cin = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenetv2-small", "MobileNetV2 at width 0.5 for 28-32 px (depthwise, residuals)")
def mobilenetv2_small(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return MobileNetV2Small(num_classes, in_chans)
