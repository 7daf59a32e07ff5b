"""The onnxruntime quantizers of the registry: static QDQ PTQ (plain, accuracy-aware,
latency-aware) and dynamic INT8. ONNX in, ONNX out: no torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgecompress.config import LatencyAware
from edgecompress.config.stages import LARGE_MODEL_MACS
from edgecompress.quantize.accuracy_aware import accuracy_aware_ptq
from edgecompress.quantize.latency_aware import latency_aware_ptq
from edgecompress.quantize.ptq import QuantResult, quantize_dynamic_onnx, quantize_ptq, resolve_target
from edgecompress.quantize.registry import QuantJob, QuantOutcome
from edgecompress.quantize.target import detect_target


def run_static(job: QuantJob) -> QuantOutcome:
    job.log(f"quantizing {job.src.name} to INT8 (onnxruntime static QDQ, {job.cfg.method}, "
            f"{len(job.calib_x)} calibration samples)")
    records: dict[str, Any] = {}
    keep_fp32: list[str] = []
    qr: QuantResult | None = None
    if job.max_accuracy_drop is not None and job.val_y is not None:
        qr, fallback = accuracy_aware_ptq(job.src, job.dst, job.calib_x, job.val_x, job.val_y, job.cfg,
                                          job.max_accuracy_drop, log=job.log)
        records["accuracy_fallback"] = fallback
        keep_fp32 = fallback["fp32_nodes"]
    mode = job.cfg.latency_aware
    if mode == LatencyAware.AUTO and job.model_macs is not None and job.model_macs >= LARGE_MODEL_MACS:
        why = f"the model has {job.model_macs / 1e6:.0f}M MACs >= {LARGE_MODEL_MACS / 1e6:.0f}M"
        records["latency_aware_auto"] = {"runs": True, "why": why}
        return _latency_pass(job, keep_fp32, records, start=qr, why=why)
    if mode == LatencyAware.ON:
        return _latency_pass(job, keep_fp32, records, start=qr)
    if qr is None:
        qr = quantize_ptq(job.src, job.dst, job.calib_x, job.cfg)
    if mode == LatencyAware.AUTO:
        why = _slower_than_parent(job, qr.path, records)
        if why is not None:
            return _latency_pass(job, keep_fp32, records, start=qr, why=why)
    return QuantOutcome(result=qr, stage_results=records, check_float_layers=True)


def _slower_than_parent(job: QuantJob, int8: Path, records: dict[str, Any]) -> str | None:
    """--latency-aware-int8 auto: why the pass runs (the INT8 file is not faster than its FP32
    parent, timed side by side on the measuring device), or None; recorded either way."""
    if not _measurable(job):
        records["latency_aware_auto"] = _not_measured(job)
        return None
    est = job.meter.measure_latency(job.src, threads=job.threads, batch=job.batch, warmup=5, runs=20,
                                    input_shape=job.input_shape).p50_ms
    per_visit = int(min(500, max(20, 50.0 / max(est, 1e-3))))  # ~50 ms of work per visit
    p_parent, p_int8 = job.meter.round_robin_p50([job.src, int8], threads=job.threads, batch=job.batch, rounds=5,
                                                 runs=per_visit, input_shape=job.input_shape)
    slower = p_int8 >= p_parent
    why = (f"INT8 p50 {p_int8:.4f} ms is not below its FP32 parent's {p_parent:.4f} ms" if slower else
           f"INT8 p50 {p_int8:.4f} ms, its FP32 parent {p_parent:.4f} ms")
    records["latency_aware_auto"] = {"runs": slower, "why": why, "p50_ms_parent": p_parent, "p50_ms_int8": p_int8}
    return why if slower else None


def _not_measured(job: QuantJob) -> dict[str, Any]:
    """The auto record when the measuring CPU is not of the class the file is for."""
    return {"runs": False, "why": f"the file is for another CPU class than the one measured ({job.meter.dest})"}


def _measurable(job: QuantJob) -> bool:
    """The measuring CPU (this one, or the --bench-on device) is of the class the file is for."""
    _, tgt = resolve_target(job.cfg)
    return tgt["target"] == detect_target(job.meter.info["cpu"])


def run_dynamic(job: QuantJob) -> QuantOutcome:
    job.log(f"quantizing {job.src.name} to INT8 (onnxruntime dynamic, weights only)")
    return QuantOutcome(result=quantize_dynamic_onnx(job.src, job.dst, job.cfg))


def _latency_pass(job: QuantJob, keep_fp32: list[str], records: dict[str, Any], *, start: QuantResult | None,
                  why: str | None = None) -> QuantOutcome:
    """The latency-aware pass: the layers faster in FP32 on the measuring CPU (this one, or the
    --bench-on device) stay FP32 (after any the accuracy fallback already keeps in FP32), and the
    file is never slower than its FP32 parent. ``why`` is auto's reason; without one the user asked
    for it (``on``). Skipped when quantizing for another CPU class, since what is measured would
    not hold there: with a warning when asked for, silently for auto."""
    qcfg = dataclasses.replace(job.cfg, exclude_nodes=tuple(job.cfg.exclude_nodes) + tuple(keep_fp32))
    if not _measurable(job):
        _, tgt = resolve_target(qcfg)
        qr = start or quantize_ptq(job.src, job.dst, job.calib_x, qcfg)
        if why is None:
            measuring = detect_target(job.meter.info["cpu"])
            qr.settings.setdefault("warnings", []).append(
                f"--latency-aware-int8 skipped: it measures on a {measuring} machine ({job.meter.dest}), and the file "
                f"is for {tgt['target']}; run it on (or --bench-on) a {tgt['target']} machine")
        else:
            records["latency_aware_auto"] = _not_measured(job)
        return QuantOutcome(result=qr, stage_results=records, check_float_layers=True)
    where = "" if job.meter.dest == "local" else f" on {job.meter.info['key']}"
    job.log(("latency-aware INT8" if why is None else f"latency-aware INT8 (auto: {why})")
            + f": timing every layer as INT8 and as FP32{where} ({job.threads} thread(s), batch {job.batch})")
    qr, rec = latency_aware_ptq(job.src, job.dst, job.calib_x, qcfg, threads=job.threads, batch=job.batch,
                                input_shape=job.input_shape, log=job.log, meter=job.meter, start=start)
    records["latency_aware"] = rec
    return QuantOutcome(result=qr, stage_results=records, check_float_layers=True)
