"""Runs the stages in order and records each result:

    load model + data -> export original.onnx (parity) -> prune -> distill -> export
    pruned.onnx (parity) + pruned.pt -> INT8 PTQ -> verify (checker, top-1 under onnxruntime,
    agreement, gates) -> benchmark -> manifest.json + report.md

Everything is written into a staging directory that replaces ``--out`` only when complete.
A failing gate still delivers the directory (for inspection) but with ``status: failed``, the
failed file renamed to ``<name>.failed.onnx`` (never under a deliverable name), and exit 1.
"""

from __future__ import annotations

import io
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import resume, rundir
from edgecompress.config import RunConfig
from edgecompress.errors import BadInput
from edgecompress.io import atomic_write_bytes, atomic_write_text, sha256_file


@dataclass
class RunResult:
    out_dir: Path
    manifest: dict[str, Any]
    exit_code: int
    failures: list[str] = field(default_factory=list)


@dataclass
class _Ctx:
    """What the stages share: inputs, and the records they append to."""

    cfg: RunConfig
    d: Path  # staging directory
    log: Callable[[str], None]
    t_start: float
    lm: Any = None  # models.LoadedModel
    splits: Any = None  # data.Splits
    example: Any = None  # torch.Tensor, batch 1
    calib_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    meta: dict[str, str] = field(default_factory=dict)
    arts: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    stage_results: dict[str, Any] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    fp32_parent: str = "original"  # the FP32 artifact the INT8 one was made from
    fp32_model: Any = None  # its PyTorch model (INC and QAT start from it)


class _Stop(Exception):
    """A gate failed in a way that makes later stages meaningless: deliver what exists, as failed."""


