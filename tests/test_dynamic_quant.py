"""Dynamic INT8 (``QuantConfig(mode="dynamic")``) for MatMul/Gemm-heavy models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecompress.config import QuantConfig
from edgecompress.errors import ConfigError
from edgecompress.quantize import gemm_to_matmul, quantize_dynamic_onnx
from edgecompress.runtime import kernel_report, make_session
from tests._onnx_models import mlp

X = np.random.default_rng(3).normal(size=(64, 64)).astype(np.float32)
DYNAMIC_KERNELS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return mlp(tmp_path_factory.mktemp("dq") / "mlp.onnx")


def _run(path) -> np.ndarray:
    s = make_session(path)
    return s.run(None, {s.get_inputs()[0].name: X})[0]


def test_mode_is_valid_config():
    QuantConfig(mode="dynamic").validate()
    with pytest.raises(ConfigError, match="dynamic"):
        QuantConfig(mode="dynamc").validate()  # the message lists the valid modes


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_kernels_and_close_to_fp32(fp32, tmp_path, per_channel):
    # target pinned (full 8-bit weights) so the error bound does not depend on the test machine's CPU class
    cfg = QuantConfig(mode="dynamic", per_channel=per_channel, target="x86-vnni")
    r = quantize_dynamic_onnx(fp32, tmp_path / "dq.onnx", cfg)
    onnx.checker.check_model(str(r.path), full_check=True)
    assert r.calib_samples == 0 and r.settings["per_channel"] is per_channel
    kr = kernel_report(r.path)  # after onnxruntime's optimiser
    assert DYNAMIC_KERNELS & set(kr.op_counts), kr.op_counts
    assert kr.float_ops == 0 and kr.int8_op_fraction == 1.0, kr.float_islands  # both layers, incl. the Gemm
    y32, y8 = _run(fp32), _run(r.path)
    assert y8.shape == y32.shape == (64, 10)
    assert np.abs(y8 - y32).max() <= 0.03 * np.abs(y32).max()
    assert (y8.argmax(1) == y32.argmax(1)).mean() >= 0.9
    assert not np.array_equal(y8, y32)  # really quantized
    m = onnx.load(str(r.path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    int8_w = [a for a in inits.values() if a.dtype == np.int8 and a.ndim == 2]
    assert len(int8_w) == 2 and r.path.stat().st_size < 0.4 * fp32.stat().st_size
    w_scales = [inits[k] for k in sorted(inits) if k.endswith("_scale")]
    assert len(w_scales) == 2
    assert [a.size for a in w_scales] == ([128, 10] if per_channel else [1, 1])  # one scale per output channel


def test_reduce_range_follows_target(fp32, tmp_path):
    r = quantize_dynamic_onnx(fp32, tmp_path / "a.onnx", QuantConfig(mode="dynamic", target="x86-avx2"))
    assert r.settings["reduce_range"] is True and r.settings["target"] == "x86-avx2"
    w = [numpy_helper.to_array(i) for i in onnx.load(str(r.path)).graph.initializer
         if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]  # fmt: skip
    assert w and all(np.abs(a).max() <= 64 for a in w)


def test_gemm_rewrite_is_exact(fp32, tmp_path):
    m = onnx.load(str(fp32))
    assert gemm_to_matmul(m) == 1
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["Gemm"] == 0 and ops["MatMul"] == 2
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(tmp_path / "mm.onnx"))
    np.testing.assert_allclose(_run(tmp_path / "mm.onnx"), _run(fp32), rtol=1e-5, atol=1e-5)
