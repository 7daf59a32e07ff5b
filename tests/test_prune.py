import subprocess
import sys

import numpy as np
import pytest
import torch

from edgecompress.config import ExportOnnxConfig, PruneConfig, QuantConfig
from edgecompress.errors import BadInput
from edgecompress.export import export_onnx, parity
from edgecompress.models.zoo import create_model
from edgecompress.prune import count_macs_params, output_layers, prune
from edgecompress.runtime.meter import LOCAL

from .conftest import ROOT

X = torch.zeros(1, 1, 28, 28)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2-small"])
def test_pruning_shrinks_macs_params_and_onnx(tmp_path, name):
    model = create_model(name).eval()
    res = prune(model, X, PruneConfig(ratio=0.5, round_to=4 if name == "resnet20" else 8))
    assert res.macs_after <= 0.5 * res.macs_before
    assert res.params_after < 0.7 * res.params_before
    assert count_macs_params(model, X)[0] == res.macs_before  # the input model is untouched
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(model, X, a, ExportOnnxConfig())
    export_onnx(res.model, X, b, ExportOnnxConfig())
    assert b.stat().st_size < 0.7 * a.stat().st_size  # channels physically gone
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    assert parity(res.model, b, x, 1e-4).passed


def test_classifier_output_is_never_pruned():
    model = create_model("resnet20", num_classes=7).eval()
    res = prune(model, X, PruneConfig(ratio=0.6, round_to=1, allocation="global"))
    assert res.model.fc.out_features == 7
    assert output_layers(model, X) == [model.fc]
    assert "fc" not in res.record or "out_features" not in res.record["fc"]


def test_ignore_keeps_a_layer_whole():
    model = create_model("resnet20").eval()
    res = prune(model, X, PruneConfig(ratio=0.5, round_to=1, ignore=("layer3.0.conv1",)))
    assert res.model.layer3[0].conv1.out_channels == 64
    assert res.model.layer3[1].conv1.out_channels < 64


def test_unknown_ignore_name_is_bad_input():
    with pytest.raises(BadInput, match="no module"):
        prune(create_model("resnet20"), X, PruneConfig(ratio=0.5, ignore=("nope",)))


def test_unreachable_ratio_is_bad_input_naming_the_way_out():
    # no layer may lose more than half its channels: MACs cannot fall by 90%
    with pytest.raises(BadInput, match="lower --prune-ratio"):
        prune(create_model("resnet20"), X, PruneConfig(ratio=0.9, round_to=8, max_layer_ratio=0.5))


@pytest.mark.parametrize("importance", ["l1", "bn", "taylor", "random", "fpgm"])
def test_importance_criteria_meet_the_target(importance):
    rng = np.random.default_rng(0)
    res = prune(create_model("resnet20").eval(), X, PruneConfig(ratio=0.4, importance=importance, round_to=1),
                calib_x=rng.random((32, 1, 28, 28), dtype=np.float32), calib_y=rng.integers(0, 10, 32))
    assert 0.4 <= 1 - res.macs_after / res.macs_before < 0.46


def test_round_to_keeps_channel_counts_multiples():
    res = prune(create_model("resnet20").eval(), X, PruneConfig(ratio=0.5, round_to=4))
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert convs and all(m.out_channels % 4 == 0 for m in convs)


def test_load_pruned_round_trips_in_a_fresh_process(tmp_path):
    """pruned.pt is rebuilt from factory + record in another process: same outputs, no pickle."""
    import io
    import json

    from edgecompress.models import FORMAT

    model = create_model("mobilenetv2-small").eval()
    res = prune(model, X, PruneConfig(ratio=0.5))
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "spec": json.dumps({"kind": "zoo", "ref": "mobilenetv2-small",
                "kwargs": {"num_classes": 10, "in_chans": 1}}), "record": json.dumps(res.record),
                "input_shape": [1, 1, 28, 28], "state_dict": res.model.state_dict()}, buf)
    (tmp_path / "pruned.pt").write_bytes(buf.getvalue())
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", res.model(x).numpy())
    code = (
        "import numpy as np, torch, edgecompress; "
        f"m = edgecompress.load_pruned({str(tmp_path / 'pruned.pt')!r}); "
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True); "
        "y = m(x).detach().numpy(); "
        f"print(float(np.abs(y - np.load({str(tmp_path / 'ref.npy')!r})).max()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert float(out.stdout.strip()) == 0.0