def _log(msg: str) -> None:
    print(f"edgecompress: {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: RunConfig, *, log: Callable[[str], None] = _log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    stage_dir = rundir.staging_dir(out)
    if not cfg.resume:
        resume.clear(out)  # a fresh run: checkpoints of an interrupted one would only mislead
    try:
        ctx = _Ctx(cfg, stage_dir, log, t_start)
        _load_inputs(ctx)
        try:
            _compress(ctx)
        except _Stop:
            pass
        result = _finish(ctx)
        rundir.finalize(stage_dir, out)
    except BaseException:
        rundir.discard(stage_dir)  # the KD checkpoints (edgecompress.resume) stay for --resume
        raise
    resume.clear(out)
    result.out_dir = out
    log(f"{result.manifest['status']}: wrote {out}/ (manifest.json, report.md) in {time.time() - t_start:.0f} s")
    return result


def _load_inputs(c: _Ctx) -> None:
    import torch

    from edgecompress import data, models

    cfg, t = c.cfg, time.time()
    seed_everything(cfg.seed)
    kind, _ = data.resolve_data(cfg.data.data)
    if kind == "random":
        lm = models.load_model(cfg.model)
        splits = data.load_splits(cfg.data.data, cfg.data.eval_data, input_shape=lm.input_shape[1:],
                                  seed=cfg.seed, random_samples=cfg.data.random_samples)
    else:
        splits = data.load_splits(cfg.data.data, cfg.data.eval_data, input_shape=None, seed=cfg.seed,
                                  val_fraction=cfg.data.val_fraction, eval_fraction=cfg.data.eval_fraction)
        lm = models.load_model(cfg.model, data_shape=tuple(splits.train.x.shape[1:]))
        if tuple(lm.input_shape[1:]) != tuple(splits.train.x.shape[1:]):
            raise BadInput(f"--input-shape {','.join(map(str, lm.input_shape))} does not match the data's "
                           f"samples {tuple(splits.train.x.shape[1:])}; drop --input-shape or fix it")
    splits = _limit(splits, cfg)
    for part in (splits.train, splits.eval):
        if part is not None and part.y is not None and len(part.y) and part.y.max() >= lm.num_classes:
            raise BadInput(f"labels in {part.source} go up to {int(part.y.max())} but the model has "
                           f"{lm.num_classes} outputs; labels must be 0..{lm.num_classes - 1}")
    plan = cfg.plan()
    if "ptq" in plan and cfg.quant.calib_samples > len(splits.train):
        raise BadInput(f"--calib-samples {cfg.quant.calib_samples} exceeds the {len(splits.train)} training "
                       "samples; lower --calib-samples or pass more data")
    c.lm, c.splits = lm, splits
    c.example = torch.zeros((1, *lm.input_shape[1:]))
    rng = np.random.default_rng(cfg.seed)
    if "ptq" in plan:
        c.calib_idx = np.sort(rng.choice(len(splits.train), cfg.quant.calib_samples, replace=False))
    c.meta = _metadata(lm, lm.classes or splits.train.classes)
    c.log(f"model {lm.spec.ref} ({lm.num_classes} classes, input {list(lm.input_shape)}); data "
          f"{splits.description['kind']}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{0 if splits.eval is None else len(splits.eval)} eval")
    c.timings["load"] = time.time() - t


def _fp32_artifact(c: _Ctx, name: str, model, parent: str | None) -> None:
    from edgecompress import export, prune

    t0 = time.time()
    path = c.d / f"{name}.onnx"
    export.export_onnx(model, c.example, path, c.cfg.onnx)
    _stamp(path, c.meta | {"edgecompress.artifact": name}, c.cfg.onnx.compact_names)
    src = c.splits.eval if c.splits.eval is not None else c.splits.train
    par = export.parity(model, path, src.x[:64], c.cfg.verify.parity_tol)
    c.gates.append({"name": f"parity {name}.onnx vs PyTorch (max-abs logit)", "value": par.max_abs,
                    "bound": par.tol, "passed": par.passed})
    macs, params = prune.count_macs_params(model, c.example)
    c.arts[name] = {"path": path.name, "macs": macs, "params": params, "parent": parent,
                    "parity": par.to_dict(), "status": "ok" if par.passed else "failed"}
    c.timings[f"export_{name}"] = time.time() - t0
    if not par.passed:
        path.rename(c.d / f"{name}.failed.onnx")
        c.arts[name]["path"] = f"{name}.failed.onnx"
        c.log(f"gate failed: {name}.onnx differs from PyTorch by {par.max_abs:.3g} (bound {par.tol:.3g}); "
              "try --exporter torchscript")
        raise _Stop()


def _compress(c: _Ctx) -> None:
    from edgecompress import bench, export, prune, quantize
    from edgecompress.kdrun import run_kd
    from edgecompress.train import top1

    cfg, splits, teacher = c.cfg, c.splits, c.lm.model
    plan = cfg.plan()
    c.log(f"stages: {' -> '.join(plan) or 'export only'}")
    c.log("exporting original.onnx")
    _fp32_artifact(c, "original", teacher, None)
    c.fp32_model = teacher

    if "prune" in plan:
        t0 = time.time()
        p = cfg.prune
        c.log(f"pruning to {p.goal()} ({p.importance}, {p.allocation}, round-to {p.round_to}"
              f"{f', {p.steps} steps' if p.steps > 1 else ''}{f', {p.drop_blocks} blocks dropped' if p.drop_blocks else ''})")
        idx = c.calib_idx[:256] if len(c.calib_idx) else np.arange(min(256, len(splits.train)))
        calib = {"calib_x": splits.train.x[idx], "calib_y": None if splits.train.y is None else splits.train.y[idx]}
        labelled = splits.eval is not None and splits.eval.y is not None
        macs0 = prune.count_macs_params(teacher, c.example)[0]
        if p.allocation == "sensitivity" and p.sensitivity is None:  # no --sensitivity FILE: measure it here
            p = replace(p, sensitivity=str(_sensitivity_table(c)))
        student, history, allocations, prune_warnings = teacher, [], [], []
        quant_planned = any(s in plan for s in ("ptq", "dynamic", "qat"))
        for step in range(1, p.steps + 1):
            # iterative schedule: step i brings the MACs to (1 - ratio * i / steps) of the original
            goal_macs = macs0 * (1 - p.macs_target * step / p.steps)
            now = prune.count_macs_params(student, c.example)[0]
            # blocks are dropped once, in the first step; later steps only prune channels
            pstep = p if step == 1 else replace(p, drop_blocks=0)
            pr = prune.prune(student, c.example, pstep, ratio=max(0.0, 1 - goal_macs / now), latency_int8=quant_planned,
                             exporter=cfg.onnx.exporter, latency_aware=cfg.quant.latency_aware and "ptq" in plan,
                             **calib)
            student = pr.model
            allocations.append(pr.allocation)
            if pr.allocation.get("groups_without_curve"):
                from edgecompress.allocation import missing_warning

                w = missing_warning(pr.allocation["groups_without_curve"])
                if w not in prune_warnings:  # an iterative schedule meets the same groups at every step
                    prune_warnings.append(w)
                    c.log(f"warning: {w}")
            if step == 1:
                dropped = pr.dropped_blocks
            after_prune = top1(student, splits.eval) if labelled else None
            if "kd" in plan:
                td = time.time()
                dcfg = replace(cfg.distill, epochs=cfg.distill.epochs / p.steps)
                c.log(f"distilling for {dcfg.epochs:g} epoch(s) (T={dcfg.temperature:g}, alpha={dcfg.alpha:g}, "
                      f"lr={dcfg.lr:g}{f', mixup={dcfg.mixup:g}' if dcfg.mixup else ''})"
                      f"{f' [step {step}/{p.steps}]' if p.steps > 1 else ''}")
                dr = run_kd(cfg, c.lm, splits, student, teacher, dcfg, step, c.log)
                after = top1(student, splits.eval) if labelled else None
                history.append({"step": step, "macs": pr.macs_after, "steps": dr.steps, "final_loss": dr.final_loss,
                                "val_top1_before": dr.val_top1_before, "val_top1_after": dr.val_top1_after,
                                "eval_top1_after_prune": after_prune, "eval_top1_after_distill": after,
                                "best_epoch": dr.best_epoch, "val_top1_history": dr.val_history,
                                "stopped_early": dr.stopped_early, "feature_hints": dr.feature_hints,
                                "feature_loss_first": dr.feature_loss_first, "feature_loss_last": dr.feature_loss_last,
                                "teacher_forward_batches": dr.teacher_forward_batches,
                                "resumed_from_step": dr.resumed_from_step, "nproc": dr.nproc,
                                "rank_state_sha256": dr.rank_state_sha256,
                                "seconds": round(time.time() - td, 1)})
                if labelled:
                    c.log(f"top-1 after pruning {after_prune:.4f}, after distillation {after:.4f}")
        # the record and the summary are relative to the original model, whatever the schedule
        pr.record = prune.structural_record(teacher, student)
        pr.macs_before, pr.params_before = prune.count_macs_params(teacher, c.example)
        pr.layers = prune.layer_table(teacher, student)
        pr.dropped_blocks = dropped
        if p.steps > 1 and p.allocation == "sensitivity":
            pr.allocation = {"per_step": allocations}
        c.stages.append("prune")
        c.stage_results["prune"] = pr.summary() | {"importance": p.importance, "allocation": p.allocation,
                                                    "round_to": p.round_to, "steps": p.steps,
                                                    "macs_target": p.macs_target, "target_params": p.target_params,
                                                    "target_latency_ms": p.target_latency_ms,
                                                    **({"warnings": prune_warnings} if prune_warnings else {})}
        c.log(f"pruned: MACs {pr.macs_before:,} -> {pr.macs_after:,} ({1 - pr.macs_after / pr.macs_before:.1%} "
              f"removed), params {pr.params_before:,} -> {pr.params_after:,}")
        if history:
            c.stages.append("distill")
            c.stage_results["distill"] = {
                "epochs": cfg.distill.epochs, "steps": sum(h["steps"] for h in history),
                "final_loss": history[-1]["final_loss"], "eval_top1_after_prune": history[0]["eval_top1_after_prune"],
                "eval_top1_after_distill": history[-1]["eval_top1_after_distill"], "schedule": history,
                "patience": cfg.distill.patience, "best_epoch": history[-1]["best_epoch"],
                "val_top1_history": history[-1]["val_top1_history"],
                "stopped_early": any(h["stopped_early"] for h in history),
            }  # fmt: skip
        c.timings["prune+distill"] = time.time() - t0
        _save_pruned(c.d / "pruned.pt", c.lm, pr)
        c.log("exporting pruned.onnx")
        _fp32_artifact(c, "pruned", student, "original")
        c.arts["pruned"]["checkpoint"] = "pruned.pt"
        c.fp32_parent, c.fp32_model = "pruned", student

    quant = next((s for s in plan if s in ("ptq", "dynamic", "qat")), None)
    if quant in ("ptq", "dynamic"):
        t0 = time.time()
        parent = c.fp32_parent
        if quant == "dynamic":
            c.log(f"quantizing {parent}.onnx to INT8 (onnxruntime dynamic, weights only)")
            qr = quantize.quantize_dynamic_onnx(c.d / f"{parent}.onnx", c.d / "int8.onnx", cfg.quant)
        else:
            c.log(f"quantizing {parent}.onnx to INT8 (onnxruntime static QDQ, {cfg.quant.method}, "
                  f"{len(c.calib_idx)} calibration samples)")
            calib = splits.train.x[c.calib_idx]
            if cfg.quant.backend == "inc":
                qr = _quantize_inc(c, calib)
            elif cfg.verify.max_accuracy_drop is not None and splits.val.y is not None:
                from edgecompress.quant_fallback import accuracy_aware_ptq

                qr, fallback = accuracy_aware_ptq(c.d / f"{parent}.onnx", c.d / "int8.onnx", calib, splits.val.x,
                                                  splits.val.y, cfg.quant, cfg.verify.max_accuracy_drop, log=c.log)
                c.stage_results["accuracy_fallback"] = fallback
                if cfg.quant.latency_aware:
                    qr = _latency_aware(c, calib, fallback["fp32_nodes"])
            elif cfg.quant.latency_aware:
                qr = _latency_aware(c, calib, [])
            else:
                qr = quantize.quantize_ptq(c.d / f"{parent}.onnx", c.d / "int8.onnx", calib, cfg.quant)
        # the layers kept in FP32 keep their names, so the manifest's lists match the shipped file
        _stamp(c.d / "int8.onnx", c.meta | {"edgecompress.artifact": "int8"}, c.cfg.onnx.compact_names,
               tuple(qr.settings.get("exclude_nodes") or ()))
        export.check_onnx(c.d / "int8.onnx")
        kr = bench.kernel_report(c.d / "int8.onnx")
        if quant == "ptq" and cfg.quant.backend == "ort":
            _check_float_layers(c.d / "int8.onnx", qr.settings, kr.float_islands)
        c.stages.append(quant)
        a = {k: v for k, v in c.arts[parent].items() if k not in ("parity", "checkpoint")}
        c.arts["int8"] = a | {"path": "int8.onnx", "parent": parent, "status": "ok",
                              "int8_op_fraction": kr.int8_op_fraction}
        c.stage_results["quantize"] = {"settings": qr.settings, "calib_samples": qr.calib_samples,
                                       "kernels": kr.to_dict()}
        c.timings["quantize"] = time.time() - t0
    elif quant == "qat":
        _qat(c)


def _qat(c: _Ctx) -> None:
    """Quantization-aware training with KD from the original model (torchao pt2e), exported to
    QDQ ONNX; parity gate in units of the output quantization step (see docs/qat.md)."""
    from edgecompress import bench
    from edgecompress import qat as qatm

    t0, cfg = time.time(), c.cfg
    parent = c.fp32_parent
    # with --stages prune,kd,qat the student arrives distilled; QAT continues from those weights
    start = f"{parent} (distilled)" if "distill" in c.stages else parent
    c.log(f"quantization-aware training of {start} for {cfg.qat.epochs:g} epoch(s) with KD from the original")
    qr = qatm.qat(c.fp32_model, c.lm.model, c.splits.train, c.example, cfg.qat, seed=cfg.seed)
    path = qatm.export_qat_onnx(qr.model, c.example, c.d / "int8.onnx", opset=cfg.onnx.opset)
    _stamp(path, c.meta | {"edgecompress.artifact": "int8"}, c.cfg.onnx.compact_names)
    src = c.splits.eval if c.splits.eval is not None else c.splits.train
    par = qatm.check_qat_parity(qr.model, path, src.x[:256])
    c.gates.append({"name": "parity int8.onnx vs converted QAT model (max-abs logit)", "value": par.max_abs,
                    "bound": par.bound if np.isfinite(par.bound) else 0.0, "passed": par.passed})
    kr = bench.kernel_report(path)
    c.stages.append("qat")
    a = {k: v for k, v in c.arts[parent].items() if k not in ("parity", "checkpoint")}
    c.arts["int8"] = a | {"path": "int8.onnx", "parent": parent, "status": "ok", "int8_op_fraction": kr.int8_op_fraction}
    c.stage_results["quantize"] = {
        "settings": {"format": "QDQ (torchao pt2e QAT)", "per_channel": True, "method": "QAT with KD",
                     "epochs": cfg.qat.epochs, "lr": cfg.qat.lr},
        "calib_samples": qr.calib_samples, "kernels": kr.to_dict(),
        "qat": {"started_from": start, "steps": qr.steps, "final_loss": qr.final_loss, "bn_frozen_at": qr.bn_frozen_at,
                "observers_frozen_at": qr.observers_frozen_at, "parity_top1_agreement": par.top1_agreement},
    }  # fmt: skip
    c.timings["qat"] = time.time() - t0


def _check_float_layers(path: Path, settings: dict, float_islands: list[str]) -> None:
    """The compute layers asked to stay FP32 must run as float kernels after onnxruntime's
    optimiser (``float_islands`` of the kernel report; they keep their names under
    --compact-names); any that do not are named in a warning (and the manifest)."""
    import onnx

    from edgecompress.quantize import COMPUTE_OPS

    wanted = set(settings.get("exclude_nodes") or ())
    if not wanted:
        return
    layers = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
              if n.name in wanted and n.op_type in COMPUTE_OPS]
    islands = set(float_islands)
    settings["fp32_layers_run_as_int8"] = ran = [n for n in layers if n not in islands]
    if ran:
        settings.setdefault("warnings", []).append(
            f"{len(ran)} layer(s) kept in FP32 run as INT8 kernels after onnxruntime's optimiser: {', '.join(ran[:8])}")


