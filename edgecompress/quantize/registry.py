"""The quantizer of a run, chosen by (mode, backend), as torchao maps a config type to its handler
and onnxruntime's tool dispatches on a config class.

A quantizer is ``run(job: QuantJob) -> QuantOutcome``. The table names each by module and
function and imports it when it runs (``importlib``), so the ONNX-only backends stay importable
without torch. A new backend is one module with a ``run`` function and one row here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import QatConfig, QuantBackend, QuantConfig, QuantMode
from edgecompress.errors import ConfigError
from edgecompress.quantize.ptq import QuantResult
from edgecompress.report.manifest import Gate
from edgecompress.runtime.meter import LOCAL, Meter


@dataclass(frozen=True, kw_only=True)
class QuantJob:
    """Everything a quantizer may need; each uses what its method needs."""

    src: Path  # the FP32 ONNX parent
    dst: Path  # the INT8 file to write
    cfg: QuantConfig
    calib_x: np.ndarray  # calibration samples (training split, never the eval set)
    val_x: np.ndarray | None = None  # validation split: accuracy-aware passes
    val_y: np.ndarray | None = None
    max_accuracy_drop: float | None = None  # points of top-1 (VerifyConfig)
    threads: int = 1  # the deployment's onnxruntime threads and batch (latency-aware pass)
    batch: int = 1
    input_shape: tuple[int, ...] | None = None
    meter: Meter = LOCAL  # where the latency-aware pass measures: here, or the --bench-on device
    model_macs: int | None = None  # MACs of the original model (--latency-aware-int8 auto, as --structure auto)
    # PyTorch-side backends (INC, QAT): the parent's model, the original (teacher), training data
    model: Any = None
    teacher: Any = None
    train: Any = None  # data.Dataset
    example: Any = None  # torch.Tensor, batch 1
    parity_x: np.ndarray | None = None  # samples for a parity check of the written file
    qat: QatConfig = field(default_factory=QatConfig)
    opset: int = 18
    seed: int = 0
    started_from: str = ""  # what the parent is, for the record ("pruned (distilled)")
    log: Callable[[str], None] = lambda m: None


@dataclass(kw_only=True)
class QuantOutcome:
    result: QuantResult
    stage_results: dict[str, Any] = field(default_factory=dict)  # extra records: accuracy_fallback, latency_aware
    quantize_record: dict[str, Any] = field(default_factory=dict)  # added to stage_results["quantize"]
    gates: list[Gate] = field(default_factory=list)
    check_float_layers: bool = False  # the layers asked to stay FP32 must run as float kernels


Quantizer = Callable[[QuantJob], QuantOutcome]

QUANTIZERS: dict[tuple[QuantMode, QuantBackend], str] = {
    (QuantMode.PTQ, QuantBackend.ORT): "edgecompress.quantize.ort:run_static",
    (QuantMode.DYNAMIC, QuantBackend.ORT): "edgecompress.quantize.ort:run_dynamic",
    (QuantMode.PTQ, QuantBackend.INC): "edgecompress.quantize.inc:run",
    (QuantMode.QAT, QuantBackend.ORT): "edgecompress.quantize.qat:run",  # torchao pt2e, ORT's QDQ format
}


def quantizer_for(mode: QuantMode, backend: QuantBackend) -> Quantizer:
    ref = QUANTIZERS.get((QuantMode(mode), QuantBackend(backend)))
    if ref is None:
        valid = ", ".join(f"--quant {m} --quant-backend {b}" for m, b in QUANTIZERS)
        raise ConfigError(f"--quant {mode} --quant-backend {backend}: no such quantizer; one of {valid}")
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)
