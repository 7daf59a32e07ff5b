"""Graph edits on ONNX models around quantization (onnx + numpy; onnxruntime's quantization utils
where its own scheme is meant): Gemm -> MatMul for dynamic quantization, keeping float layers
float at run time, and int8 storage of float layers' weights."""

from __future__ import annotations

import numpy as np

from edgecompress.runtime.kernels import COMPUTE_OPS, consumers_of


def gemm_to_matmul(model) -> int:
    """Rewrites ``Gemm(A, B, C)`` with constant B, alpha = beta = 1 and transA = 0 into
    ``MatMul(A, B')`` (+ ``Add(., C)``), B' = B transposed if transB. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    used = {}
    for n in g.node:
        for i in n.input:
            used[i] = used.get(i, 0) + 1
    new_nodes, count = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        ok = (n.op_type == "Gemm" and n.domain in ("", "ai.onnx") and len(n.input) >= 2 and n.input[1] in inits
              and attrs.get("transA", 0) == 0 and float(attrs.get("alpha", 1.0)) == 1.0
              and float(attrs.get("beta", 1.0)) == 1.0)  # fmt: skip
        if not ok:
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        name = n.input[1] if used.get(n.input[1], 0) == 1 else f"{n.input[1]}_{n.name or count}_t"
        if name == n.input[1]:
            g.initializer.remove(inits[n.input[1]])
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), name))
        has_bias = len(n.input) > 2 and n.input[2] != ""
        mm_out = f"{n.output[0]}_matmul" if has_bias else n.output[0]
        base = n.name or f"gemm{count}"
        new_nodes.append(helper.make_node("MatMul", [n.input[0], name], [mm_out], name=f"{base}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{base}_Add"))
        count += 1
    if count:
        del g.node[:]
        g.node.extend(new_nodes)
    return count


# layers onnxruntime's WeightBiasQuantization optimiser re-quantizes when they sit between a
# DequantizeLinear and a QuantizeLinear (see keep_float)
_WBQ_OPS = ("Conv", "ConvTranspose", "Gemm")


def keep_float(model, nodes) -> list[str]:
    """Makes the layers named in ``nodes`` that ``quantize_static`` left in float *stay* float at
    run time, in place; returns the names of the layers changed.

    onnxruntime (>= 1.21) re-quantizes at session creation a float ``Conv``/``ConvTranspose``/
    ``Gemm`` whose input comes from a per-tensor ``DequantizeLinear`` and whose output goes to a
    ``QuantizeLinear`` (its ``WeightBiasQuantization`` optimiser, with a *per-tensor* int8 weight),
    so an excluded layer between two INT8 layers silently ran in INT8 — with a coarser weight than
    the INT8 layers'. The optimiser only takes a per-tensor input scale: each such layer gets its
    own ``DequantizeLinear`` with the same scale and zero point repeated per input channel
    (axis 1). The values are the same, the layer keeps its float kernel. Layers outside the
    optimiser's pattern are left as they are."""
    from onnx import helper, numpy_helper

    g = model.graph
    wanted = set(nodes)
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = consumers_of(g)
    shapes = {v.name: v.type.tensor_type.shape for v in [*g.value_info, *g.input]}
    changed = []
    for n in list(g.node):
        if n.name not in wanted or n.op_type not in _WBQ_OPS or not _leads_to_quantize(n, consumers):
            continue
        dq = producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue
        scale = inits.get(dq.input[1])
        if scale is None or int(np.prod(scale.dims)) != 1:
            continue  # already per-axis (or not constant): not the optimiser's pattern
        channels = _input_channels(n, inits, shapes)
        if channels is None:
            continue
        base = f"{n.name}_float_input"
        sc = numpy_helper.to_array(scale).reshape(-1)
        g.initializer.append(numpy_helper.from_array(np.full(channels, sc[0], sc.dtype), base + "_scale"))
        ins = [dq.input[0], base + "_scale"]
        if len(dq.input) > 2 and dq.input[2] in inits:
            zp = numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)
            g.initializer.append(numpy_helper.from_array(np.full(channels, zp[0], zp.dtype), base + "_zero_point"))
            ins.append(base + "_zero_point")
        node = helper.make_node("DequantizeLinear", ins, [base], name=base + "_DequantizeLinear", axis=1)
        g.node.insert(list(g.node).index(n), node)
        n.input[0] = base
        changed.append(n.name)
    if changed:  # a DequantizeLinear no layer reads any more goes
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for n in [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
            g.node.remove(n)
    return changed


def _leads_to_quantize(node, consumers) -> bool:
    """The optimiser's output condition: one consumer after another (through Relu/Clip only) up to a
    QuantizeLinear, without a branch."""
    while len(node.output) == 1 and len(consumers.get(node.output[0], [])) == 1:
        node = consumers[node.output[0]][0]
        if node.op_type == "QuantizeLinear":
            return True
        if node.op_type not in ("Relu", "Clip"):
            return False
    return False


def _input_channels(node, inits, shapes) -> int | None:
    """Channels of ``node``'s input 0 (axis 1), from its weight or the inferred shape."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    if w is not None and len(w.dims) >= 2:
        if node.op_type == "Conv":
            return int(w.dims[1]) * int(attrs.get("group", 1))
        if node.op_type == "ConvTranspose":
            return int(w.dims[0])
        return int(w.dims[1] if attrs.get("transB", 0) else w.dims[0])  # Gemm: B is [K, N], or [N, K]
    shape = shapes.get(node.input[0])
    if shape is not None and len(shape.dim) >= 2 and shape.dim[1].HasField("dim_value"):
        return int(shape.dim[1].dim_value)
    return None


def store_weights_int8(model, nodes) -> list[str]:
    """Weight-only INT8 *storage* for float layers, in place: the constant float weight of each
    ``Conv``/``Gemm``/``MatMul`` named in ``nodes`` is stored as per-output-channel symmetric int8
    (onnxruntime's ``quantize_data``, the scheme of its INT8 layers' weights) and restored by
    ``Cast -> Mul(scale)`` in front of the layer. onnxruntime's constant folding (any optimisation
    level above DISABLE_ALL) computes the float weight once when the session is created, so the
    layer keeps its float kernel and its speed while the file holds 1 byte per weight instead of 4.
    Numerically it is the INT8 layer's weight with float activations. A weight that is shared with
    a layer not named is left alone. Returns the names of the layers changed."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    g = model.graph
    wanted = set(nodes)
    inits = {i.name: i for i in g.initializer}
    consumers = consumers_of(g)
    graph_inputs = {i.name: i for i in g.input}
    new, changed, done = [], [], set()
    for n in g.node:
        if n.name not in wanted or n.op_type not in COMPUTE_OPS or len(n.input) < 2:
            continue
        w_name = n.input[1]
        t = inits.get(w_name)
        if w_name in done:
            changed.append(n.name)
            continue
        if t is None or t.data_type != onnx.TensorProto.FLOAT or w_name in graph_inputs:
            continue
        if any(c.name not in wanted or c.op_type != n.op_type for c in consumers[w_name]):
            continue
        w = numpy_helper.to_array(t)
        if w.ndim < 2:
            continue
        if n.op_type == "Conv":
            axis = 0  # [out, in/groups, k...]
        elif n.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
        else:
            axis = w.ndim - 1  # MatMul(x, W): W is [..., in, out]
        wc = np.moveaxis(w, axis, 0)
        q = np.empty(wc.shape, np.int8)
        scale = np.empty(wc.shape[0], np.float32)
        for ch in range(wc.shape[0]):
            _, s, qd = quantize_data(wc[ch].ravel(), onnx.TensorProto.INT8, True)
            q[ch], scale[ch] = qd.reshape(wc.shape[1:]), s
        shape = [1] * w.ndim
        shape[axis] = -1
        g.initializer.remove(t)
        g.initializer.extend([numpy_helper.from_array(np.moveaxis(q, 0, axis), w_name + "_int8"),
                              numpy_helper.from_array(scale.reshape(shape), w_name + "_int8_scale")])
        new += [helper.make_node("Cast", [w_name + "_int8"], [w_name + "_int8_cast"], to=onnx.TensorProto.FLOAT,
                                 name=w_name + "_int8_Cast"),
                helper.make_node("Mul", [w_name + "_int8_cast", w_name + "_int8_scale"], [w_name],
                                 name=w_name + "_int8_Mul")]  # fmt: skip
        done.add(w_name)
        changed.append(n.name)
    if new:
        nodes_now = list(g.node)
        del g.node[:]
        g.node.extend(new + nodes_now)
    return changed

