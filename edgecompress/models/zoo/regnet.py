"""RegNets (Radosavovic et al. 2020, "Designing Network Design Spaces"), torchvision's layout.

Every block is a residual bottleneck whose 3x3 is a *grouped* conv with a fixed group width
(8 channels per group here), so pruning must remove the same channels from every group to keep
``groups`` valid. RegNetY adds squeeze-excitation on the grouped conv's output, its bottleneck
being a quarter of the block *input* width. Stage widths/depths come from the paper's
quantized linear rule (w0, wa, wm, depth), computed by ``stage_plan`` below.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from edgecompress.models.zoo.blocks import SqueezeExcite, conv_bn_act
from edgecompress.models.zoo.registry import register


def stage_plan(depth: int, w0: int, wa: float, wm: float, group_w: int) -> list[tuple[int, int]]:
    """[(width, blocks)] per stage: u_j = w0 + wa*j, quantized to w0 * wm^round(log_wm(u_j/w0)), then
    rounded to multiples of 8 and of the group width (pycls ``generate_regnet`` + width adjustment)."""
    widths = []
    for j in range(depth):
        s = round(math.log((w0 + wa * j) / w0) / math.log(wm))
        widths.append(int(round(w0 * wm**s / 8) * 8))
    plan: list[tuple[int, int]] = []
    for w in widths:
        if plan and plan[-1][0] == w:
            plan[-1] = (w, plan[-1][1] + 1)
        else:
            plan.append((w, 1))
    g = [min(group_w, w) for w, _ in plan]
    return [(max(gi, int(w / gi + 0.5) * gi), n) for (w, n), gi in zip(plan, g, strict=True)]


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    return conv_bn_act(cin, cout, k, stride, groups, nn.ReLU if relu else None)


class ResBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_w: int, se_ratio: float) -> None:
        super().__init__()
        groups = cout // min(group_w, cout)  # bottleneck ratio 1: the 3x3 runs at the output width
        self.proj = conv_bn(cin, cout, 1, stride, relu=False) if (cin != cout or stride != 1) else None
        layers: list[nn.Module] = [conv_bn(cin, cout, 1), conv_bn(cout, cout, 3, stride, groups)]
        if se_ratio > 0:
            layers.append(SqueezeExcite(cout, int(round(se_ratio * cin))))
        layers.append(conv_bn(cout, cout, 1, relu=False))
        self.f = nn.Sequential(*layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.relu(shortcut + self.f(x))


class RegNet(nn.Module):
    def __init__(self, plan: list[tuple[int, int]], group_w: int, se_ratio: float = 0.0,
                 num_classes: int = 1000, in_chans: int = 3, stem: int = 32) -> None:
        super().__init__()
        self.stem = conv_bn(in_chans, stem, 3, 2)
        cin, stages = stem, []
        for w, n in plan:
            stages.append(nn.Sequential(*[ResBottleneck(cin if i == 0 else w, w, 2 if i == 0 else 1, group_w, se_ratio)
                                          for i in range(n)]))
            cin = w
        self.trunk = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.trunk(self.stem(x))), 1))


@register("regnetx_200mf", "RegNetX-200MF (2.7M params): grouped 3x3 convs (group width 8)", (3, 224, 224))
def regnetx_200mf(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return RegNet(stage_plan(13, 24, 36.44, 2.49, 8), 8, 0.0, num_classes, in_chans)


@register("regnety_400mf", "RegNetY-400MF (4.3M params): grouped 3x3 convs + SE", (3, 224, 224))
def regnety_400mf(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return RegNet(stage_plan(16, 48, 27.89, 2.09, 8), 8, 0.25, num_classes, in_chans)
