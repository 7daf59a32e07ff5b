"""The torchao PT2E quantizer edgecompress uses for QAT, shaped by onnxruntime's QDQ fusion rules.

Quantizer choice. torchao ships ``X86InductorQuantizer``, whose recipe targets Inductor's fused
kernels: in ``conv -> bn -> add -> relu`` it leaves the conv output in float (Inductor fuses the
add into the int8 conv) and leaves ``linear`` outputs in float. onnxruntime only fuses a conv
into ``QLinearConv`` when *both* its inputs are DequantizeLinear outputs *and* its output feeds a
QuantizeLinear, so with that recipe the second conv of every residual block and the classifier
stay float kernels (measured on ResNet-8: int8_op_fraction 0.6). ``XNNPACKQuantizer`` has the
right shape of recipe but lives in executorch (torchao only has a private test copy). So this
module has its own small quantizer, ``ort_qdq_quantizer()``, whose annotation follows onnxruntime's
QDQ fusion rules:

* conv / linear: activation input and per-channel weight quantized; the output is quantized
  after the fused ``[batch_norm] [relu | hardtanh]`` tail (QLinearConv / QGemm; onnxruntime
  removes a Relu / Clip that feeds a QuantizeLinear whose range it covers);
* residual ``add [relu]``: both inputs and the output quantized (QLinearAdd);
* max-pool and flatten / view / reshape share their input's quantization parameters so
  onnxruntime can run them on int8 data (or drop the Q/DQ pair);
* average pooling and everything else stay float between the quantized ops.

Data types, chosen for x86 CPUs and onnxruntime: weights int8, symmetric per output channel
with range [-127, 127] (zero point 0, no -128, so the u8s8 VNNI / AVX2 kernels never saturate
and the weights match what onnxruntime's own quantizer produces); activations uint8, asymmetric
per tensor, full range [0, 255] (u8s8 is onnxruntime's native x86 combination; full range
because the ONNX QuantizeLinear saturates to the dtype's range, so a reduced torch range would
not survive export). The bias stays float through torchao (its folded-BN value changes during
QAT); onnxruntime's graph optimiser quantizes it to int32 with scale ``s_in * s_w`` when it
fuses the QDQ group, so that is exact up to int32 rounding.

Fake quantization uses torchao's ``FusedMovingAvgObsFakeQuantize`` (moving-average min/max,
averaging constant 0.01), the same observer family as torchao's x86 QAT config.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import operator

import torch
from torch.fx import GraphModule, Node

from edgecompress.errors import BadInput


def _qspecs():
    from torchao.quantization.pt2e import (
        FusedMovingAvgObsFakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )  # fmt: skip
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=2**-12),
    )  # fmt: skip
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, eps=2**-12),
    )  # fmt: skip
    return act, weight


def _ops():
    a = torch.ops.aten
    compute = {a.conv1d.default, a.conv2d.default, a.linear.default}
    for name in ("conv1d", "conv2d"):
        packet = getattr(a, name)
        if "padding" in packet.overloads():
            compute.add(packet.padding)
    bn = {a.batch_norm.default, a._native_batch_norm_legit.default,
          a._native_batch_norm_legit_no_training.default}  # fmt: skip
    act = {a.relu.default, a.relu_.default, a.hardtanh.default, a.hardtanh_.default}
    add = {a.add.Tensor, a.add_.Tensor}
    shared = {a.max_pool2d.default, a.max_pool1d.default, a.flatten.using_ints, a.view.default, a.reshape.default}
    return compute, bn, act, add, shared


def _is_float_tensor(n: object) -> bool:
    v = n.meta.get("val") if isinstance(n, Node) else None
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _sole_user(n: Node) -> Node | None:
    if len(n.users) != 1:
        return None
    (u,) = n.users
    return u if u.args and u.args[0] is n else None


def import_torchao() -> None:
    # torchao warns on stderr about optional CUDA extensions it cannot load on a CPU box.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao.quantization.pt2e  # noqa: F401


_QUANTIZER_CLS: type | None = None


def ort_qdq_quantizer():
    """A torchao ``Quantizer`` whose QDQ placement matches onnxruntime's int8 fusions."""
    global _QUANTIZER_CLS
    if _QUANTIZER_CLS is None:  # torchao is imported on first use: it costs seconds
        import_torchao()
        from torchao.quantization.pt2e.quantizer import Quantizer

        _QUANTIZER_CLS = type("OrtQdqQuantizer", (_OrtQdqAnnotator, Quantizer), {})
    return _QUANTIZER_CLS()


