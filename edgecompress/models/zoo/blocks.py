"""Building blocks shared by the zoo's MobileNet, EfficientNet and RegNet definitions."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU, eps: float = 1e-5) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> optional activation, as one Sequential
    (indices 0, 1, 2: the state_dict layout torchvision uses)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(avgpool(x))))): sigmoid gate in EfficientNet / RegNetY, hard-sigmoid
    in MobileNetV3; the 1x1 convs are the only parameters (fc1, fc2)."""

    def __init__(self, channels: int, squeeze: int, *, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate() if gate is nn.Sigmoid else gate(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
