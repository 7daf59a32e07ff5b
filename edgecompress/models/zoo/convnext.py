"""ConvNeXt-Tiny (Liu et al. 2022), the official layout: depths (3, 3, 9, 3), widths 96..768.

Block = 7x7 depthwise conv -> channels-last LayerNorm -> Linear(4x) -> GELU -> Linear -> layer
scale -> residual. The two Linears act on the channel dim of an NHWC tensor (the official
"pointwise conv as Linear" trick), so the dependency graph sees a plain chain conv -> LN -> Linear
with channel index i the same everywhere. The stem and down-sampling layers normalise NCHW
maps with ``LayerNorm2d``: an ``nn.LayerNorm`` subclass, so Torch-Pruning recognises it and
prunes its weight/bias and ``normalized_shape`` together with the channels it normalises.
The layer scale is a bare ``nn.Parameter`` of shape (C,); Torch-Pruning detects such unwrapped
parameters and prunes their only dimension. Stochastic depth (training only) is left out.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.models.zoo.registry import register


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (per pixel), as in the official code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768),
                 num_classes: int = 1000, in_chans: int = 3, layer_scale: float = 1e-6) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for i, (d, dim) in enumerate(zip(depths, dims, strict=True)):
            if i == 0:  # "patchify" stem: 4x4 stride-4 conv
                down = nn.Sequential(nn.Conv2d(in_chans, dim, 4, 4), LayerNorm2d(dim, eps=1e-6))
            else:
                down = nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2))
            stages.append(nn.Sequential(down, *[Block(dim, layer_scale) for _ in range(d)]))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.stages(x)), 1)
        return self.head(self.norm(x))


@register("convnext_tiny", "ConvNeXt-Tiny (28.6M params): 7x7 depthwise, LayerNorm, GELU MLP, layer scale",
          (3, 224, 224))
def convnext_tiny(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return ConvNeXt(num_classes=num_classes, in_chans=in_chans)
