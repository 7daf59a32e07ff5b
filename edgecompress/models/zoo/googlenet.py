"""GoogLeNet / Inception v1 (Szegedy et al. 2015), torchvision's layout (BN after every conv).

An Inception module runs four branches on the same input — 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (the
"5x5" branch, a 3x3 in torchvision's port); 3x3 max-pool -> 1x1 — and concatenates them. The
auxiliary classifiers only exist for training and are left out (they are unused at inference).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.registry import register


class BasicConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=1e-3),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(cin, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.stem = nn.Sequential(
            BasicConv(in_chans, 64, 7, 2, 3), pool(), BasicConv(64, 64, 1), BasicConv(64, 192, 3, padding=1), pool(),
        )  # fmt: skip
        # (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): table 1 of the paper.
        self.inception3 = nn.Sequential(Inception(192, 64, 96, 128, 16, 32, 32),
                                        Inception(256, 128, 128, 192, 32, 96, 64), pool())
        self.inception4 = nn.Sequential(
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(2, 2, ceil_mode=True),
        )  # fmt: skip
        self.inception5 = nn.Sequential(Inception(832, 256, 160, 320, 32, 128, 128),
                                        Inception(832, 384, 192, 384, 48, 128, 128))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception5(self.inception4(self.inception3(self.stem(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


@register("googlenet", "GoogLeNet / Inception v1 (6.6M params): 4-branch concat modules", (3, 224, 224))
def googlenet(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return GoogLeNet(num_classes, in_chans)
