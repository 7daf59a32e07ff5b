"""CIFAR-style ResNets (He et al. 2016, sec. 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.

Down-sampling shortcuts are 1x1 conv + BN ("option B"), not zero-padding, so that the
dependency graph ties the residual channels together and structured pruning can shrink them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 1, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet20", "CIFAR-style ResNet-20 (0.27M params), the default teacher")
def resnet20(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return CifarResNet(20, num_classes, in_chans)


@register("resnet56", "CIFAR-style ResNet-56 (0.85M params)")
def resnet56(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return CifarResNet(56, num_classes, in_chans)


@register("resnet8-tiny", "4-channel-wide ResNet-8 for fast tests")
def resnet8_tiny(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return CifarResNet(8, num_classes, in_chans, width=8)
