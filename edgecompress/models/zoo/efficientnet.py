"""EfficientNet-B0 (Tan & Le 2019), torchvision's layout.

MBConv = 1x1 expand -> kxk depthwise -> squeeze-excitation -> linear 1x1 project, SiLU
activations, residual when shape allows. Unlike MobileNetV3, the SE bottleneck width is a
quarter of the block *input* channels (not of the expanded ones) and the gate is a sigmoid.
Stochastic depth is a training-time regulariser and the identity at inference, so it is
left out: these definitions are for pruning, export and quantization.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.blocks import SqueezeExcite, conv_bn_act
from edgecompress.models.zoo.registry import register


def conv_bn_silu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    return conv_bn_act(cin, cout, k, stride, groups, nn.SiLU if act else None, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_silu(cin, hidden, 1))
        layers += [
            conv_bn_silu(hidden, hidden, k, stride, groups=hidden),
            SqueezeExcite(hidden, max(1, cin // 4), act=nn.SiLU),
            conv_bn_silu(hidden, cout, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientNet(nn.Module):
    # (expand, kernel, first stride, in, out, repeats): table 1 of the paper (B0).
    B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, last: int = 1280, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_silu(in_chans, self.B0[0][3], 3, 2)]
        for t, k, s, cin, cout, n in self.B0:
            layers.append(nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, t)
                                          for i in range(n)]))
        layers.append(conv_bn_silu(self.B0[-1][4], last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("efficientnet_b0", "EfficientNet-B0 (5.3M params): MBConv, depthwise, SE, SiLU", (3, 224, 224))
def efficientnet_b0(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return EfficientNet(num_classes, in_chans)