def test_target_params_is_met():
    res = prune(create_model("resnet20").eval(), X, PruneConfig(target_params=0.6, round_to=1))
    assert res.params_after <= 0.4 * res.params_before
    assert res.params_after > 0.3 * res.params_before  # no gross overshoot


def test_target_params_alone_sets_no_macs_target():
    assert PruneConfig(target_params=0.6).macs_target == 0.0
    assert PruneConfig().macs_target == 0.5  # no target at all: the default
    assert PruneConfig(ratio=0.3, target_params=0.6).macs_target == 0.3


def test_macs_and_params_targets_are_both_met():
    """Uniform pruning at 50% MACs removes ~50% of params on resnet20; asking for 75% of the
    params too keeps pruning past the MACs target until the params target is met."""
    model = create_model("resnet20").eval()
    macs_only = prune(model, X, PruneConfig(ratio=0.5, round_to=1))
    both = prune(model, X, PruneConfig(ratio=0.5, target_params=0.75, round_to=1))
    assert macs_only.params_after > 0.25 * macs_only.params_before  # the params target is not met by MACs alone
    assert both.params_after <= 0.25 * both.params_before
    assert both.macs_after <= 0.5 * both.macs_before
    # the other way round: a params target already met leaves the MACs target in charge
    deep = prune(model, X, PruneConfig(ratio=0.8, target_params=0.1, round_to=1))
    assert deep.macs_after <= 0.2 * deep.macs_before


def test_ratio_and_latency_target_conflict():
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one"):
        PruneConfig(ratio=0.5, target_latency_ms=1.0).validate()
    PruneConfig(ratio=0.0, target_latency_ms=1.0).validate()  # 0 = no MACs target: fine


def test_latency_target_stops_when_measured_p50_meets_it():
    from edgecompress.pipeline.probe import latency_criterion

    model = create_model("resnet20").eval()
    onnx = ExportOnnxConfig(exporter="torchscript")  # the quick exporter: logic, not speed
    base = latency_criterion(X, None, onnx=onnx, quant=None)(model)
    target = 0.6 * base
    res = prune(model, X, PruneConfig(target_latency_ms=target, round_to=1),
                latency=latency_criterion(X, None, onnx=onnx, quant=None))
    hist = res.latency_history
    assert hist[0]["macs"] == res.macs_before and len(hist) >= 2
    assert hist[-1]["p50_ms"] <= target  # stopped on a measurement that met the target
    assert "first_p50_ms" in hist[-1]  # ... confirmed by a median of 3 before stopping
    assert all(h["p50_ms"] > target for h in hist[:-1])  # ... and not before
    assert res.macs_after < res.macs_before


def test_unreachable_latency_target_says_how_fast_it_got_and_what_to_do():
    from edgecompress.pipeline.probe import latency_criterion

    model = create_model("resnet8-tiny").eval()
    x = torch.zeros(1, 1, 16, 16)
    fp32 = latency_criterion(x, None, onnx=ExportOnnxConfig(exporter="torchscript"), quant=None)
    with pytest.raises(BadInput) as e:
        prune(model, x, PruneConfig(target_latency_ms=1e-6, round_to=1), latency=fp32)
    msg = str(e.value)
    assert "cannot reach a p50 latency of 1e-06 ms" in msg and "the fastest file measured ran in" in msg
    assert "raise --target-latency-ms" in msg and "--drop-blocks" in msg and "\n" not in msg
    assert "--latency-aware-int8" not in msg  # FP32 (--quant none): the flag would not apply