def _latency_aware(c: _Ctx, calib: np.ndarray, keep_fp32: list[str]):
    """--latency-aware-int8: the layers faster in FP32 on this CPU stay FP32 (after any the
    accuracy fallback already keeps in FP32); skipped, with a warning, when quantizing for another
    CPU class, since what is measured here would not hold there."""
    from edgecompress import quantize
    from edgecompress.quant_speed import latency_aware_ptq

    qcfg = replace(c.cfg.quant, exclude_nodes=tuple(c.cfg.quant.exclude_nodes) + tuple(keep_fp32))
    src, dst = c.d / f"{c.fp32_parent}.onnx", c.d / "int8.onnx"
    _, tgt = quantize.resolve_target(qcfg)
    if tgt["target"] != tgt["build_machine_target"]:
        qr = quantize.quantize_ptq(src, dst, calib, qcfg)
        qr.settings.setdefault("warnings", []).append(
            f"--latency-aware-int8 skipped: it measures on this {tgt['build_machine_target']} machine, and the file "
            f"is for {tgt['target']}; run it on a {tgt['target']} machine")
        return qr
    b = c.cfg.bench
    c.log(f"latency-aware INT8: timing every layer as INT8 and as FP32 ({b.threads} thread(s), batch {b.batch})")
    qr, rec = latency_aware_ptq(src, dst, calib, qcfg, threads=b.threads, batch=b.batch,
                                input_shape=tuple(c.lm.input_shape), log=c.log)
    c.stage_results["latency_aware"] = rec
    return qr


