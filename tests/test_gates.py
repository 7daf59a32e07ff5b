"""A wrong model must never pass (issue 24): the structural-equivalence gate of every pruning step,
the accuracy gate of every artifact against the original, bounded pruning, and augmentation only
where it fits the input."""

from __future__ import annotations

import json
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.config import PruneConfig, VerifyConfig
from edgecompress.errors import BadInput
from edgecompress.pipeline.evaluate import original_gates
from edgecompress.prune import prune
from edgecompress.prune.bounds import bounded
from edgecompress.prune.equivalence import check_equivalence, record_removals
from edgecompress.report import Artifact, render_report
from edgecompress.train.augment_policy import augment_policy

from .conftest import needs_fmnist, run_cli

PERMUTE_NET = '''
import torch
import torch.nn as nn


class PermuteNet(nn.Module):
    """Convs, then NCHW -> NHWC before flattening into the classifier (as models ported from
    TensorFlow do): Torch-Pruning maps the cut channels onto fc's columns as if channel-first."""

    def __init__(self, num_classes=10, ln=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.GroupNorm(4, 16) if ln else nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=4, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))


def build():
    return PermuteNet()
'''


def _permute_net(tmp_path, **kw) -> nn.Module:
    ns: dict = {}
    exec(PERMUTE_NET, ns)  # the same source the CLI test loads from a file
    torch.manual_seed(0)
    m = ns["PermuteNet"](**kw)
    with torch.no_grad():  # BN statistics of real activations, so removed channels carry signal
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None
        m.train()(torch.randn(16, 1, 28, 28))
    return m.eval()


def _pruned(model: nn.Module, **cfg):
    with record_removals() as log:
        res = prune(model, torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5, round_to=4, **cfg))
    return res, log


def test_equivalence_names_the_miswired_classifier_of_a_permute_before_flatten(tmp_path) -> None:
    m = _permute_net(tmp_path)
    res, log = _pruned(m)
    x = torch.randn(8, 1, 28, 28)
    eq = check_equivalence(m, res.model, log, x)
    assert eq.status == "failed" and eq.layer == "fc" and eq.max_abs > 100 * eq.bound, eq
    # leaving the flattened conv whole keeps fc's columns: the same check then holds
    res, log = _pruned(m, ignore=("conv2",))
    eq = check_equivalence(m, res.model, log, x)
    assert eq.status == "held" and eq.removed_channels > 0 and eq.max_abs <= eq.bound, eq


def test_equivalence_holds_on_a_residual_net_and_says_when_it_cannot_apply(tmp_path) -> None:
    from edgecompress.models.zoo import create_model

    torch.manual_seed(0)
    m = create_model("resnet8-tiny", num_classes=10, in_chans=1).eval()
    res, log = _pruned(m)
    eq = check_equivalence(m, res.model, log, torch.randn(4, 1, 28, 28))
    assert eq.status == "held" and eq.removed_channels > 0
    g = _permute_net(tmp_path, ln=True)  # GroupNorm normalises across the channels it would lose
    res, log = _pruned(g, ignore=("conv2",))
    eq = check_equivalence(g, res.model, log, torch.randn(4, 1, 28, 28))
    assert eq.status == "not applicable" and "bn1 (GroupNorm)" in eq.reason


