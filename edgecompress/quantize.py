"""INT8 post-training static quantization with onnxruntime (QDQ format, per-channel weights).

fp32.onnx -> ``quant_pre_process`` (shape inference + ORT graph optimisation, which folds BN
and fuses what can be fused before scales are computed) -> ``quantize_static`` calibrated on
samples of the *training* split. The result runs with int8 kernels once onnxruntime's graph
optimiser (level >= EXTENDED) fuses DequantizeLinear -> op -> QuantizeLinear.

``quantize_dynamic_onnx`` is the calibration-free alternative for MatMul/Gemm-heavy models:
int8 weights, activations quantized on the fly (MatMulInteger / DynamicQuantizeMatMul).

Both apply the settings of the target CPU class (``QuantConfig.target``, see
:mod:`edgecompress.target`) and record them in ``QuantResult.settings``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress import target as _target
from edgecompress.config import QuantConfig
from edgecompress.io import atomic_write

# the layers quantize_static quantizes with a weight: what exclude_nodes and the passes that
# choose FP32 layers (quant_fallback, quant_speed) refer to
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantResult:
    path: Path
    calib_samples: int
    settings: dict


class ArrayReader:
    """onnxruntime's CalibrationDataReader protocol over a numpy array."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self.input_name, self.x, self.batch, self.i = input_name, x, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            return None
        b = self.x[self.i : self.i + self.batch]
        self.i += self.batch
        return {self.input_name: b}

    def rewind(self) -> None:
        self.i = 0


def preprocess(fp32: Path, dst: Path) -> Path:
    """``quant_pre_process`` of ``fp32`` into ``dst``, its prints silenced: the graph that
    ``quantize_static`` sees, whose node names ``QuantConfig.exclude_nodes`` refers to."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(fp32), str(dst), skip_symbolic_shape=True)
    return dst


def preprocessed_model(fp32: Path):
    """The pre-processed graph of ``fp32`` (see :func:`preprocess`), as an onnx.ModelProto."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgecompress-pre-") as d:
        return onnx.load(str(preprocess(fp32, Path(d) / "pre.onnx")))


def quantize_ptq(fp32: Path, out: Path, calib_x: np.ndarray, cfg: QuantConfig) -> QuantResult:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    eff, tgt = resolve_target(cfg)
    settings = {
        "format": "QDQ", "per_channel": cfg.per_channel, "activation_type": eff["activation_type"],
        "weight_type": eff["weight_type"], "reduce_range": eff["reduce_range"], "method": cfg.method,
        "op_types": list(cfg.op_types) or "onnxruntime default", "exclude_nodes": list(cfg.exclude_nodes),
    } | tgt  # fmt: skip
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edgecompress-q-") as d:
        pre = preprocess(fp32, Path(d) / "pre.onnx")

        def write(tmp: Path) -> None:
            # Entropy/percentile calibration keep histograms; the aug model lives in a temp dir.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(pre), str(tmp), ArrayReader(input_name, calib_x),
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    activation_type=qtype[eff["activation_type"]], weight_type=qtype[eff["weight_type"]],
                    reduce_range=eff["reduce_range"], calibrate_method=method,
                    op_types_to_quantize=list(cfg.op_types) or None,
                    nodes_to_exclude=list(cfg.exclude_nodes) or None,
                    extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False,
                                   "WeightSymmetric": True},
                    calibration_providers=["CPUExecutionProvider"],
                )
            if cfg.exclude_nodes:
                import onnx

                m = onnx.load(str(tmp))
                settings["kept_float_inputs"] = keep_float(m, cfg.exclude_nodes)
                onnx.save(m, str(tmp))

        atomic_write(out, write)
    return QuantResult(out, len(calib_x), settings)


_TARGET_KEYS = ("activation_type", "weight_type", "reduce_range")