def _quantize_inc(c: _Ctx, calib: np.ndarray):
    """Intel Neural Compressor 3.x static INT8 (pt2e) from the parent's PyTorch model, to ONNX;
    with --max-accuracy-drop, INC's accuracy-aware autotune judged on the validation split."""
    import torch

    from edgecompress.inc_backend import quantize_inc
    from edgecompress.quantize import QuantResult

    val = c.splits.val
    use_acc = c.cfg.verify.max_accuracy_drop is not None and val.y is not None

    def val_top1(m) -> float:
        xv, yv = torch.from_numpy(val.x), torch.from_numpy(val.y)
        with torch.no_grad():
            hits = sum(int((m(xv[i : i + 500]).argmax(1) == yv[i : i + 500]).sum()) for i in range(0, len(xv), 500))
        return hits / len(xv)

    rec = quantize_inc(c.fp32_model, c.example, calib, c.d / "int8.onnx",
                       autotune_eval=val_top1 if use_acc else None,
                       max_drop=c.cfg.verify.max_accuracy_drop if use_acc else None)
    return QuantResult(c.d / "int8.onnx", len(calib), {"backend": "inc", "format": "QDQ (INC pt2e)",
                                                       "per_channel": True, "method": "minmax"} | rec)


def _evaluate(c: _Ctx) -> None:
    """Top-1 of every artifact under onnxruntime; INT8 agreement and accuracy gates."""
    import torch

    from edgecompress import bench

    t0 = time.time()
    ev, cfg = c.splits.eval, c.cfg
    preds: dict[str, np.ndarray] = {}
    if ev is not None and ev.y is not None:
        c.log(f"evaluating {len(c.arts)} artifact(s) on {len(ev)} samples with onnxruntime")
        for name, a in c.arts.items():
            sess = bench.make_session(c.d / a["path"], threads=torch.get_num_threads())
            preds[name] = bench.run_batched(sess, ev.x).argmax(1)
            a["top1"] = float((preds[name] == ev.y).mean())
    if "int8" in preds and c.fp32_parent in preds:
        agree = float((preds["int8"] == preds[c.fp32_parent]).mean())
        c.stage_results["quantize"]["agreement_with_fp32"] = agree
        c.gates.append({"name": f"INT8 vs {c.fp32_parent} top-1 agreement", "value": agree,
                        "bound": cfg.verify.min_int8_agreement, "passed": agree >= cfg.verify.min_int8_agreement})
        if cfg.verify.max_accuracy_drop is not None:
            drop = 100 * (c.arts[c.fp32_parent]["top1"] - c.arts["int8"]["top1"])
            c.gates.append({"name": f"INT8 top-1 drop vs {c.fp32_parent} (points)", "value": drop,
                            "bound": cfg.verify.max_accuracy_drop, "passed": drop <= cfg.verify.max_accuracy_drop})
    c.timings["evaluate"] = time.time() - t0


