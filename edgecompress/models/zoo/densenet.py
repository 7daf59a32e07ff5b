"""DenseNet-121 (Huang et al. 2017), torchvision's layout: growth 32, blocks (6, 12, 24, 16), bn_size 4.

Each dense layer sees the *concatenation* of all earlier feature maps of its block and is
pre-activated (BN -> ReLU -> conv). Pruning the 3x3 conv of one layer therefore has to cut the
matching slice out of every later layer's BN and 1x1 conv input and out of the transition:
this is the concat case of the dependency graph, with index offsets that grow along the block.

The block concatenates incrementally, ``x = cat(x, layer(x))`` (as the authors' original Torch
code did), instead of torchvision's ``cat(list_of_all_features)`` in every layer: the same tensors,
parameters and MACs, but each concat has 2 inputs instead of up to 25. Torch-Pruning recomputes
every concat's index mapping each time it builds a group, at a cost cubic in the number of
inputs: pruning 50% of MACs at 32 px took 45 s CPU in the list form, 22 s in this one (measured).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.registry import register


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.norm1(x)))
        return self.conv2(self.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat((x, layer(x)), 1)  # [x0, ..., x_l] grows by `growth` channels per layer
        return x


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, init: int = 64,
                 bn_size: int = 4, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        feats: list[nn.Module] = [
            nn.Conv2d(in_chans, init, 7, 2, 3, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]  # fmt: skip
        c = init
        for i, n in enumerate(blocks):
            feats.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                feats.append(Transition(c, c // 2))
                c //= 2
        feats += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("densenet121", "DenseNet-121 (8.0M params): dense concatenation, pre-activation BN", (3, 224, 224))
def densenet121(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return DenseNet(num_classes=num_classes, in_chans=in_chans)