def test_latency_probe_times_the_latency_aware_file_when_asked(monkeypatch):
    """With --latency-aware-int8 the probe times the file the run will ship, not plain INT8."""
    import edgecompress.pipeline.probe as probe

    calls = []
    real = probe.latency_aware_ptq

    def spy(fp32, out, calib, cfg, **kw):
        calls.append((cfg.latency_aware, kw))
        return real(fp32, out, calib, cfg, **kw)

    monkeypatch.setattr(probe, "latency_aware_ptq", spy)
    model = create_model("resnet8-tiny").eval()
    x = torch.zeros(1, 1, 16, 16)
    calib = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    onnx = ExportOnnxConfig(exporter="torchscript")
    plain = probe.latency_criterion(x, calib, onnx=onnx, quant=QuantConfig(), runs=20)
    assert plain(model) > 0 and calls == []
    aware = probe.latency_criterion(x, calib, onnx=onnx, quant=QuantConfig(latency_aware="on"), runs=20)
    assert aware(model) > 0
    assert calls == [("on", {"rounds": 3, "profile_rounds": 1, "meter": LOCAL})]
    fp32 = probe.latency_criterion(x, None, onnx=onnx, quant=None, runs=20)
    fp32(model)  # --quant none: nothing to quantize, the flag does not apply
    assert len(calls) == 1


class _TinyGrouped(torch.nn.Module):
    """ResNeXt-like: two residual bottlenecks whose 3x3 is grouped (4 groups of 8, 16 groups of 4)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def cbr(cin, cout, k, groups=1, relu=True):
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), *([nn.ReLU()] if relu else []))

        self.stem = cbr(3, 32, 3)
        self.b1 = nn.Sequential(cbr(32, 32, 1), cbr(32, 32, 3, groups=4), cbr(32, 32, 1, relu=False))
        self.up = cbr(32, 64, 1)
        self.b2 = nn.Sequential(cbr(64, 64, 1), cbr(64, 64, 3, groups=16), cbr(64, 64, 1, relu=False))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = self.up(x)
        x = torch.relu(x + self.b2(x))
        return self.fc(x.mean((2, 3)))


def test_round_to_prunes_grouped_convs_and_keeps_multiples(tmp_path):
    import copy

    import torch_pruning as tp

    torch.manual_seed(0)
    model = _TinyGrouped().eval()
    with torch.no_grad():  # non-trivial BN statistics so the parity check below has signal
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5)
    x1 = torch.randn(1, 3, 16, 16)
    grouped = ("b1.1.0", "b2.1.0")
    # Torch-Pruning's own rounding never touches these grouped convs at round_to=8 (the bug we fix) ...
    plain = copy.deepcopy(model)
    tp.pruner.BasePruner(plain, x1, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         round_to=8, ignored_layers=[plain.fc]).step()
    assert [plain.get_submodule(n).out_channels for n in grouped] == [32, 64]
    # ... ours thins them and every width stays a multiple of 8 with valid groups.
    res = prune(model, x1, PruneConfig(ratio=0.5, round_to=8))
    assert res.macs_after <= 0.5 * res.macs_before
    for n, before in zip(grouped, (32, 64), strict=True):
        conv = res.model.get_submodule(n)
        assert conv.out_channels < before, (n, conv.out_channels)
        assert conv.out_channels % conv.groups == 0 and conv.groups == model.get_submodule(n).groups
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)  # (so every in_channels but the image's 3 too)
    path = export_onnx(res.model, x1, tmp_path / "g.onnx", ExportOnnxConfig(exporter="torchscript"))
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    par = parity(res.model, path, x, 1e-4)
    assert par.passed, par.to_dict()


@pytest.mark.parametrize("name", ["convnext_tiny", "mobilenet_v3_small", "googlenet", "resnext50_32x4d",
                                  "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn"])
def test_count_macs_params_matches_torch_pruning_without_side_effects(name):
    """Same numbers as tp.utils.count_ops_and_params (which deep-copies the model) on a batch of 2
    (LayerNorm subclasses, GELU, hardswish, SE, grouped convs, concat, conv classifier); the
    model's train flags, BN statistics and hooks are left as they were."""
    import torch_pruning as tp

    model = create_model(name, num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = tp.utils.count_ops_and_params(model.eval(), x)
    assert count_macs_params(model, x) == (int(want[0]), int(want[1]))
    if name == "mobilenet_v3_small":  # a pruned model too (uneven widths, round_to=1)
        pruned = prune(model, x[:1], PruneConfig(ratio=0.3, round_to=1)).model
        want = tp.utils.count_ops_and_params(pruned, x)
        assert count_macs_params(pruned, x) == (int(want[0]), int(want[1]))
        assert want[0] < 0.75 * count_macs_params(model, x)[0]
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs_params(model, x)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert not any(m._forward_hooks for m in model.modules())
