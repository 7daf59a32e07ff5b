"""Models this project never saw: a 1-channel net that flattens with ``view`` trains, distils
and quantizes-aware (the loop feeds standard-contiguous batches whatever the channel count)."""

import copy

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import DistillConfig, QatConfig
from edgecompress.quantize.qat import qat
from edgecompress.train.distill import distill
from edgecompress.train.loop import TrainConfig, augment, cross_entropy, fit, mixup, standard_layout

from .conftest import quadrants


class ViewNet(nn.Module):
    """Flattens the last conv's output with ``view``, as many published classifiers do."""

    def __init__(self, in_chans: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


def _standard(t: torch.Tensor) -> bool:
    return t.stride() == torch.empty(t.shape).stride()


def test_augmented_and_mixed_batches_have_standard_strides_for_one_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16)
    for shift, flip in ((2, True), (2, False), (0, True)):
        y = augment(x, g, shift, flip)
        assert _standard(y), (shift, flip, y.stride())
    assert _standard(standard_layout(mixup(augment(x, g, 2, True), g, 0.2)[0]))
    # a channels-last view of a 1-channel batch is "contiguous" to torch, not standard
    cl = torch.rand(6, 16, 16, 1).permute(0, 3, 1, 2)
    assert cl.is_contiguous() and not _standard(cl) and _standard(standard_layout(cl))
    same = torch.rand(2, 3, 4, 4)
    assert standard_layout(same) is same  # no copy when there is nothing to fix


def test_one_channel_view_model_trains_and_distils():
    torch.manual_seed(0)
    train, val = quadrants(256, 0), quadrants(128, 1)
    teacher = ViewNet()
    fit(teacher, train, TrainConfig(epochs=6, batch_size=32, lr=0.05, augment_shift=2, mixup=0.2), cross_entropy)
    student = copy.deepcopy(teacher)
    res = distill(student, teacher, train, DistillConfig(epochs=1, batch_size=32, lr=0.02, augment_shift=2), val=val)
    assert res.steps > 0 and np.isfinite(res.final_loss)
    assert res.val_top1_after is not None and res.val_top1_after > 0.5, res.val_top1_after


def test_one_channel_view_model_qat():
    torch.manual_seed(0)
    train = quadrants(128, 0)
    model = ViewNet().eval()
    res = qat(model, model, train, torch.zeros(1, 1, 16, 16), QatConfig(epochs=0.5, calib_samples=32, augment_shift=2))
    assert res.steps > 0 and np.isfinite(res.final_loss)
