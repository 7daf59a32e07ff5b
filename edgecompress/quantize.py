"""INT8 post-training static quantization with onnxruntime (QDQ format, per-channel weights).

fp32.onnx -> ``quant_pre_process`` (shape inference + ORT graph optimisation, which folds BN
and fuses what can be fused before scales are computed) -> ``quantize_static`` calibrated on
samples of the *training* split. The result runs with int8 kernels once onnxruntime's graph
optimiser (level >= EXTENDED) fuses DequantizeLinear -> op -> QuantizeLinear.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.config import QuantConfig
from edgecompress.io import atomic_write


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


def quantize_ptq(fp32: Path, out: Path, calib_x: np.ndarray, cfg: QuantConfig) -> QuantResult:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    settings = {
        "format": "QDQ", "per_channel": cfg.per_channel, "activation_type": cfg.activation_type,
        "weight_type": cfg.weight_type, "reduce_range": cfg.reduce_range, "method": cfg.method,
        "op_types": list(cfg.op_types) or "onnxruntime default", "exclude_nodes": list(cfg.exclude_nodes),
    }  # fmt: skip
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edgecompress-q-") as d:
        pre = Path(d) / "pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

        def write(tmp: Path) -> None:
            # Entropy/percentile calibration keep histograms; the aug model lives in a temp dir.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(pre), str(tmp), ArrayReader(input_name, calib_x),
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    activation_type=qtype[cfg.activation_type], weight_type=qtype[cfg.weight_type],
                    reduce_range=cfg.reduce_range, calibrate_method=method,
                    op_types_to_quantize=list(cfg.op_types) or None,
                    nodes_to_exclude=list(cfg.exclude_nodes) or None,
                    extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False,
                                   "WeightSymmetric": True},
                    calibration_providers=["CPUExecutionProvider"],
                )

        atomic_write(out, write)
    return QuantResult(out, len(calib_x), settings)
