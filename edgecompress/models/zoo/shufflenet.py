"""ShuffleNetV2 x1.0 (Ma et al. 2018), torchvision's layout: stages of 4/8/4 units, 116/232/464 channels.

A stride-1 unit splits its input in two halves, passes one half through, runs the
other through 1x1 -> 3x3 depthwise -> 1x1, concatenates, then *shuffles* channels (groups=2,
an interleave of the two halves). A stride-2 unit runs two branches on the whole input instead.

Pruning: the channels that go through a shuffle cannot be removed structurally by Torch-Pruning.
An interleave is not an index mapping its dependency graph can express (it knows concat, split,
slice and flatten-like reshapes). The usual 5-D view -> transpose -> view crashes the graph
builder (ZeroDivisionError in ``update_reshape_index_mapping``); written as a gather (below) the
graph builds but treats the shuffle as the identity, and pruning across it yields a model whose
layers no longer fit together (measured: "weight of size [56, 57, 1, 1] ... got 56 channels").
A correct cut would need the same indices removed from both interleaved halves and balanced
across every later split, which no Torch-Pruning option expresses. So the model lists the convs
whose outputs are shuffled in ``prune_ignore`` (pass them as ``PruneConfig.ignore``): their
groups - every channel between two shuffles - stay whole, while the branch-internal 1x1 and
depthwise widths, the stem and conv5 are pruned. That still removes over half the MACs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo.registry import register


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # Same permutation as view(b, g, c/g, h, w) -> transpose(1, 2) -> view(b, c, h, w), written as a
    # gather: Torch-Pruning's graph builder divides by zero on that 5-D view (see module docstring).
    c = x.shape[1]
    perm = torch.arange(c, device=x.device).view(groups, c // groups).t().reshape(-1)
    return x.index_select(1, perm)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 1 and cin != cout:
            raise ValueError("a stride-1 unit keeps the width")
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(*conv_bn(cin, cin, 3, stride, groups=cin, relu=False), *conv_bn(cin, half, 1))
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            *conv_bn(b2_in, half, 1), *conv_bn(half, half, 3, stride, groups=half, relu=False), *conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # split with explicit sizes, not chunk(2): Torch-Pruning 1.6 reads chunk's split size from
            # grad_fn._saved_split_size only when _saved_self_sizes exists (torch 2.13 has _saved_self_sym_sizes)
            # and otherwise guesses sizes from the consumers (a concat here) -> wrong offsets, IndexError.
            half = x.shape[1] // 2
            x1, x2 = x.split([half, half], dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats: tuple[int, ...], widths: tuple[int, ...], num_classes: int = 1000,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(in_chans, widths[0], 3, 2))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = widths[0], []
        for n, w in zip(repeats, widths[1:-1], strict=True):
            stages.append(nn.Sequential(*[ShuffleUnit(cin if i == 0 else w, w, 2 if i == 0 else 1) for i in range(n)]))
            cin = w
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*conv_bn(cin, widths[-1], 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        # The last conv of each branch feeds a concat + shuffle (see the module docstring).
        self.prune_ignore: tuple[str, ...] = tuple(
            f"{name}.2" if name.endswith("branch1") else f"{name}.5"
            for name, m in self.named_modules()
            if name.endswith(("branch1", "branch2")) and len(m) > 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("shufflenet_v2_x1_0", "ShuffleNetV2 x1.0 (2.3M params): channel split + shuffle, depthwise",
          (3, 224, 224))
def shufflenet_v2_x1_0(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024), num_classes, in_chans)
