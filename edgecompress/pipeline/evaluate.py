"""Every artifact under onnxruntime on the eval set (the training set without one), read batch by
batch: top-1 on labels (one classifier output), the user's --metric, fidelity to the original per
output (runtime.fidelity), the INT8 gates against its FP32 parent, and every artifact's gates
against the ORIGINAL model. Torch-free: the ONNX-input pipeline runs it as is."""

from __future__ import annotations

import numpy as np

from edgecompress.data import as_float
from edgecompress.data.loader import array_batches
from edgecompress.errors import BadInput, one_line
from edgecompress.pipeline.context import RunRecord
from edgecompress.report import Gate
from edgecompress.runtime import make_session, run_batched_all
from edgecompress.runtime.fidelity import GateBounds, compare_outputs, fidelity_gates
from edgecompress.runtime.progress import progress


class Evaluate:
    name = "evaluate"

    def run(self, ctx: RunRecord) -> None:
        ev = ctx.splits.eval if ctx.splits.eval is not None else ctx.splits.train
        ctx.log(f"evaluating {len(ctx.arts)} artifact(s) on {len(ev)} samples with onnxruntime")
        outs = _outputs_all(ctx, ev.x)
        preds = {name: o[0].argmax(1) for name, o in outs.items()} if ctx.classifier else {}
        for name, a in ctx.arts.items():
            if ctx.labelled_eval:
                a.top1 = float((preds[name] == ev.y).mean())
        infos = ctx.outputs
        if ctx.metric is not None:
            for name, a in ctx.arts.items():
                a.metric = call_metric(ctx.metric, ctx.cfg.verify.metric, outs[name], infos, ev.targets)
        if "original" in outs and infos:
            for name, a in ctx.arts.items():
                if name != "original":
                    a.fidelity = compare_outputs(outs["original"], outs[name], infos)
        parent = ctx.fp32_parent
        if "int8" in outs and parent in outs:
            _int8_gates(ctx, outs, preds, parent)
        if ctx.classifier and ctx.splits.eval is not None:
            original_gates(ctx, preds)


def _int8_gates(ctx: RunRecord, outs: dict[str, list[np.ndarray]], preds: dict[str, np.ndarray], parent: str) -> None:
    """INT8 against its FP32 parent: top-1 agreement (and drop) for a classifier, the fidelity gates
    of each output kind otherwise, and the drop of the user's metric."""
    verify = ctx.cfg.verify
    if ctx.metric is not None and verify.max_accuracy_drop is not None:
        drop = 100 * (ctx.arts[parent].metric - ctx.arts["int8"].metric)
        ctx.gates.append(Gate(name=f"INT8 {verify.metric} drop vs {parent} (points)", value=drop,
                              bound=verify.max_accuracy_drop, passed=drop <= verify.max_accuracy_drop))
    if not ctx.classifier:
        vs_parent = compare_outputs(outs[parent], outs["int8"], ctx.outputs)
        ctx.stage_results["quantize"]["fidelity_vs_fp32"] = vs_parent
        bounds = GateBounds(min_agreement=verify.min_int8_agreement, min_snr_db=verify.min_snr_db)
        for g in fidelity_gates(vs_parent, ctx.outputs, bounds):
            ctx.gates.append(Gate(name=f"INT8 vs {parent} {g.name}", value=g.value, bound=g.bound, passed=g.passed))
        return
    if ctx.splits.eval is None:
        return
    agree = float((preds["int8"] == preds[parent]).mean())
    ctx.stage_results["quantize"]["agreement_with_fp32"] = agree
    ctx.gates.append(Gate(name=f"INT8 vs {parent} top-1 agreement", value=agree,
                          bound=verify.min_int8_agreement, passed=agree >= verify.min_int8_agreement))
    if verify.max_accuracy_drop is not None and ctx.labelled_eval and ctx.metric is None:
        drop = 100 * (ctx.arts[parent].top1 - ctx.arts["int8"].top1)
        ctx.gates.append(Gate(name=f"INT8 top-1 drop vs {parent} (points)", value=drop,
                              bound=verify.max_accuracy_drop, passed=drop <= verify.max_accuracy_drop))


def original_gates(ctx: RunRecord, preds: dict[str, np.ndarray]) -> None:
    """Every artifact against the ORIGINAL model on the eval set, whatever its parent: labelled, the
    top-1 drop in points, bounded by ``max_drop_vs_original`` or, if larger, by two standard errors
    of the paired difference (what the eval set can resolve); unlabelled, top-1 agreement. The
    figures go to ``stage_results["vs_original"]``, the gates name the artifact they judge."""
    v, ev, ref = ctx.cfg.verify, ctx.splits.eval, preds.get("original")
    if ref is None or ev is None:
        return
    rec: dict[str, dict[str, float]] = {}
    for name, p in preds.items():
        if name == "original":
            continue
        r = rec[name] = {"agreement": float((p == ref).mean())}
        if ev.y is not None:
            d = (ref == ev.y).astype(np.float64) - (p == ev.y)
            r |= {"top1_drop_points": 100 * float(d.mean()), "noise_points": 200 * float(d.std() / np.sqrt(len(d)))}
            if v.max_drop_vs_original:
                bound = max(v.max_drop_vs_original, r["noise_points"])
                _gate(ctx, name, "top-1 drop vs original (points)", r["top1_drop_points"], bound,
                      r["top1_drop_points"] <= bound)
        elif v.min_agreement_vs_original:
            _gate(ctx, name, "top-1 agreement with original", r["agreement"], v.min_agreement_vs_original,
                  r["agreement"] >= v.min_agreement_vs_original)
    ctx.stage_results["vs_original"] = rec


def _gate(ctx: RunRecord, art: str, what: str, value: float, bound: float, passed: bool) -> None:
    ctx.gates.append(Gate(name=f"{art} {what}", value=value, bound=bound, passed=passed, artifact=art))
    if not passed:
        ctx.log(f"gate failed: {ctx.arts[art].path} {what}: {value:.4g} (bound {bound:.4g})")


def _outputs_all(ctx: RunRecord, x) -> dict[str, list[np.ndarray]]:
    """Every output of every artifact on ``x``. Each batch is read (decoded, for image files, by
    ``--workers`` processes) once for all artifacts; only the outputs are kept, never the inputs."""
    sessions = {name: make_session(ctx.d / a.path, threads=ctx.eval_threads) for name, a in ctx.arts.items()}
    parts: dict[str, list[list[np.ndarray]]] = {name: [] for name in sessions}
    bar = progress(len(x), "evaluate")
    try:
        for xb in array_batches(x, 256, workers=ctx.cfg.data.workers):
            xb = as_float(xb)  # uint8 samples in memory: float per batch
            for name, sess in sessions.items():
                parts[name].append(run_batched_all(sess, xb))
            bar.update(len(xb))
    finally:
        bar.close()
    return {name: [np.concatenate(k) for k in zip(*batches, strict=True)] for name, batches in parts.items()}


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