@pytest.mark.slow
def test_export_fails_the_equivalence_gate_on_a_permute_before_flatten(tmp_path) -> None:
    """On the base of this branch this run exited 0 with both parity gates passed."""
    (tmp_path / "permnet.py").write_text(PERMUTE_NET)
    args = ["export", "permnet.py:build", "--data", "random", "--input-shape", "1,1,28,28", "--distill-epochs", "0",
            "--quant", "none", "--exporter", "torchscript", "--runs", "2", "--out", str(tmp_path / "out")]
    p = run_cli(args, cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["status"] == "failed" and "pruned" not in m["artifacts"]
    assert m["stage_results"]["equivalence"][0]["layer"] == "fc"
    failed = [g for g in m["gates"] if not g["passed"]]
    assert len(failed) == 1 and "fc" in failed[0]["name"]
    assert "fc" in (tmp_path / "out" / "report.md").read_text().splitlines()[2]
    p = run_cli([*args[:-1], str(tmp_path / "ok"), "--ignore", "conv2", "--prune-ratio", "0.3"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert m["stage_results"]["equivalence"][0]["status"] == "held"


def _ctx(y, preds_top1: dict, verify: VerifyConfig):
    arts = {k: Artifact(path=f"{k}.onnx", macs=1, params=1, parent=None, top1=v) for k, v in preds_top1.items()}
    return SimpleNamespace(cfg=SimpleNamespace(verify=verify), splits=SimpleNamespace(eval=SimpleNamespace(y=y)),
                           arts=arts, gates=[], stage_results={}, log=lambda _m: None)


def test_original_gate_bounds_the_drop_by_points_or_noise() -> None:
    y = np.arange(1000) % 10
    orig = y.copy()
    worse = y.copy()
    worse[::10] = (worse[::10] + 1) % 10  # 10 points lost
    slightly = y.copy()
    slightly[::50] = (slightly[::50] + 1) % 10  # 2 points lost
    preds = {"original": orig, "pruned": worse, "int8": slightly}
    ctx = _ctx(y, {k: float((p == y).mean()) for k, p in preds.items()}, VerifyConfig())
    original_gates(ctx, preds)
    g = {x.artifact: x for x in ctx.gates}
    assert not g["pruned"].passed and g["pruned"].value == pytest.approx(10.0) and g["pruned"].bound == 3.0
    assert g["int8"].passed and ctx.stage_results["vs_original"]["int8"]["agreement"] == pytest.approx(0.98)
    # 20 samples: 2 standard errors of a 10-point paired difference exceed 10 points, the drop passes
    ctx = _ctx(y[:20], {k: float((p[:20] == y[:20]).mean()) for k, p in preds.items()}, VerifyConfig())
    original_gates(ctx, {k: p[:20] for k, p in preds.items()})
    small = next(x for x in ctx.gates if x.artifact == "pruned")
    assert small.passed and small.bound > small.value > 3.0
    ctx = _ctx(y, {k: float((p == y).mean()) for k, p in preds.items()}, VerifyConfig(max_drop_vs_original=0))
    original_gates(ctx, preds)
    assert ctx.gates == [] and ctx.stage_results["vs_original"]["pruned"]["top1_drop_points"] == pytest.approx(10)
    ctx = _ctx(None, {k: None for k in preds}, VerifyConfig())  # unlabelled: agreement with the original
    original_gates(ctx, preds)
    assert [(x.artifact, x.passed) for x in ctx.gates] == [("pruned", True), ("int8", True)]
    ctx = _ctx(None, {k: None for k in preds}, VerifyConfig(min_agreement_vs_original=0.95))
    original_gates(ctx, preds)
    assert [(x.artifact, x.passed) for x in ctx.gates] == [("pruned", False), ("int8", True)]


@pytest.mark.slow
@needs_fmnist
def test_export_far_below_the_original_exits_1_and_the_report_says_which(tmp_path) -> None:
    """80% of the shipped teacher's MACs removed and no distillation: top-1 falls to chance."""
    p = run_cli(["export", "--prune-ratio", "0.8", "--distill-epochs", "0", "--max-train", "256", "--max-eval", "500",
                 "--calib-samples", "32", "--exporter", "torchscript", "--runs", "2", "--out", str(tmp_path / "o")],
                cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    out = tmp_path / "o"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed"
    assert m["artifacts"]["pruned"]["status"] == "failed" and m["artifacts"]["pruned"]["path"] == "pruned.failed.onnx"
    assert m["artifacts"]["pruned"]["checkpoint"] == "pruned.failed.pt" and (out / "pruned.failed.pt").is_file()
    assert not (out / "pruned.onnx").exists() and not (out / "int8.onnx").exists()
    assert m["stage_results"]["vs_original"]["pruned"]["top1_drop_points"] > 50
    first = render_report(m).splitlines()[2:4]
    assert first[0].startswith("**FAILED: pruned (`pruned.failed.onnx`) lost") and "against the original" in first[0]
    assert first[1].startswith("**FAILED: int8 (`int8.failed.onnx`) lost")
    assert (out / "report.md").read_text().splitlines()[2] == first[0]


class _SlowToTrace(nn.Module):
    """Fast in inference, slow while Torch-Pruning traces it (with gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        if torch.is_grad_enabled():
            time.sleep(2)
        return self.fc(self.conv(x).mean((2, 3)))


def test_bounded_names_graph_construction_and_restores_the_signal_handler() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    t0 = time.monotonic()
    with pytest.raises(BadInput) as e:
        with bounded("pruning step 2/3", seconds=0.2, memory_fraction=0, way_out="raise the bound"):
            prune(_SlowToTrace(), torch.zeros(1, 1, 8, 8), PruneConfig(ratio=0.5, round_to=1))
    assert time.monotonic() - t0 < 1.5  # the 2 s sleep was interrupted
    assert str(e.value) == ("pruning step 2/3 took more than 0.2 s while building the dependency graph "
                            "(Torch-Pruning); raise the bound")
    assert signal.getsignal(signal.SIGUSR1) is before
    with bounded("x", seconds=5, memory_fraction=0.9, way_out=""):  # within bounds: nothing happens
        assert sum(range(1000)) == 499500
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "value", "needle"), [("--prune-max-seconds", "0.01", "took more than 0.01 s"),
                                                       ("--prune-max-memory", "0.001", "GB of memory (bound")])
def test_export_pruning_over_its_bound_ends_with_one_line(tmp_path, flag, value, needle) -> None:
    p = run_cli(["export", "resnet20", "--data", "random", "--input-shape", "1,1,28,28", flag, value,
                 "--distill-epochs", "0", "--quant", "none", "--out", str(tmp_path / "o")], cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: pruning ") and needle in line and " while " in line
    assert "--ignore NAME" in line and "--prune-ratio" in line and flag in line and "Traceback" not in p.stderr


def test_augmentation_only_on_image_like_inputs() -> None:
    assert augment_policy((1, 28, 28), 2, True).to_dict() | {"reason": ""} == {"shift": 2, "flip": True, "reason": ""}
    assert augment_policy((3, 32, 32), 2, False).shift == 2
    frames = augment_policy((1, 1024, 1), 2, True)  # 4 in 5 shifted frames would be all zeros
    assert (frames.shift, frames.flip) == (0, False) and "not an image" in frames.reason
    assert augment_policy((64, 8, 8), 2, True).shift == 0  # 64 feature maps are not colours
    assert augment_policy((1, 6, 6), 2, True).shift == 0
    small = augment_policy((1, 8, 8), 4, True)  # a 4-px shift of an 8-px image: flip only
    assert (small.shift, small.flip) == (0, True)
    assert augment_policy((1, 28, 28), 0, False).reason == "augmentation off"


def test_npz_uint8_stays_uint8_and_every_batch_reads_as_before(tmp_path) -> None:
    """A uint8 npz is held as uint8 (a quarter of the float32 bytes); models see the same floats."""
    from edgecompress.data import as_float, load_npz, load_splits
    from edgecompress.train.loop import TrainConfig, fit, predict_logits

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 2, 40))
    d = load_npz(tmp_path / "d.npz")
    assert d.x.dtype == np.uint8 and np.array_equal(d.x, x)
    want = x.astype(np.float32) / 255.0  # what the reader returned before
    assert as_float(d.x).dtype == np.float32 and np.array_equal(as_float(d.x), want)
    s = load_splits(str(tmp_path / "d.npz"), None, input_shape=None)
    assert s.train.x.dtype == np.uint8 and s.eval.x.dtype == np.uint8
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    assert np.array_equal(predict_logits(net, d.x, batch_size=16), predict_logits(net, want, batch_size=16))
    seen = []
    res = fit(net, d, TrainConfig(epochs=1, batch_size=16), lambda o, xb, yb: seen.append(xb.dtype) or o.square().mean())
    assert res.steps == 3 and seen == [torch.float32] * 3


@pytest.mark.parametrize(("shape", "shifted"), [((1, 64, 1), False), ((1, 28, 28), True)])
def test_distillation_shifts_images_but_not_frames(shape, shifted) -> None:
    """The teacher sees the batches KD trains on: frames arrive whole, images shifted as before."""
    from edgecompress.config import DistillConfig
    from edgecompress.data import Dataset
    from edgecompress.train.distill import distill

    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    teacher, seen = net().eval(), []
    teacher.register_forward_hook(lambda _m, i, _o: seen.append(i[0].detach().clone()))
    d = Dataset(np.ones((64, *shape), np.float32), np.zeros(64, np.int64), "ones")
    distill(net(), teacher, d, DistillConfig(epochs=1, batch_size=16))
    x = torch.cat(seen)
    assert len(x) == 64 and bool((x == 0).any()) == shifted
    assert bool((x.flatten(1).sum(1) > 0).all())  # no sample was cropped to nothing
