"""Models this project never saw: a 1-channel net that flattens with ``view`` trains, distils
and quantizes-aware (the loop feeds standard-contiguous batches whatever the channel count)."""

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
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


def test_calibration_count_defaults_to_what_the_data_holds():
    from edgecompress.config.stages import DEFAULT_CALIB_SAMPLES
    from edgecompress.errors import BadInput
    from edgecompress.pipeline.int8 import calibration_count

    assert calibration_count(None, 256) == (256, f"default {DEFAULT_CALIB_SAMPLES} capped at the 256 training samples")
    assert calibration_count(None, 10_000) == (DEFAULT_CALIB_SAMPLES, f"default {DEFAULT_CALIB_SAMPLES}")
    assert calibration_count(64, 256) == (64, "--calib-samples")
    with pytest.raises(BadInput) as e:  # an explicit count the data cannot give stays an error
        calibration_count(512, 256)
    assert "--calib-samples 512 exceeds the 256 training samples" in str(e.value) and "\n" not in str(e.value)


def _ctx(p50: dict[str, float], deliver: str = "int8", parent: str = "pruned"):
    from edgecompress.config import VerifyConfig
    from edgecompress.report import Artifact

    arts = {k: Artifact(path=f"{k}.onnx", macs=1, params=1, parent=None, latency_ms_p50=v) for k, v in p50.items()}
    return SimpleNamespace(arts=arts, fp32_parent=parent, cfg=SimpleNamespace(verify=VerifyConfig(deliver=deliver)))


def test_delivery_names_the_faster_file_and_keeps_int8_by_default():
    from edgecompress.pipeline.verify import delivery

    slow_int8 = {"original": 0.05, "pruned": 0.02, "int8": 0.03}
    assert delivery(_ctx(slow_int8), failed=False) == ("pruned", "int8")
    assert delivery(_ctx(slow_int8, "fastest"), failed=False) == ("pruned", "pruned")
    fast_int8 = {"original": 0.05, "pruned": 0.02, "int8": 0.01}
    assert delivery(_ctx(fast_int8, "fastest"), failed=False) == ("int8", "int8")
    assert delivery(_ctx(slow_int8), failed=True) == ("pruned", None)
    assert delivery(_ctx({"original": 0.05, "pruned": 0.02}), failed=False) == (None, "pruned")


def _manifest(p50_int8: float, delivered: str, fastest: str) -> dict:
    arts = {"original": {"path": "original.onnx", "parent": None, "latency_ms_p50": 0.05, "bytes": 4000},
            "pruned": {"path": "pruned.onnx", "parent": "original", "latency_ms_p50": 0.02, "bytes": 2000},
            "int8": {"path": "int8.onnx", "parent": "pruned", "latency_ms_p50": p50_int8, "bytes": 1000}}
    return {"model": {"ref": "net.py:build"}, "artifacts": arts, "delivered_artifact": delivered,
            "fastest_artifact": fastest, "status": "complete", "stages": ["prune", "ptq"], "seed": 0,
            "cpu": {"model": "cpu", "isa": {}}, "versions": {}, "bench": {"threads": 1, "batch": 1, "runs": 5,
                                                                         "warmup": 1}}


def test_report_says_in_its_first_lines_that_int8_is_slower():
    from edgecompress.report import render_report

    lines = render_report(_manifest(0.03, "int8", "pruned")).splitlines()
    assert lines[0].startswith("# edgecompress report")
    assert lines[2].startswith("**Warning: the INT8 file is slower than its FP32 parent on this CPU**")
    assert "`int8.onnx` p50 0.030 ms vs `pruned.onnx` 0.020 ms" in lines[2] and "Fastest file: `pruned.onnx`" in lines[2]
    assert lines[4] == "Delivered: `int8.onnx` (`--deliver fastest` delivers `pruned.onnx`)."
    fast = render_report(_manifest(0.01, "int8", "int8")).splitlines()
    assert "Warning" not in fast[2] and fast[2] == "Delivered: `int8.onnx` (the fastest file here)."


def test_shipped_teachers_are_package_data_with_matching_sidecars():
    import edgecompress
    from edgecompress.files import sha256_file
    from edgecompress.models.loading import SHIPPED_TEACHERS, WEIGHTS_DIR, shipped_checkpoint

    assert WEIGHTS_DIR.is_relative_to(Path(edgecompress.__file__).parent)  # inside the package, not the repo
    assert sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")) == sorted(SHIPPED_TEACHERS)
    for name in SHIPPED_TEACHERS:
        pt, side = shipped_checkpoint(name)
        assert sha256_file(pt) == side["sha256"] and side["test_top1"] > 0.9
    assert shipped_checkpoint("resnet56") is None  # a zoo model without a shipped teacher


def test_missing_shipped_teacher_is_a_one_line_error_not_a_random_init(tmp_path, monkeypatch):
    import edgecompress.models.loading as loading
    from edgecompress.config import ModelConfig
    from edgecompress.errors import BadInput

    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path)  # an install without the package data
    with pytest.raises(BadInput) as e:
        loading.load_model(ModelConfig(name="resnet20"))
    msg = str(e.value)
    assert "\n" not in msg and "resnet20" in msg and "missing from this install" in msg and "--weights" in msg
    # with --weights the user's own file is used, shipped data or not
    sd = loading.zoo.create_model("resnet20", num_classes=10, in_chans=1).state_dict()
    torch.save(sd, tmp_path / "mine.pt")
    lm = loading.load_model(ModelConfig(name="resnet20", weights=str(tmp_path / "mine.pt")))
    assert lm.weights == str(tmp_path / "mine.pt")
