"""ImageNet MobileNets, torchvision's layout: V2 (Sandler et al. 2018) and V3 (Howard et al. 2019).

V2: inverted residuals (1x1 expand -> 3x3 depthwise -> linear 1x1 project), ReLU6.
V3: the same block with 3x3/5x5 depthwise kernels, hardswish in the deeper half and
squeeze-excitation (global pool -> 1x1 -> ReLU -> 1x1 -> hardsigmoid -> channel-wise scale).
The SE scale multiplies the depthwise output, so its second 1x1 conv is coupled to those
channels and must be pruned with them; the SE bottleneck (first 1x1) is a group of its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.models.zoo import blocks
from edgecompress.models.zoo.registry import register


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90% of ``v`` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    return blocks.conv_bn_act(cin, cout, k, stride, groups, act)


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation: He (fan-out) convs, N(0, 0.01) linears, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


# --- MobileNetV2 ---------------------------------------------------------------------------


class InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, 1))
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand t, out channels c, repeats n, first stride s): table 2 of the paper.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_act(in_chans, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --- MobileNetV3 ---------------------------------------------------------------------------


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, act: type[nn.Module], stride: int):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn_act(cin, hidden, 1, act=act))
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(blocks.SqueezeExcite(hidden, make_divisible(hidden // 4), gate=nn.Hardsigmoid))
        layers.append(conv_bn_act(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


RE, HS = nn.ReLU, nn.Hardswish
# (in, kernel, expanded, out, SE, activation, stride): tables 1 and 2 of the paper.
V3_LARGE = (
    (16, 3, 16, 16, False, RE, 1), (16, 3, 64, 24, False, RE, 2), (24, 3, 72, 24, False, RE, 1),
    (24, 5, 72, 40, True, RE, 2), (40, 5, 120, 40, True, RE, 1), (40, 5, 120, 40, True, RE, 1),
    (40, 3, 240, 80, False, HS, 2), (80, 3, 200, 80, False, HS, 1), (80, 3, 184, 80, False, HS, 1),
    (80, 3, 184, 80, False, HS, 1), (80, 3, 480, 112, True, HS, 1), (112, 3, 672, 112, True, HS, 1),
    (112, 5, 672, 160, True, HS, 2), (160, 5, 960, 160, True, HS, 1), (160, 5, 960, 160, True, HS, 1),
)  # fmt: skip
V3_SMALL = (
    (16, 3, 16, 16, True, RE, 2), (16, 3, 72, 24, False, RE, 2), (24, 3, 88, 24, False, RE, 1),
    (24, 5, 96, 40, True, HS, 2), (40, 5, 240, 40, True, HS, 1), (40, 5, 240, 40, True, HS, 1),
    (40, 5, 120, 48, True, HS, 1), (48, 5, 144, 48, True, HS, 1), (48, 5, 288, 96, True, HS, 2),
    (96, 5, 576, 96, True, HS, 1), (96, 5, 576, 96, True, HS, 1),
)  # fmt: skip


class MobileNetV3(nn.Module):
    def __init__(self, settings: tuple, last_channel: int, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_chans, settings[0][0], 3, 2, act=HS)]
        layers += [InvertedResidualV3(*s) for s in settings]
        last_conv = 6 * settings[-1][3]
        layers.append(conv_bn_act(settings[-1][3], last_conv, 1, act=HS))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel), nn.Hardswish(inplace=True), nn.Dropout(0.2),
            nn.Linear(last_channel, num_classes),
        )  # fmt: skip
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenet_v2", "ImageNet MobileNetV2 width 1.0 (3.5M params): depthwise, inverted residuals",
          (3, 224, 224))
def mobilenet_v2(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_chans)


@register("mobilenet_v3_large", "ImageNet MobileNetV3-Large (5.5M params): depthwise, SE, hardswish",
          (3, 224, 224))
def mobilenet_v3_large(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return MobileNetV3(V3_LARGE, 1280, num_classes, in_chans)


@register("mobilenet_v3_small", "ImageNet MobileNetV3-Small (2.5M params): depthwise, SE, hardswish",
          (3, 224, 224))
def mobilenet_v3_small(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return MobileNetV3(V3_SMALL, 1024, num_classes, in_chans)