def _benchmark(c: _Ctx) -> None:
    from edgecompress import bench

    t0, b = time.time(), c.cfg.bench
    c.log(f"benchmarking ({b.threads} thread(s), batch {b.batch}, {b.runs} runs)")
    for a in c.arts.values():
        lat = bench.measure_latency(c.d / a["path"], threads=b.threads, batch=b.batch, warmup=b.warmup,
                                    runs=b.runs, input_shape=c.lm.input_shape, seed=c.cfg.seed)
        a |= {"latency_ms_p50": lat.p50_ms, "latency_ms_p90": lat.p90_ms, "latency_ms_mean": lat.mean_ms}
    c.timings["bench"] = time.time() - t0


def _finish(c: _Ctx) -> RunResult:
    from edgecompress import bench
    from edgecompress.manifest import SCHEMA, command_line, render_report, versions

    _evaluate(c)
    _benchmark(c)
    failures = [g["name"] for g in c.gates if not g["passed"]]
    warnings_: list[str] = [*c.stage_results.get("prune", {}).get("warnings", []),
                            *c.stage_results.get("quantize", {}).get("settings", {}).get("warnings", [])]
    int8 = c.arts.get("int8")
    if int8 is not None:
        if failures and int8["path"] == "int8.onnx":
            (c.d / "int8.onnx").rename(c.d / "int8.failed.onnx")
            int8 |= {"path": "int8.failed.onnx", "status": "failed"}
        base = c.arts[c.fp32_parent]
        if int8["latency_ms_p50"] >= base["latency_ms_p50"]:
            hint = ("" if c.cfg.quant.latency_aware or c.cfg.quant.backend != "ort" or "ptq" not in c.stages else
                    "; --latency-aware-int8 keeps in FP32 the layers whose INT8 kernel is the slower one")
            warnings_.append(f"INT8 p50 {int8['latency_ms_p50']:.3f} ms is not below {c.fp32_parent} "
                             f"{base['latency_ms_p50']:.3f} ms on this CPU{hint}")
    for a in c.arts.values():
        p = c.d / a["path"]
        a |= {"bytes": bench.file_bytes(p), "sha256": sha256_file(p)}
    lm, b = c.lm, c.cfg.bench
    manifest = {
        "schema": SCHEMA,
        "status": "failed" if failures else "complete",
        "command": command_line(),
        "model": lm.spec.to_dict() | {"weights": lm.weights, "weights_sha256": lm.weights_sha256,
                                      "input_shape": list(lm.input_shape), "num_classes": lm.num_classes},
        "data": c.splits.description,
        "stages": c.stages,
        "artifacts": c.arts,
        "stage_results": c.stage_results,
        "gates": c.gates,
        "warnings": warnings_,
        "bench": {"threads": b.threads, "batch": b.batch, "warmup": b.warmup, "runs": b.runs},
        "versions": versions(),
        "cpu": bench.cpu_info(),
        "config": c.cfg.to_dict(),
        "seed": c.cfg.seed,
        "timings_s": {k: round(v, 2) for k, v in c.timings.items()},
        "wall_seconds": round(time.time() - c.t_start, 1),
    }
    atomic_write_text(c.d / "report.md", render_report(manifest))
    atomic_write_text(c.d / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last
    for w in warnings_:
        c.log(f"warning: {w}")
    return RunResult(c.d, manifest, 1 if failures else 0, failures)


def _limit(splits, cfg: RunConfig):
    from edgecompress.data import Splits

    rng = np.random.default_rng(cfg.seed + 1)
    train, val, ev = splits.train, splits.val, splits.eval
    if cfg.data.max_train is not None and len(train) > cfg.data.max_train:
        train = train.take(np.sort(rng.choice(len(train), cfg.data.max_train, replace=False)), train.source)
        n_val = max(1, int(cfg.data.max_train * cfg.data.val_fraction))
        if len(val) > n_val:
            val = val.take(np.sort(rng.choice(len(val), n_val, replace=False)), val.source)
    if cfg.data.max_eval is not None and ev is not None and len(ev) > cfg.data.max_eval:
        ev = ev.take(np.sort(rng.choice(len(ev), cfg.data.max_eval, replace=False)), ev.source)
    desc = dict(splits.description) | {"train": len(train), "val": len(val), "eval": 0 if ev is None else len(ev)}
    return Splits(train, val, ev, desc)


def _metadata(lm, classes) -> dict[str, str]:
    from edgecompress.manifest import versions

    return {
        "edgecompress.version": versions().get("edgecompress") or "dev",
        "input.layout": "NCHW",
        "input.shape": json.dumps(list(lm.input_shape)),
        "input.normalization": "float32 in [0,1]: uint8 pixels / 255",
        "classes": json.dumps(list(classes) or [str(i) for i in range(lm.num_classes)]),
        "source.model": lm.spec.ref,
        "source.weights_sha256": lm.weights_sha256 or "",
    }


def _stamp(path: Path, meta: dict[str, str], compact_names: bool, keep_node_names: tuple[str, ...] = ()) -> None:
    from edgecompress.export import finalize_onnx

    finalize_onnx(path, meta, compact_names=compact_names, keep_node_names=set(keep_node_names))


def _sensitivity_table(c: _Ctx) -> Path:
    """--allocation sensitivity without --sensitivity FILE: the table measured on (up to 2000 samples
    of) the validation split, never the eval set, saved in the run as sensitivity.json."""
    from edgecompress.sensitivity import SensitivityConfig, ratios_up_to, sensitivity

    val = c.splits.val
    if val.y is None or not len(val):
        raise BadInput("--allocation sensitivity measures top-1 on the validation split, which needs labelled "
                       "--data; pass such data or a table with --sensitivity FILE (edgecompress sensitivity)")
    val = val.take(np.arange(min(2000, len(val))), val.source)
    imp = c.cfg.prune.importance if c.cfg.prune.importance != "taylor" else "l2"  # no gradients in the sweep
    c.log(f"measuring pruning sensitivity per layer group on {len(val)} validation samples")
    cfg = SensitivityConfig(importance=imp, ratios=ratios_up_to(c.cfg.prune.max_layer_ratio))
    res = sensitivity(c.lm.model, c.example, val, cfg, progress=c.log)
    path = c.d / "sensitivity.json"
    atomic_write_text(path, json.dumps(res, indent=2) + "\n")
    return path


def _save_pruned(path: Path, lm, pr) -> None:
    import torch

    from edgecompress.prune import FORMAT

    buf = io.BytesIO()
    torch.save({"format": FORMAT, "spec": json.dumps(lm.spec.to_dict()), "record": json.dumps(pr.record),
                "input_shape": list(lm.input_shape),
                "state_dict": {k: v.detach().clone() for k, v in pr.model.state_dict().items()}}, buf)
    atomic_write_bytes(path, buf.getvalue())