def resolve_target(cfg: QuantConfig, build_target: str | None = None) -> tuple[dict, dict]:
    """Effective (activation_type, weight_type, reduce_range) for ``cfg.target`` and the record of it.

    ``auto`` means the CPU class of this (build) machine. The target's settings replace the
    fields left at their QuantConfig defaults; a non-default value set by the user wins and is
    listed under ``user_overrides``. ``warnings`` says when the target is not this machine's
    class, because every latency measured here then says nothing about the target.
    """
    here = build_target or _target.build_machine_target()
    resolved = here if cfg.target == "auto" else cfg.target
    advised = _target.settings_for(resolved)
    defaults = QuantConfig()
    eff, user = {}, {}
    for k in _TARGET_KEYS:
        mine = getattr(cfg, k)
        if mine == getattr(defaults, k):
            eff[k] = advised[k]
        else:
            eff[k] = user[k] = mine
    warnings = []
    if cfg.target != "auto" and resolved != here:
        warnings.append(f"quantized for target {resolved} on a {here} machine: the latency measured here is "
                        f"not the target's; run `edgecompress bench` on the {resolved} device"
                        + ("" if resolved != "arm64" else " (int8-activation kernels are fused only by ARM builds of "
                           "onnxruntime, so the kernel report made here under-counts them)"))
    for k, v in user.items():
        if v != advised[k]:
            warnings.append(f"{k}={v!r} set explicitly; target {resolved} advises {advised[k]!r} "
                            f"({_target.why(resolved)})")
    record = {"target": resolved, "target_requested": cfg.target, "build_machine_target": here,
              "target_settings": advised, "target_reason": _target.why(resolved), "user_overrides": user,
              "warnings": warnings}  # fmt: skip
    return eff, record


def quantize_dynamic_onnx(fp32: Path, out: Path, cfg: QuantConfig) -> QuantResult:
    """Dynamic INT8: int8 weights (per-channel if ``cfg.per_channel``), uint8 activations quantized
    at run time, no calibration data. For Linear-heavy models (MLPs, attention); on convolutions
    onnxruntime's ConvInteger is usually slower than float, so Conv is only quantized when listed
    in ``cfg.op_types``.

    Gemm nodes with a constant weight are rewritten to MatMul (+ Add) first: onnxruntime's dynamic
    quantizer handles MatMul but not Gemm, and its optimiser then fuses the result into
    MatMulIntegerToFloat / DynamicQuantizeMatMul kernels.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    eff, tgt = resolve_target(cfg)
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    ops = [o for o in (cfg.op_types or ("MatMul",)) if o != "Gemm"]
    if "MatMul" not in ops and "Gemm" in cfg.op_types:
        ops.append("MatMul")
    settings = {
        "format": "dynamic (integer ops)", "per_channel": cfg.per_channel, "activation_type": "uint8 (dynamic)",
        "weight_type": eff["weight_type"], "reduce_range": eff["reduce_range"], "method": "dynamic (no calibration)",
        "op_types": ops, "exclude_nodes": list(cfg.exclude_nodes),
    } | tgt  # fmt: skip
    if tgt["user_overrides"].get("activation_type", "uint8") != "uint8":
        settings["warnings"] = [*tgt["warnings"], "dynamic quantization always uses uint8 activations "
                                f"(onnxruntime); activation_type {eff['activation_type']!r} does not apply"]
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edgecompress-dq-") as d:
        pre = preprocess(fp32, Path(d) / "pre.onnx")
        m = onnx.load(str(pre))
        settings["gemm_rewritten"] = gemm_to_matmul(m)
        onnx.save(m, str(pre))

        def write(tmp: Path) -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_dynamic(
                    str(pre), str(tmp), op_types_to_quantize=ops, per_channel=cfg.per_channel,
                    reduce_range=eff["reduce_range"], weight_type=qtype[eff["weight_type"]],
                    nodes_to_exclude=list(cfg.exclude_nodes) or None,
                    extra_options={"MatMulConstBOnly": True},
                )

        atomic_write(out, write)
    return QuantResult(out, 0, settings)


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


def consumers_of(graph) -> dict[str, list]:
    """Tensor name -> the nodes of ``graph`` that read it."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


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
    import numpy as np
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
