from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgecompress.bench import kernel_report, make_session, run_batched
from edgecompress.config import ExportOnnxConfig, QuantConfig
from edgecompress.export import check_onnx, export_onnx
from edgecompress.quantize import quantize_ptq
from edgecompress.zoo import create_model


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    model = create_model("resnet20").eval()
    export_onnx(model, torch.zeros(1, 1, 28, 28), d / "fp32.onnx", ExportOnnxConfig())
    return d / "fp32.onnx"


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_ptq_is_valid_qdq_with_int8_kernels(fp32, tmp_path, method):
    calib = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    out = quantize_ptq(fp32, tmp_path / "int8.onnx", calib, QuantConfig(method=method)).path
    check_onnx(out)
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert out.stat().st_size < 0.35 * fp32.stat().st_size  # int8 weights
    kr = kernel_report(out)
    assert kr.int8_op_fraction == 1.0, kr.float_islands  # every conv/gemm runs as an int8 kernel
    y8 = run_batched(make_session(out), calib)
    y32 = run_batched(make_session(fp32), calib)
    assert y8.shape == y32.shape == (32, 10)


def test_per_tensor_and_s8s8_options_are_applied(fp32, tmp_path):
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    out = quantize_ptq(fp32, tmp_path / "q.onnx", calib,
                       QuantConfig(per_channel=False, activation_type="int8")).path
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 for z in zps)
    scales = [inits[n.input[1]] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert scales and all(int(np.prod(s.dims)) == 1 for s in scales)  # per-tensor: one scale each


def test_float_islands_are_reported(fp32, tmp_path):
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    out = quantize_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(op_types=("Conv",))).path
    kr = kernel_report(out)
    assert kr.float_ops >= 1 and 0 < kr.int8_op_fraction < 1  # the Gemm classifier stayed float


def test_compact_names_shrinks_the_file_and_keeps_outputs_and_interface(fp32, tmp_path):
    import shutil

    from edgecompress.export import finalize_onnx

    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    plain = quantize_ptq(fp32, tmp_path / "int8.onnx", calib, QuantConfig()).path
    finalize_onnx(plain, {"k": "v"})
    small = tmp_path / "compact.onnx"
    shutil.copy(plain, small)
    finalize_onnx(small, {"k": "v"}, compact_names=True)
    check_onnx(small)
    a, b = onnx.load(str(plain)), onnx.load(str(small))
    assert [i.name for i in b.graph.input] == [i.name for i in a.graph.input]
    assert [o.name for o in b.graph.output] == [o.name for o in a.graph.output]
    assert max(len(t.name) for t in b.graph.initializer) <= 3  # ~150 tensors fit in 2 base-36 digits
    assert {p.key: p.value for p in b.metadata_props} == {"k": "v"}
    assert plain.stat().st_size - small.stat().st_size > 10_000  # ~14 KB of names on resnet20
    np.testing.assert_array_equal(run_batched(make_session(small), calib), run_batched(make_session(plain), calib))
    assert kernel_report(small).int8_op_fraction == 1.0  # onnxruntime fuses it the same way
