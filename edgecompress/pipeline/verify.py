"""The end of every run, whatever stopped it: the evaluation (``pipeline.evaluate``), latency,
then manifest.json and report.md. A failed gate renames the INT8 file ``int8.failed.onnx``, so no
failed file sits under a deliverable name."""

from __future__ import annotations

import json
import time

from edgecompress.config.enums import Deliver, LatencyAware
from edgecompress.files import atomic_write_text, sha256_file
from edgecompress.pipeline.context import RunRecord, RunResult
from edgecompress.pipeline.evaluate import Evaluate
from edgecompress.report import Manifest, command_line, render_report, versions
from edgecompress.runtime import cpu_info, file_bytes
from edgecompress.runtime.meter import LOCAL, is_local


class Benchmark:
    name = "bench"

    def run(self, ctx: RunRecord) -> None:
        b = ctx.cfg.bench
        # the --bench-on device first (its figures are the artifacts' latency), then the build host beside
        meters = [ctx.meter] if is_local(ctx.meter) else [ctx.meter, LOCAL]
        for meter in meters:
            where = "" if is_local(ctx.meter) else f" on {meter.info['key']}"
            ctx.log(f"benchmarking{where} ({b.threads} thread(s), batch {b.batch}, {b.runs} runs)")
            for a in ctx.arts.values():
                lat = meter.measure_latency(ctx.d / a.path, threads=b.threads, batch=b.batch, warmup=b.warmup,
                                            runs=b.runs, input_shape=ctx.input_shape, seed=ctx.cfg.seed)
                if meter is ctx.meter:
                    a.latency_ms_p50, a.latency_ms_p90, a.latency_ms_mean = lat.p50_ms, lat.p90_ms, lat.mean_ms
                if len(meters) > 1:
                    role = "device" if meter is ctx.meter else "build host"
                    key = meter.info["key"] + ("" if meter is ctx.meter or meter.info["key"] != ctx.meter.info["key"]
                                               else " (build host)")  # the same machine, reached over ssh
                    a.latency_by_device = (a.latency_by_device or {}) | {key: {
                        "p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "mean_ms": lat.mean_ms, "role": role}}


def delivery(ctx: RunRecord, *, failed: bool) -> tuple[str | None, str | None]:
    """(the faster of the INT8 file and its FP32 parent, the file the run delivers).

    ``--deliver int8`` (default) delivers the INT8 file even when it is slower here: latency is
    measured on this machine, which is often not the board the file is for, and INT8 is the
    smallest file; the report says so in its first lines. ``--deliver fastest`` delivers the faster
    of the two. A failed run delivers nothing; a run without INT8 delivers its last FP32 file."""
    int8, parent = ctx.arts.get("int8"), ctx.arts.get(ctx.fp32_parent)
    fastest = None
    if int8 is not None and parent is not None and None not in (int8.latency_ms_p50, parent.latency_ms_p50):
        fastest = "int8" if int8.latency_ms_p50 < parent.latency_ms_p50 else ctx.fp32_parent
    if failed:
        return fastest, None
    if int8 is None:
        return fastest, ctx.fp32_parent if parent is not None else None
    return fastest, (fastest or "int8") if ctx.cfg.verify.deliver == Deliver.FASTEST else "int8"


def close(ctx: RunRecord) -> RunResult:
    """The end of every run, on whatever the stages delivered: evaluate, benchmark, manifest."""
    for closing in (Evaluate(), Benchmark()):
        t0 = time.time()
        closing.run(ctx)
        ctx.timings[closing.name] = time.time() - t0
    return write_manifest(ctx)


def write_manifest(ctx: RunRecord) -> RunResult:
    failures = [g.name for g in ctx.gates if not g.passed]
    warnings_ = [*ctx.warnings, *ctx.stage_results.get("prune", {}).get("warnings", []),
                 *ctx.stage_results.get("quantize", {}).get("settings", {}).get("warnings", [])]
    _mark_failed(ctx, {g.artifact for g in ctx.gates if not g.passed and g.artifact})
    int8 = ctx.arts.get("int8")
    if int8 is not None:
        if failures and int8.path == "int8.onnx":
            (ctx.d / "int8.onnx").rename(ctx.d / "int8.failed.onnx")
            int8.path, int8.status = "int8.failed.onnx", "failed"
        base = ctx.arts[ctx.fp32_parent]
        if int8.latency_ms_p50 >= base.latency_ms_p50:
            q = ctx.cfg.quant
            hint = ("" if q.latency_aware != LatencyAware.OFF or q.backend != "ort" or "ptq" not in ctx.stages else
                    "; without --latency-aware-int8 off, the layers whose INT8 kernel is the slower one stay FP32")
            where = "this CPU" if is_local(ctx.meter) else ctx.meter.info["key"]
            warnings_.append(f"INT8 p50 {int8.latency_ms_p50:.3f} ms is not below {ctx.fp32_parent} "
                             f"{base.latency_ms_p50:.3f} ms on {where}{hint}")
    for a in ctx.arts.values():
        p = ctx.d / a.path
        a.bytes, a.sha256 = file_bytes(p), sha256_file(p)
    fastest, delivered = delivery(ctx, failed=bool(failures))
    b = ctx.cfg.bench
    manifest = Manifest(
        status="failed" if failures else "complete", command=command_line(),
        model=ctx.model_record,
        data=ctx.splits.description, stages=[str(s) for s in ctx.stages], artifacts=ctx.arts,
        stage_results=ctx.stage_results, gates=ctx.gates, warnings=warnings_,
        bench={"threads": b.threads, "batch": b.batch, "warmup": b.warmup, "runs": b.runs}
        | ({} if is_local(ctx.meter) else {"measured_on": ctx.meter.info, "build_host": LOCAL.info["key"]}),
        versions=versions(),
        cpu=cpu_info(), config=ctx.cfg.to_dict(), seed=ctx.cfg.seed,
        timings_s={k: round(v, 2) for k, v in ctx.timings.items()}, wall_seconds=round(time.time() - ctx.t_start, 1),
        fastest_artifact=fastest, delivered_artifact=delivered,
    ).to_dict()  # fmt: skip
    atomic_write_text(ctx.d / "report.md", render_report(manifest))
    atomic_write_text(ctx.d / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last
    for w in warnings_:
        ctx.log(f"warning: {w}")
    return RunResult(ctx.d, manifest, 1 if failures else 0, failures)


def _mark_failed(ctx: RunRecord, names: set[str]) -> None:
    """The FP32 artifacts a gate failed on (and their checkpoints) leave their deliverable names."""
    for name in names - {"int8"}:  # INT8 is renamed on any failure, below
        a = ctx.arts[name]
        if a.status == "failed":
            continue
        for attr in ("path", "checkpoint"):
            f = getattr(a, attr)
            if f and (ctx.d / f).exists():
                stem, dot, ext = f.rpartition(".")
                (ctx.d / f).rename(ctx.d / f"{stem}.failed{dot}{ext}")
                setattr(a, attr, f"{stem}.failed{dot}{ext}")
        a.status = "failed"
