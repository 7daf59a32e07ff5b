"""MACs and parameters of an ONNX file, counted from the graph (numpy + onnx only): what the
manifest records for a model that arrives as ONNX, where there is no PyTorch module to count on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_FLOAT = (1, 10, 11, 16)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def macs_params(path: Path | str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(multiply-accumulates per sample of Conv, Gemm and MatMul nodes, float parameters). Shapes
    are inferred with the input fixed to ``input_shape``; a node whose shapes stay unknown counts 0."""
    import onnx

    m = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in _FLOAT)
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    inp = next(v for v in m.graph.input if v.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    for d, n in zip(dims, input_shape, strict=False):
        d.ClearField("dim_param")
        d.dim_value = n
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - an op onnx cannot infer: count what it can, before it
        pass
    shapes = dict(inits)
    for v in (*m.graph.input, *m.graph.value_info, *m.graph.output):
        d = v.type.tensor_type.shape.dim
        if all(x.HasField("dim_value") for x in d):
            shapes[v.name] = tuple(x.dim_value for x in d)
    macs = 0
    for n in m.graph.node:
        out, a = shapes.get(n.output[0]) if n.output else None, shapes.get(n.input[0]) if n.input else None
        if out is None or a is None:
            continue
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in shapes:
            macs += int(np.prod(out)) * int(np.prod(shapes[n.input[1]][1:]))
        elif n.op_type == "Gemm":
            trans_a = any(x.name == "transA" and x.i for x in n.attribute)
            macs += int(np.prod(out)) * a[0 if trans_a else -1]
        elif n.op_type == "MatMul":
            macs += int(np.prod(out)) * a[-1]
    return macs // max(1, input_shape[0]), params
