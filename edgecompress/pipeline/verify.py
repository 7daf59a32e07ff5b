"""The end of every run, whatever stopped it: top-1 of every artifact under onnxruntime, the INT8
gates, latency, then manifest.json and report.md. A failed gate renames the INT8 file
``int8.failed.onnx``, so no failed file sits under a deliverable name."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from edgecompress.files import atomic_write_text, sha256_file
from edgecompress.pipeline.context import RunContext, RunResult
from edgecompress.report import Gate, Manifest, command_line, render_report, versions
from edgecompress.runtime import cpu_info, file_bytes, make_session, run_batched
from edgecompress.runtime.meter import LOCAL, is_local


class Evaluate:
    name = "evaluate"

    def run(self, ctx: RunContext) -> None:
        ev, verify = ctx.splits.eval, ctx.cfg.verify
        preds: dict[str, np.ndarray] = {}
        if ctx.labelled_eval:
            ctx.log(f"evaluating {len(ctx.arts)} artifact(s) on {len(ev)} samples with onnxruntime")
            for name, a in ctx.arts.items():
                sess = make_session(ctx.d / a.path, threads=torch.get_num_threads())
                preds[name] = run_batched(sess, ev.x).argmax(1)
                a.top1 = float((preds[name] == ev.y).mean())
        parent = ctx.fp32_parent
        if "int8" in preds and parent in preds:
            agree = float((preds["int8"] == preds[parent]).mean())
            ctx.stage_results["quantize"]["agreement_with_fp32"] = agree
            ctx.gates.append(Gate(name=f"INT8 vs {parent} top-1 agreement", value=agree,
                                  bound=verify.min_int8_agreement, passed=agree >= verify.min_int8_agreement))
            if verify.max_accuracy_drop is not None:
                drop = 100 * (ctx.arts[parent].top1 - ctx.arts["int8"].top1)
                ctx.gates.append(Gate(name=f"INT8 top-1 drop vs {parent} (points)", value=drop,
                                      bound=verify.max_accuracy_drop, passed=drop <= verify.max_accuracy_drop))


class Benchmark:
    name = "bench"

    def run(self, ctx: RunContext) -> None:
        b = ctx.cfg.bench
        # the --bench-on device first (its figures are the artifacts' latency), then the build host beside
        meters = [ctx.meter] if is_local(ctx.meter) else [ctx.meter, LOCAL]
        for meter in meters:
            where = "" if is_local(ctx.meter) else f" on {meter.info['key']}"
            ctx.log(f"benchmarking{where} ({b.threads} thread(s), batch {b.batch}, {b.runs} runs)")
            for a in ctx.arts.values():
                lat = meter.measure_latency(ctx.d / a.path, threads=b.threads, batch=b.batch, warmup=b.warmup,
                                            runs=b.runs, input_shape=ctx.lm.input_shape, seed=ctx.cfg.seed)
                if meter is ctx.meter:
                    a.latency_ms_p50, a.latency_ms_p90, a.latency_ms_mean = lat.p50_ms, lat.p90_ms, lat.mean_ms
                if len(meters) > 1:
                    role = "device" if meter is ctx.meter else "build host"
                    key = meter.info["key"] + ("" if meter is ctx.meter or meter.info["key"] != ctx.meter.info["key"]
                                               else " (build host)")  # the same machine, reached over ssh
                    a.latency_by_device = (a.latency_by_device or {}) | {key: {
                        "p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "mean_ms": lat.mean_ms, "role": role}}


def write_manifest(ctx: RunContext) -> RunResult:
    failures = [g.name for g in ctx.gates if not g.passed]
    warnings_ = [*ctx.stage_results.get("prune", {}).get("warnings", []),
                 *ctx.stage_results.get("quantize", {}).get("settings", {}).get("warnings", [])]
    int8 = ctx.arts.get("int8")
    if int8 is not None:
        if failures and int8.path == "int8.onnx":
            (ctx.d / "int8.onnx").rename(ctx.d / "int8.failed.onnx")
            int8.path, int8.status = "int8.failed.onnx", "failed"
        base = ctx.arts[ctx.fp32_parent]
        if int8.latency_ms_p50 >= base.latency_ms_p50:
            q = ctx.cfg.quant
            hint = ("" if q.latency_aware or q.backend != "ort" or "ptq" not in ctx.stages else
                    "; --latency-aware-int8 keeps in FP32 the layers whose INT8 kernel is the slower one")
            where = "this CPU" if is_local(ctx.meter) else ctx.meter.info["key"]
            warnings_.append(f"INT8 p50 {int8.latency_ms_p50:.3f} ms is not below {ctx.fp32_parent} "
                             f"{base.latency_ms_p50:.3f} ms on {where}{hint}")
    for a in ctx.arts.values():
        p = ctx.d / a.path
        a.bytes, a.sha256 = file_bytes(p), sha256_file(p)
    lm, b = ctx.lm, ctx.cfg.bench
    manifest = Manifest(
        status="failed" if failures else "complete", command=command_line(),
        model=lm.spec.to_dict() | {"weights": lm.weights, "weights_sha256": lm.weights_sha256,
                                   "input_shape": list(lm.input_shape), "num_classes": lm.num_classes},
        data=ctx.splits.description, stages=[str(s) for s in ctx.stages], artifacts=ctx.arts,
        stage_results=ctx.stage_results, gates=ctx.gates, warnings=warnings_,
        bench={"threads": b.threads, "batch": b.batch, "warmup": b.warmup, "runs": b.runs}
        | ({} if is_local(ctx.meter) else {"measured_on": ctx.meter.info, "build_host": LOCAL.info["key"]}),
        versions=versions(),
        cpu=cpu_info(), config=ctx.cfg.to_dict(), seed=ctx.cfg.seed,
        timings_s={k: round(v, 2) for k, v in ctx.timings.items()}, wall_seconds=round(time.time() - ctx.t_start, 1),
    ).to_dict()  # fmt: skip
    atomic_write_text(ctx.d / "report.md", render_report(manifest))
    atomic_write_text(ctx.d / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last
    for w in warnings_:
        ctx.log(f"warning: {w}")
    return RunResult(ctx.d, manifest, 1 if failures else 0, failures)
