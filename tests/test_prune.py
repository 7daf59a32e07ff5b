import subprocess
import sys

import numpy as np
import pytest
import torch

from edgecompress.config import ExportOnnxConfig, PruneConfig
from edgecompress.errors import BadInput
from edgecompress.export import export_onnx, parity
from edgecompress.prune import count_macs_params, output_layers, prune
from edgecompress.zoo import create_model

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

    from edgecompress.prune import FORMAT

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


def test_latency_target_stops_when_measured_p50_meets_it():
    from edgecompress.prune import LatencyProbe

    model = create_model("resnet20").eval()
    base = LatencyProbe(X, None, int8=False, exporter="torchscript")(model)  # the quick exporter: logic, not speed
    target = 0.6 * base
    res = prune(model, X, PruneConfig(target_latency_ms=target, round_to=1), latency_int8=False, exporter="torchscript")
    hist = res.latency_history
    assert hist[0]["macs"] == res.macs_before and len(hist) >= 2
    assert hist[-1]["p50_ms"] <= target  # stopped on a measurement that met the target
    assert all(h["p50_ms"] > target for h in hist[:-1])  # ... and not before
    assert res.macs_after < res.macs_before
