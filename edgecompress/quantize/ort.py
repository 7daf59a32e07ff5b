"""The onnxruntime quantizers of the registry: static QDQ PTQ (plain, accuracy-aware,
latency-aware) and dynamic INT8. ONNX in, ONNX out: no torch."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgecompress.quantize.accuracy_aware import accuracy_aware_ptq
from edgecompress.quantize.latency_aware import latency_aware_ptq
from edgecompress.quantize.ptq import QuantResult, quantize_dynamic_onnx, quantize_ptq, resolve_target
from edgecompress.quantize.registry import QuantJob, QuantOutcome
from edgecompress.quantize.target import detect_target


def run_static(job: QuantJob) -> QuantOutcome:
    job.log(f"quantizing {job.src.name} to INT8 (onnxruntime static QDQ, {job.cfg.method}, "
            f"{len(job.calib_x)} calibration samples)")
    records: dict[str, Any] = {}
    if job.max_accuracy_drop is not None and job.val_y is not None:
        qr, fallback = accuracy_aware_ptq(job.src, job.dst, job.calib_x, job.val_x, job.val_y, job.cfg,
                                          job.max_accuracy_drop, log=job.log)
        records["accuracy_fallback"] = fallback
        if job.cfg.latency_aware:
            qr = _latency_aware(job, fallback["fp32_nodes"], records)
    elif job.cfg.latency_aware:
        qr = _latency_aware(job, [], records)
    else:
        qr = quantize_ptq(job.src, job.dst, job.calib_x, job.cfg)
    return QuantOutcome(result=qr, stage_results=records, check_float_layers=True)


def run_dynamic(job: QuantJob) -> QuantOutcome:
    job.log(f"quantizing {job.src.name} to INT8 (onnxruntime dynamic, weights only)")
    return QuantOutcome(result=quantize_dynamic_onnx(job.src, job.dst, job.cfg))


def _latency_aware(job: QuantJob, keep_fp32: list[str], records: dict[str, Any]) -> QuantResult:
    """--latency-aware-int8: the layers faster in FP32 on the measuring CPU (this one, or the
    --bench-on device) stay FP32 (after any the accuracy fallback already keeps in FP32); skipped,
    with a warning, when quantizing for another CPU class, since what is measured would not hold
    there."""
    qcfg = dataclasses.replace(job.cfg, exclude_nodes=tuple(job.cfg.exclude_nodes) + tuple(keep_fp32))
    _, tgt = resolve_target(qcfg)
    measuring = detect_target(job.meter.info["cpu"])
    if tgt["target"] != measuring:
        qr = quantize_ptq(job.src, job.dst, job.calib_x, qcfg)
        qr.settings.setdefault("warnings", []).append(
            f"--latency-aware-int8 skipped: it measures on a {measuring} machine ({job.meter.dest}), and the file "
            f"is for {tgt['target']}; run it on (or --bench-on) a {tgt['target']} machine")
        return qr
    where = "" if job.meter.dest == "local" else f" on {job.meter.info['key']}"
    job.log(f"latency-aware INT8: timing every layer as INT8 and as FP32{where} ({job.threads} thread(s), "
            f"batch {job.batch})")
    qr, rec = latency_aware_ptq(job.src, job.dst, job.calib_x, qcfg, threads=job.threads, batch=job.batch,
                                input_shape=job.input_shape, log=job.log, meter=job.meter)
    records["latency_aware"] = rec
    return qr
