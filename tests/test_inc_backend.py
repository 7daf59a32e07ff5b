"""INC 3.x (PT2E) INT8 -> ONNX backend on a tiny ResNet: valid file, runs, agrees with FP32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("neural_compressor.torch")

from edgecompress.errors import BadInput  # noqa: E402
from edgecompress.models.zoo import create_model  # noqa: E402
from edgecompress.quantize.inc import quantize_inc  # noqa: E402


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # INC may write a workspace into the cwd
    torch.manual_seed(0)
    return create_model("resnet8-tiny", num_classes=10, in_chans=1).eval(), np.random.default_rng(0)


def _check(path, model, rng):
    import onnx

    from edgecompress.runtime import make_session, run_batched

    onnx.checker.check_model(str(path), full_check=True)
    x = rng.random((256, 1, 16, 16), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = run_batched(make_session(path), x)
    assert got.shape == (256, 10) and got.dtype == np.float32
    # 8-bit activations and weights over 9 layers: measured error <= 3.5% of the logit range and
    # top-1 agreement >= 0.98 over 5 seeds; the bounds leave room for other CPUs' rounding.
    err = float(np.abs(ref - got).max())
    assert err <= 0.1 * float(np.ptp(ref)), err
    assert float((ref.argmax(1) == got.argmax(1)).mean()) >= 0.9


def test_inc_int8_onnx_runs_and_agrees(tiny, tmp_path):
    model, rng = tiny
    out = tmp_path / "inc.onnx"
    rec = quantize_inc(model, torch.zeros(1, 1, 16, 16), rng.random((16, 1, 16, 16), dtype=np.float32), out)
    _check(out, model, rng)
    assert rec["calib_samples"] == 16 and rec["config"]["act_algo"] == "minmax"
    assert 0 < rec["int8_op_fraction"] <= 1
    # weight QuantizeLinear/Clip folded into int8 initializers: smaller than the raw export
    assert rec["weight_nodes_folded"] > 0 and rec["bytes"] < rec["raw_export_bytes"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_inc_autotune_stops_at_first_config_within_bound(tiny, tmp_path):
    model, rng = tiny
    xv = torch.from_numpy(rng.random((64, 1, 16, 16), dtype=np.float32))
    with torch.no_grad():
        yv = model(xv).argmax(1)

    def agreement(m) -> float:
        with torch.no_grad():
            return float((m(xv).argmax(1) == yv).float().mean())

    out = tmp_path / "inc-tuned.onnx"
    rec = quantize_inc(model, torch.zeros(1, 1, 16, 16), rng.random((16, 1, 16, 16), dtype=np.float32), out,
                       autotune_eval=agreement, max_drop=20.0)  # fmt: skip
    tune = rec["autotune"]
    assert tune["val_top1_fp32"] == 1.0 and tune["met"]
    assert len(tune["trials"]) == 1 and tune["chosen"] == {"act_sym": False, "act_algo": "minmax"}
    _check(out, model, rng)


def test_inc_bad_input_is_one_line(tiny, tmp_path):
    model, rng = tiny
    with pytest.raises(BadInput, match="both autotune_eval and max_drop"):
        quantize_inc(model, torch.zeros(1, 1, 16, 16), np.zeros((4, 1, 16, 16), np.float32), tmp_path / "x.onnx",
                     max_drop=1.0)  # fmt: skip
    with pytest.raises(BadInput, match="calibration samples have shape") as e:
        quantize_inc(model, torch.zeros(1, 1, 16, 16), np.zeros((4, 1, 28, 28), np.float32), tmp_path / "x.onnx")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists()