class _OrtQdqAnnotator:
    """The annotation rules of ``ort_qdq_quantizer()`` (see the module docstring)."""

    KEY = "quantization_annotation"

    def annotate(self, model: GraphModule) -> GraphModule:
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        act, weight = _qspecs()
        compute, bn, act_ops, add, shared = _ops()
        key = self.KEY

        def tail(n: Node, allow_bn: bool) -> list[Node]:
            chain = [n]
            u = _sole_user(n)
            if allow_bn and u is not None and u.target in bn:
                if u.target is torch.ops.aten.batch_norm.default:
                    chain.append(u)
                else:  # _native_batch_norm_legit*: (out, mean, rstd) -> getitem 0
                    outs = [g for g in u.users if g.target is operator.getitem and g.args[1] == 0]
                    if len(outs) != 1:
                        return chain
                    chain += [u, outs[0]]
                u = _sole_user(chain[-1])
            if u is not None and u.target in act_ops:
                chain.append(u)
            return chain

        def free(nodes: list[Node]) -> bool:
            return not any(n.meta.get(key) is not None and n.meta[key]._annotated for n in nodes)

        def mark(nodes: list[Node]) -> None:
            for n in nodes:
                if n.meta.get(key) is None:
                    n.meta[key] = QuantizationAnnotation(_annotated=True)
                n.meta[key]._annotated = True

        def set_output(n: Node) -> None:
            if n.meta.get(key) is None:
                n.meta[key] = QuantizationAnnotation(_annotated=True)
            n.meta[key].output_qspec = act

        nodes = list(model.graph.nodes)
        for n in nodes:  # 1. conv / linear [-> bn] [-> relu]
            if n.op != "call_function" or n.target not in compute:
                continue
            x, w = n.args[0], n.args[1]
            if not (_is_float_tensor(x) and isinstance(w, Node) and _is_float_tensor(w)):
                continue
            chain = tail(n, allow_bn=n.target is not torch.ops.aten.linear.default)
            if not free(chain):
                continue
            n.meta[key] = QuantizationAnnotation(input_qspec_map={x: act, w: weight}, _annotated=True)
            mark(chain)
            set_output(chain[-1])
        for n in nodes:  # 2. add [-> relu] of two float tensors (residual connections)
            if n.op != "call_function" or n.target not in add or n.kwargs.get("alpha", 1) != 1:
                continue
            a, b = n.args[0], n.args[1]
            if not (_is_float_tensor(a) and _is_float_tensor(b)) or a is b:
                continue
            chain = tail(n, allow_bn=False)
            if not free(chain):
                continue
            n.meta[key] = QuantizationAnnotation(input_qspec_map={a: act, b: act}, _annotated=True)
            mark(chain)
            set_output(chain[-1])

        def quantized_output(n: object) -> bool:
            ann = n.meta.get(key) if isinstance(n, Node) else None
            return ann is not None and ann.output_qspec is not None

        for n in nodes:  # 3. int8-in int8-out ops fed by a quantized tensor share its parameters
            if n.op != "call_function" or n.target not in shared or not free([n]):
                continue
            x = n.args[0]
            if not (_is_float_tensor(x) and _is_float_tensor(n) and quantized_output(x)):
                continue
            n.meta[key] = QuantizationAnnotation(
                input_qspec_map={x: act}, output_qspec=SharedQuantizationSpec((x, n)), _annotated=True)
        return model

    def validate(self, model: GraphModule) -> None:
        if not any(n.meta.get(self.KEY) is not None and n.meta[self.KEY].input_qspec_map
                   for n in model.graph.nodes):
            raise BadInput("QAT: the model has no conv / linear layer to quantize")


