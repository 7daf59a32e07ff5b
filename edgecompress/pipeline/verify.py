"""The end of every run, whatever stopped it: top-1 of every artifact under onnxruntime, the INT8
gates, latency, then manifest.json and report.md. A failed gate renames the INT8 file
``int8.failed.onnx``, so no failed file sits under a deliverable name."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from edgecompress.errors import BadInput, one_line
from edgecompress.files import atomic_write_text, sha256_file
from edgecompress.pipeline.context import RunContext, RunResult
from edgecompress.report import Gate, Manifest, command_line, render_report, versions
from edgecompress.runtime import cpu_info, file_bytes, make_session, measure_latency, run_batched_all
from edgecompress.runtime.fidelity import GateBounds, compare_outputs, fidelity_gates


class Evaluate:
    """Every artifact under onnxruntime: top-1 on labels (a classifier), fidelity to the original
    per output (runtime.fidelity), and the INT8 gates against its FP32 parent."""

    name = "evaluate"

    def run(self, ctx: RunContext) -> None:
        ev = ctx.splits.eval if ctx.splits.eval is not None else ctx.splits.train
        ctx.log(f"evaluating {len(ctx.arts)} artifact(s) on {len(ev)} samples with onnxruntime")
        outs: dict[str, list[np.ndarray]] = {}
        for name, a in ctx.arts.items():
            outs[name] = run_batched_all(make_session(ctx.d / a.path, threads=torch.get_num_threads()), ev.x)
            if ctx.labelled_eval:
                a.top1 = float((outs[name][0].argmax(1) == ev.y).mean())
        infos = ctx.lm.outputs
        if ctx.metric is not None:
            for name, a in ctx.arts.items():
                a.metric = call_metric(ctx.metric, ctx.cfg.verify.metric, outs[name], infos, ev.targets)
        if "original" in outs:
            for name, a in ctx.arts.items():
                if name != "original":
                    a.fidelity = compare_outputs(outs["original"], outs[name], infos)
        parent = ctx.fp32_parent
        if "int8" not in outs or parent not in outs:
            return
        drop_bound = ctx.cfg.verify.max_accuracy_drop
        if ctx.metric is not None and drop_bound is not None:
            drop = 100 * (ctx.arts[parent].metric - ctx.arts["int8"].metric)
            ctx.gates.append(Gate(name=f"INT8 {ctx.cfg.verify.metric} drop vs {parent} (points)", value=drop,
                                  bound=drop_bound, passed=drop <= drop_bound))
        if ctx.classifier:
            self._classifier_gates(ctx, outs, parent)
            return
        vs_parent = compare_outputs(outs[parent], outs["int8"], infos)
        ctx.stage_results["quantize"]["fidelity_vs_fp32"] = vs_parent
        bounds = GateBounds(min_agreement=ctx.cfg.verify.min_int8_agreement, min_snr_db=ctx.cfg.verify.min_snr_db)
        for g in fidelity_gates(vs_parent, infos, bounds):
            ctx.gates.append(Gate(name=f"INT8 vs {parent} {g.name}", value=g.value, bound=g.bound, passed=g.passed))

    @staticmethod
    def _classifier_gates(ctx: RunContext, outs: dict[str, list[np.ndarray]], parent: str) -> None:
        """One classifier output: the top-1 agreement and accuracy-drop gates, on labelled data."""
        if not ctx.labelled_eval:
            return
        verify = ctx.cfg.verify
        agree = float((outs["int8"][0].argmax(1) == outs[parent][0].argmax(1)).mean())
        ctx.stage_results["quantize"]["agreement_with_fp32"] = agree
        ctx.gates.append(Gate(name=f"INT8 vs {parent} top-1 agreement", value=agree,
                              bound=verify.min_int8_agreement, passed=agree >= verify.min_int8_agreement))
        if verify.max_accuracy_drop is not None and ctx.metric is None:
            drop = 100 * (ctx.arts[parent].top1 - ctx.arts["int8"].top1)
            ctx.gates.append(Gate(name=f"INT8 top-1 drop vs {parent} (points)", value=drop,
                                  bound=verify.max_accuracy_drop, passed=drop <= verify.max_accuracy_drop))


def call_metric(fn, ref: str | None, outs: list[np.ndarray], infos, targets: dict[str, np.ndarray] | None) -> float:
    """The user's metric on one artifact's outputs: fn(outputs, targets), numpy arrays (a dict by
    output name when there are several outputs / per-output targets)."""
    outputs = outs[0] if len(outs) == 1 else {i.name: o for i, o in zip(infos, outs, strict=True)}
    tg = None if targets is None else targets["y"] if "y" in targets else dict(targets)
    try:
        v = float(fn(outputs, tg))
    except Exception as e:
        raise BadInput(f"--metric {ref} raised {type(e).__name__}: {one_line(e, 300)}; fix the metric (it gets "
                       "numpy arrays: outputs, targets)") from None
    if not np.isfinite(v):
        raise BadInput(f"--metric {ref} returned {v}; return a finite float (higher is better)")
    return v


class Benchmark:
    name = "bench"

    def run(self, ctx: RunContext) -> None:
        b = ctx.cfg.bench
        ctx.log(f"benchmarking ({b.threads} thread(s), batch {b.batch}, {b.runs} runs)")
        for a in ctx.arts.values():
            lat = measure_latency(ctx.d / a.path, threads=b.threads, batch=b.batch, warmup=b.warmup, runs=b.runs,
                                  input_shape=ctx.lm.input_shape, seed=ctx.cfg.seed)
            a.latency_ms_p50, a.latency_ms_p90, a.latency_ms_mean = lat.p50_ms, lat.p90_ms, lat.mean_ms


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
            warnings_.append(f"INT8 p50 {int8.latency_ms_p50:.3f} ms is not below {ctx.fp32_parent} "
                             f"{base.latency_ms_p50:.3f} ms on this CPU{hint}")
    for a in ctx.arts.values():
        p = ctx.d / a.path
        a.bytes, a.sha256 = file_bytes(p), sha256_file(p)
    lm, b = ctx.lm, ctx.cfg.bench
    manifest = Manifest(
        status="failed" if failures else "complete", command=command_line(),
        model=lm.spec.to_dict() | {"weights": lm.weights, "weights_sha256": lm.weights_sha256,
                                   "input_shape": list(lm.input_shape), "num_classes": lm.num_classes,
                                   "classifier": ctx.classifier, "outputs": [o.to_dict() for o in lm.outputs]},
        data=ctx.splits.description, stages=[str(s) for s in ctx.stages], artifacts=ctx.arts,
        stage_results=ctx.stage_results, gates=ctx.gates, warnings=warnings_,
        bench={"threads": b.threads, "batch": b.batch, "warmup": b.warmup, "runs": b.runs}, versions=versions(),
        cpu=cpu_info(), config=ctx.cfg.to_dict(), seed=ctx.cfg.seed,
        timings_s={k: round(v, 2) for k, v in ctx.timings.items()}, wall_seconds=round(time.time() - ctx.t_start, 1),
    ).to_dict()  # fmt: skip
    atomic_write_text(ctx.d / "report.md", render_report(manifest))
    atomic_write_text(ctx.d / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last
    for w in warnings_:
        ctx.log(f"warning: {w}")
    return RunResult(ctx.d, manifest, 1 if failures else 0, failures)
