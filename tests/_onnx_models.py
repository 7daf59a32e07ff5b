"""Small ONNX models built directly with onnx.helper (not by edgecompress), for the runtime tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph, path: Path, metadata: dict[str, str] | None = None, opset: int = 17, check: bool = True) -> Path:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    m.ir_version = 8
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    if check:
        onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return Path(path)


def cnn(path: Path, *, channels: int = 1, hw: int | str = 8, batch: int | str = "N", classes: int = 5,
        hidden: int = 8, seed: int = 0, metadata: dict[str, str] | None = None, weight_std: float = 0.5,
        depthwise: bool = False) -> Path:
    """Conv+Relu+GlobalAveragePool+Flatten+Gemm with random weights. ``hw`` may be a symbolic name;
    ``depthwise`` adds a 3x3 depthwise Conv (group = hidden) after the Relu."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, weight_std, (hidden, channels, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (hidden,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, weight_std, (classes, hidden)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r0" if depthwise else "r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    if depthwise:
        inits.append(numpy_helper.from_array(rng.normal(0, weight_std, (hidden, 1, 3, 3)).astype(np.float32), "dw_w"))
        nodes.insert(2, helper.make_node("Conv", ["r0", "dw_w"], ["r"], pads=[1, 1, 1, 1], group=hidden, name="dw"))
    h = w = hw
    if isinstance(hw, str):
        h, w = f"{hw}_h", f"{hw}_w"
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, h, w])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    return _save(graph, path, metadata)


def mlp(path: Path, *, d: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> Path:
    """Gemm(transB) + Relu + MatMul + Add: the shapes torch's Linear layers export to."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (hidden, d)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (hidden,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (hidden, classes)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return _save(graph, path)


def broken(path: Path) -> Path:
    """Serialises fine but fails onnx.checker: a node reads a tensor nobody produces."""
    nodes = [helper.make_node("Relu", ["nowhere"], ["y"])]
    graph = helper.make_graph(nodes, "broken", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _save(graph, path, check=False)


def edgecompress_metadata(shape: list[int], classes: list[str]) -> dict[str, str]:
    """The metadata_props ``edgecompress export`` writes (pipeline._metadata)."""
    return {"input.layout": "NCHW", "input.shape": json.dumps(shape),
            "input.normalization": "float32 in [0,1]: uint8 pixels / 255", "classes": json.dumps(classes)}


def ort_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """Reference: onnxruntime logits -> softmax, computed here independently of edgecompress."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def separable_data(n: int, *, seed: int, classes: int = 5, hw: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N,H,W images of ``classes`` fixed random patterns (the same for every seed) plus noise,
    and their labels: a task a small CNN solves almost perfectly, so top-1 and agreement mean something."""
    protos = np.random.default_rng(1234).random((classes, hw, hw))
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    x = np.clip(protos[y] * 0.7 + r.normal(0, 0.15, (n, hw, hw)) + 0.15, 0, 1)
    return (x * 255).round().astype(np.uint8), y


def fitted_cnn(path: Path, x: np.ndarray, y: np.ndarray, *, batch: int | str = "N", filters: int = 16,
               classes: int = 5, metadata: dict[str, str] | None = None) -> Path:
    """Conv(random 3x3 filters, pad 1) + Relu + Flatten + Gemm, the Gemm fitted to (x, y) by ridge
    regression on one-hot targets (numpy only: no torch, no training loop). ``x``: uint8 N,H,W."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (filters, 1, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, filters).astype(np.float32)
    xp = np.pad(x.astype(np.float32) / 255, ((0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
    feats = np.maximum(np.einsum("nhwij,fij->nfhw", win, w[:, 0]) + b[None, :, None, None], 0).reshape(len(x), -1)
    a = np.hstack([feats, np.ones((len(x), 1))])
    fit = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(classes)[y])
    hw = x.shape[1]
    inits = [numpy_helper.from_array(w, "conv_w"), numpy_helper.from_array(b, "conv_b"),
             numpy_helper.from_array(fit[:-1].T.astype(np.float32), "fc_w"),
             numpy_helper.from_array(fit[-1].astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "fitted_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    return _save(graph, path, metadata)
