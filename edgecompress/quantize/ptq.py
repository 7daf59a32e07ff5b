"""INT8 post-training static quantization with onnxruntime (QDQ format, per-channel weights).

fp32.onnx -> ``quant_pre_process`` (shape inference + ORT graph optimisation, which folds BN
and fuses what can be fused before scales are computed) -> ``quantize_static`` calibrated on
samples of the *training* split. The result runs with int8 kernels once onnxruntime's graph
optimiser (level >= EXTENDED) fuses DequantizeLinear -> op -> QuantizeLinear.

``quantize_dynamic_onnx`` is the calibration-free alternative for MatMul/Gemm-heavy models:
int8 weights, activations quantized on the fly (MatMulInteger / DynamicQuantizeMatMul).

Both apply the settings of the target CPU class (``QuantConfig.target``, see
:mod:`edgecompress.quantize.target`) and record them in ``QuantResult.settings``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.config import QuantConfig
from edgecompress.files import atomic_write
from edgecompress.quantize import target as _target
from edgecompress.quantize.graph import gemm_to_matmul, keep_float
from edgecompress.runtime.progress import progress
from edgecompress.runtime.session import fixed_batch, pad_batch


class _DropOrtInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """onnxruntime's quantizer logs its progress at INFO through the root logger (``logging.info``):
    while it runs, a filter on the root logger drops those records. No logger's level changes, and
    other libraries' records pass."""
    root, f = logging.getLogger(), _DropOrtInfo()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    calib_samples: int
    settings: dict


class ArrayReader:
    """onnxruntime's CalibrationDataReader protocol, batch by batch, over a numpy array or an
    array-like that decodes on demand (``data.folders.ImageFiles``: only the batch in hand is in
    memory). ``len`` and ``set_range`` (in batches) let ``quantize_static`` calibrate a range at a
    time (``CalibStridedMinMax``), see :func:`calib_options`. ``fixed``: the batch size the graph's
    input fixes; batches are then exactly that, the last padded with samples from the start."""

    def __init__(self, input_name: str, x, batch: int = 32, fixed: int | None = None) -> None:
        self.input_name, self.x, self.batch, self.fixed = input_name, x, fixed or batch, fixed
        self.start, self.end, self.i = 0, self.batches, 0
        self.bar = None  # a progress bar (train.progress) updated per batch

    @property
    def batches(self) -> int:
        return -(-len(self.x) // self.batch)

    def __len__(self) -> int:
        return self.batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.i = start_index, end_index, start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= min(self.end, self.batches):
            return None
        b = np.ascontiguousarray(self.x[self.i * self.batch : (self.i + 1) * self.batch], dtype=np.float32)
        self.i += 1
        if self.bar is not None:
            self.bar.update(len(b))
        return {self.input_name: b if self.fixed is None else pad_batch(b, self.fixed)}

    def rewind(self) -> None:
        self.i = self.start


class BatchReader:
    """The CalibrationDataReader protocol over an iterable of batches (numpy arrays), read once."""

    def __init__(self, input_name: str, batches) -> None:
        self.input_name, self.it, self.count = input_name, iter(batches), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.it, None)
        if b is None:
            return None
        self.count += len(b)
        return {self.input_name: np.ascontiguousarray(b, dtype=np.float32)}


def calib_options(method: str, reader) -> dict:
    """Bounded memory while calibrating. MinMax: onnxruntime's augmented graph reduces every
    calibrated tensor to its min and max per batch, so only two scalars per tensor and batch are
    kept: nothing to do. Entropy and percentile keep every calibrated activation of every batch
    until ``collect_data`` ends; with a reader that has ``len``/``set_range`` they are fed 4
    batches at a time (``CalibStridedMinMax``: histograms merged per range, so the result can
    differ slightly from one pass over everything). ``CalibMaxIntermediateOutputs`` is not used: in
    onnxruntime 1.32 MinMaxCalibrater clears the outputs it collected at that count without merging
    them into its range (calibrate.py ``collect_data``), which would drop data."""
    if method == "minmax" or not hasattr(reader, "set_range"):
        return {}
    n = len(reader)
    stride = max(d for d in range(1, min(4, n) + 1) if n % d == 0)
    return {"CalibStridedMinMax": stride}


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


def quantize_ptq(fp32: Path, out: Path, calib_x, cfg: QuantConfig, *, quiet: bool = False) -> QuantResult:
    """``calib_x``: an array, an array-like decoded on demand, or an iterable of batches. ``quiet``:
    no progress bar (the measurement files of latency probes and width tables)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    input_name, fixed = sess.get_inputs()[0].name, fixed_batch(sess)
    eff, tgt = resolve_target(cfg)
    settings = {
        "format": "QDQ", "per_channel": cfg.per_channel, "activation_type": eff["activation_type"],
        "weight_type": eff["weight_type"], "reduce_range": eff["reduce_range"], "method": cfg.method,
        "op_types": list(cfg.op_types) or "onnxruntime default", "exclude_nodes": list(cfg.exclude_nodes),
    } | tgt  # fmt: skip
    with _quiet_ort_logging(), tempfile.TemporaryDirectory(prefix="edgecompress-q-") as d:
        pre = preprocess(fp32, Path(d) / "pre.onnx")

        is_array = hasattr(calib_x, "shape") and hasattr(calib_x, "__getitem__")
        reader = ArrayReader(input_name, calib_x, fixed=fixed) if is_array else BatchReader(input_name, calib_x)
        if is_array:
            reader.bar = progress(len(calib_x), "calibrate", disable=quiet)

        def write(tmp: Path) -> None:
            # Entropy/percentile calibration keep histograms; the aug model lives in a temp dir.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(pre), str(tmp), reader,
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    activation_type=qtype[eff["activation_type"]], weight_type=qtype[eff["weight_type"]],
                    reduce_range=eff["reduce_range"], calibrate_method=method,
                    op_types_to_quantize=list(cfg.op_types) or None,
                    nodes_to_exclude=list(cfg.exclude_nodes) or None,
                    extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False,
                                   "WeightSymmetric": True} | calib_options(cfg.method, reader),
                    calibration_providers=["CPUExecutionProvider"],
                )
            if cfg.exclude_nodes:
                import onnx

                m = onnx.load(str(tmp))
                settings["kept_float_inputs"] = keep_float(m, cfg.exclude_nodes)
                onnx.save(m, str(tmp))

        try:
            atomic_write(out, write)
        finally:
            if is_array:
                reader.bar.close()
    return QuantResult(out, len(calib_x) if is_array else reader.count, settings)


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
            warnings.append(f"{k}={str(v)!r} set explicitly; target {resolved} advises {advised[k]!r} "
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
    with _quiet_ort_logging(), tempfile.TemporaryDirectory(prefix="edgecompress-dq-") as d:
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
