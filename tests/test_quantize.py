from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgecompress.config import ExportOnnxConfig, QuantConfig
from edgecompress.export import check_onnx, export_onnx
from edgecompress.models.zoo import create_model
from edgecompress.quantize import quantize_ptq
from edgecompress.runtime import kernel_report, make_session, run_batched


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


def test_float_islands_are_named_as_the_files_own_nodes(fp32, tmp_path):
    """Not the optimiser's names (NCHWc convs are renamed "<output>_nchwc"): the names a viewer shows
    and --latency-aware-int8 / --exclude list."""
    from edgecompress.quantize import preprocessed_model

    convs = [n.name for n in preprocessed_model(fp32).graph.node if n.op_type == "Conv"]
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    out = quantize_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(exclude_nodes=(convs[0], convs[3]))).path
    names = {n.name for n in onnx.load(str(out)).graph.node}
    kr = kernel_report(out)
    assert kr.float_ops == 2 and sorted(kr.float_islands) == sorted([convs[0], convs[3]])
    assert set(kr.float_islands) <= names


def test_an_excluded_layer_between_int8_layers_stays_float(fp32, tmp_path):
    """onnxruntime's WeightBiasQuantization re-quantizes (per-tensor) a float Conv fed by a
    per-tensor DequantizeLinear and read by a QuantizeLinear; keep_float gives it a per-axis one."""
    import onnxruntime as ort

    from edgecompress.quantize import keep_float, preprocessed_model

    pre = preprocessed_model(fp32).graph.node
    first, conv = [n.name for n in pre if n.op_type == "Conv"][0::3][:2]  # the stem, and one mid-network
    gemm = next(n.name for n in pre if n.op_type == "Gemm")
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    res = quantize_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(exclude_nodes=(first, conv, gemm)))
    # the stem reads the float input, the classifier writes the float output: not the pattern, untouched
    assert res.settings["kept_float_inputs"] == [conv]
    assert sorted(kernel_report(res.path).float_islands) == sorted([first, conv, gemm])
    m = onnx.load(str(res.path))
    assert keep_float(m, [conv]) == []  # already per-axis: nothing left to do
    # undone (the input's DequantizeLinear per-tensor again), onnxruntime runs the layer in INT8
    node = next(n for n in m.graph.node if n.name == conv)
    dq = next(n for n in m.graph.node if n.output[0] == node.input[0])
    inits = {i.name: i for i in m.graph.initializer}
    for k in (1, 2):
        t = inits[dq.input[k]]
        arr = onnx.numpy_helper.to_array(t)
        t.CopyFrom(onnx.numpy_helper.from_array(arr[:1].reshape(()), t.name))
    del dq.attribute[:]
    onnx.save(m, str(tmp_path / "undone.onnx"))
    assert conv not in kernel_report(tmp_path / "undone.onnx").float_islands
    # with the fix, the default session computes what a session without that optimiser computes
    x = calib[:4]
    def run(path, **kw):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)
        return s.run(None, {s.get_inputs()[0].name: x})[0]
    ref = run(res.path, disabled_optimizers=["WeightBiasQuantization"])
    np.testing.assert_allclose(run(res.path), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(tmp_path / "undone.onnx", disabled_optimizers=["WeightBiasQuantization"]), ref,
                               rtol=1e-5, atol=1e-5)  # the per-axis copy holds the same values


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


def test_int8_weight_storage_keeps_float_kernels_and_shrinks_the_file(fp32, tmp_path):
    """store_weights_int8: 1 byte per weight on disk, the same float kernels after onnxruntime's
    constant folding, and outputs those of the per-channel int8-rounded weights."""
    from edgecompress.quantize import preprocessed_model, store_weights_int8

    m = preprocessed_model(fp32)
    layers = [n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    before = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    onnx.save(m, str(tmp_path / "pre.onnx"))
    assert sorted(store_weights_int8(m, layers + ["no-such-node"])) == sorted(layers)
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp_path / "w8.onnx"))
    pre, w8 = tmp_path / "pre.onnx", tmp_path / "w8.onnx"
    assert w8.stat().st_size < 0.33 * pre.stat().st_size  # as small as the QDQ INT8 file (0.31 here)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    w, q, s = before[conv.input[1]], inits[conv.input[1] + "_int8"], inits[conv.input[1] + "_int8_scale"]
    assert q.dtype == np.int8 and s.shape == (w.shape[0], 1, 1, 1)
    assert (np.abs(q * s - w) <= s / 2 * 1.001).all()  # rounded to the nearest step of its channel
    assert (np.abs(q).reshape(len(q), -1).max(axis=1) == 127).all()  # each channel's range is its own
    # onnxruntime folds Cast -> Mul away: the optimised graphs run the same kernels
    opt = {}
    for p in (pre, w8):
        make_session(p, optimized_out=tmp_path / f"opt-{p.name}")
        opt[p] = Counter(n.op_type for n in onnx.load(str(tmp_path / f"opt-{p.name}")).graph.node)
    assert opt[pre] == opt[w8] and "Cast" not in opt[w8] and "Mul" not in opt[w8]
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    y32, y8 = run_batched(make_session(pre), x), run_batched(make_session(w8), x)
    assert 0 < np.abs(y32 - y8).max() < 0.05 * np.abs(y32).max()


def test_int8_weight_storage_leaves_weights_shared_with_other_layers(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgecompress.quantize import store_weights_int8

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"], name="a"), helper.make_node("MatMul", ["a", "w"], ["b"], name="b")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])], [w])  # fmt: skip
    m = helper.make_model(g)
    assert store_weights_int8(m, ["a"]) == []  # "b" reads the same weight and was not named
    assert [i.name for i in m.graph.initializer] == ["w"]
    assert sorted(store_weights_int8(m, ["a", "b"])) == ["a", "b"]  # both named: stored once
    assert {i.name for i in m.graph.initializer} == {"w_int8", "w_int8_scale"}
    assert [n.op_type for n in m.graph.node] == ["Cast", "Mul", "MatMul", "MatMul"]
    s = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}["w_int8_scale"]
    assert s.shape == (1, 4)  # MatMul(x, W): one scale per output column


def test_compact_names_keep_the_named_fp32_layers(fp32, tmp_path):
    """--compact-names with layers kept in FP32: those keep their names, so the manifest's lists
    (latency-aware, accuracy fallback) and the kernel report name the same nodes of the file."""
    from edgecompress.export import finalize_onnx
    from edgecompress.quantize import preprocessed_model

    convs = [n.name for n in preprocessed_model(fp32).graph.node if n.op_type == "Conv"]
    kept = (convs[0], convs[3])
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    out = quantize_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(exclude_nodes=kept)).path
    finalize_onnx(out, {}, compact_names=True, keep_node_names=set(kept))
    check_onnx(out)
    names = [n.name for n in onnx.load(str(out)).graph.node]
    assert set(kept) <= set(names) and len(names) == len(set(names))
    assert sum(n.startswith("node_") for n in names) == 2  # every other node got a short name
    assert sorted(kernel_report(out).float_islands) == sorted(kept)
