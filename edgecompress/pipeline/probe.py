"""The latency probe of ``--target-latency-ms``: times the model as the run will ship it.

It exports with the run's ONNX settings and quantizes with the run's quantization settings (target,
calibration method, weight types; the latency-aware file with --latency-aware-int8, by a shortened
pass: one profile per file, 3 timing rounds), so what pruning measures is the file it delivers.
QAT and INC files are timed as onnxruntime static QDQ files, which have the same graph shape.
With ``export --bench-on DEST`` the file is timed on the device (``meter``) and, beside it for the
record, on the build host."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import ExportOnnxConfig, LatencyAware, QuantBackend, QuantConfig, QuantMode
from edgecompress.export import export_onnx
from edgecompress.prune import LatencyCriterion
from edgecompress.quantize import latency_aware_ptq, quantize_dynamic_onnx, quantize_ptq
from edgecompress.runtime.meter import LOCAL, Meter, is_local


def latency_criterion(example: torch.Tensor, calib_x: np.ndarray | None, *, onnx: ExportOnnxConfig,
                      quant: QuantConfig | None, runs: int = 100, meter: Meter = LOCAL) -> LatencyCriterion:
    """p50 (onnxruntime, 1 thread, batch 1) of the deployed file; ``quant`` None = the FP32 file."""
    latency_aware = quant is not None and quant.latency_aware == LatencyAware.ON and quant.mode == QuantMode.PTQ
    if quant is not None and quant.mode != QuantMode.DYNAMIC:
        quant = dataclasses.replace(quant, mode=QuantMode.PTQ, backend=QuantBackend.ORT)

    def measure(model: nn.Module) -> float | dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="edgecompress-lat-") as d:
            path, q = Path(d) / "m.onnx", Path(d) / "q.onnx"
            export_onnx(model, example, path, onnx)
            if quant is not None and quant.mode == QuantMode.DYNAMIC:
                path = quantize_dynamic_onnx(path, q, quant).path
            elif quant is not None:
                calib = calib_x[:64] if calib_x is not None else \
                    np.random.default_rng(0).random((16, *example.shape[1:]), dtype=np.float32)
                if latency_aware:
                    path = latency_aware_ptq(path, q, calib, quant, rounds=3, profile_rounds=1, meter=meter)[0].path
                else:
                    path = quantize_ptq(path, q, calib, quant, quiet=True).path
            p50 = meter.measure_latency(path, threads=1, batch=1, warmup=10, runs=runs).p50_ms
            if is_local(meter):
                return p50
            return {"p50_ms": p50, "build_host_p50_ms": LOCAL.measure_latency(path, threads=1, batch=1, warmup=10,
                                                                              runs=runs).p50_ms}

    what = "FP32" if quant is None else "latency-aware INT8" if latency_aware else f"INT8 ({quant.mode})"
    where = "" if is_local(meter) else f" on {meter.info['key']}"
    return LatencyCriterion(measure, description=f"the {what} file, onnxruntime, 1 thread, batch 1{where}",
                            can_add_latency_aware=quant is not None and quant.mode == QuantMode.PTQ and not latency_aware)