# ---------------------------------------------------------------------------------------------
# QAT


_PATTERNS: dict[tuple, GraphModule] = {}


def _sig(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, v.device.type)
    return v


def _pattern_key(pattern: object, example_inputs: tuple, is_cuda: bool, kwargs: dict) -> tuple | None:
    fn = getattr(pattern, "fn", pattern)  # torchao's WrapperModule(fn) or a plain function
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    cells = tuple(c.cell_contents for c in (getattr(fn, "__closure__", None) or ()))
    if any(isinstance(c, torch.Tensor) for c in cells):
        return None  # a captured tensor's values may matter: do not cache
    key = (code, cells, tuple(_sig(x) for x in example_inputs), is_cuda,
           tuple(sorted((k, _sig(v)) for k, v in kwargs.items())))  # fmt: skip
    try:
        hash(key)
    except TypeError:
        return None
    return key


_CONV_TARGETS = {  # F.conv* used by torchao's conv-bn patterns -> aten packets in a captured graph
    "conv1d": "conv1d", "conv2d": "conv2d", "conv_transpose1d": "conv_transpose1d",
    "conv_transpose2d": "conv_transpose2d",
}  # fmt: skip


def _has_conv_kind(m: GraphModule, conv_fn: object) -> bool:
    packet = getattr(torch.ops.aten, _CONV_TARGETS.get(getattr(conv_fn, "__name__", ""), ""), None)
    if packet is None:
        return True  # unknown conv function: let torchao look
    targets = {getattr(packet, o) for o in packet.overloads()}
    return any(n.op == "call_function" and n.target in targets for n in m.graph.nodes)


@contextlib.contextmanager
def torchao_fast_paths():
    """Same results, less time: torchao's conv-bn fuse/fold passes torch.export (strict, i.e.
    dynamo) ~100 tiny pattern functions on every prepare/convert call, ~0.3-0.8 s each on a small
    CPU. We (1) reuse the pattern graphs (pure functions of the pattern code, its closure flags and
    the example shapes) and (2) skip the pattern family of a conv kind absent from the graph (a
    conv1d pattern cannot match a graph without conv1d). If torchao's private names move, this
    degrades to no patching, never to different results.
    """
    try:
        from torchao.quantization.pt2e import qat_utils
        from torchao.quantization.pt2e import utils as ao_utils

        orig_get = ao_utils._get_aten_graph_module_for_pattern
        orig_fuse, orig_fold = qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper
    except (ImportError, AttributeError):
        yield
        return

    def get(pattern, example_inputs, is_cuda=False, **kwargs):
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return orig_get(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _PATTERNS:
            _PATTERNS[key] = orig_get(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_PATTERNS[key])

    def only_present(helper):
        def wrapped(m, conv_fn, example_inputs, is_cuda):
            return helper(m, conv_fn, example_inputs, is_cuda) if _has_conv_kind(m, conv_fn) else m

        return wrapped

    saved = [(ao_utils, "_get_aten_graph_module_for_pattern", orig_get),
             (qat_utils, "_get_aten_graph_module_for_pattern", qat_utils._get_aten_graph_module_for_pattern),
             (qat_utils, "_fuse_conv_bn_qat_helper", orig_fuse), (qat_utils, "_fold_conv_bn_qat_helper", orig_fold)]  # fmt: skip
    ao_utils._get_aten_graph_module_for_pattern = get
    qat_utils._get_aten_graph_module_for_pattern = get
    qat_utils._fuse_conv_bn_qat_helper = only_present(orig_fuse)
    qat_utils._fold_conv_bn_qat_helper = only_present(orig_fold)
    try:
        yield
    finally:
        for mod, name, val in saved:
            setattr(mod, name, val)
