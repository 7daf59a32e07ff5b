"""The stages of a run, in order. Each is an object with a ``name`` (its key in the timings), an
``applies(ctx)`` and a ``run(ctx)`` that adds its records (artifacts, gates, stage results) to the
run context. A new stage is a class here and a row in ``runner.STAGES``."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from edgecompress.config import PruneConfig, QuantMode, Stage
from edgecompress.errors import BadInput
from edgecompress.export import check_onnx
from edgecompress.files import atomic_write_text
from edgecompress.models import save_pruned, structural_record
from edgecompress.pipeline.artifacts import fp32_artifact, stamp
from edgecompress.pipeline.context import RunContext
from edgecompress.pipeline.probe import latency_criterion
from edgecompress.prune import count_macs_params, layer_table, prune
from edgecompress.prune.allocation import missing_warning
from edgecompress.prune.sensitivity import SensitivityConfig, ratios_up_to, sensitivity
from edgecompress.quantize import registry
from edgecompress.report import Artifact
from edgecompress.runtime import COMPUTE_OPS, kernel_report
from edgecompress.train.ddp import run_kd
from edgecompress.train.loop import top1


class ExportOriginal:
    name = "export_original"

    def applies(self, ctx: RunContext) -> bool:
        return True

    def run(self, ctx: RunContext) -> None:
        ctx.log("exporting original.onnx")
        fp32_artifact(ctx, "original", ctx.lm.model, None)
        ctx.fp32_model = ctx.lm.model


class PruneDistill:
    """Prune (channels, blocks) and distil from the original, in ``--prune-steps`` rounds; then
    pruned.pt and pruned.onnx (parity-gated)."""

    name = "prune+distill"

    def applies(self, ctx: RunContext) -> bool:
        return Stage.PRUNE in ctx.cfg.plan()

    def run(self, ctx: RunContext) -> None:
        t0 = time.time()
        cfg, p, teacher = ctx.cfg, ctx.cfg.prune, ctx.lm.model
        ctx.log(f"pruning to {p.goal()} ({p.importance}, {p.allocation}, round-to {p.round_to}"
                f"{f', {p.steps} steps' if p.steps > 1 else ''}"
                f"{f', {p.drop_blocks} blocks dropped' if p.drop_blocks else ''})")
        if p.allocation == "sensitivity" and p.sensitivity is None:  # no --sensitivity FILE: measure it here
            p = replace(p, sensitivity=str(_sensitivity_table(ctx)))
        student, history, allocations, warnings_, protected = teacher, [], [], [], {}
        macs0 = count_macs_params(teacher, ctx.example)[0]
        for step in range(1, p.steps + 1):
            # iterative schedule: step i brings the MACs to (1 - ratio * i / steps) of the original
            goal_macs = macs0 * (1 - p.macs_target * step / p.steps)
            now = count_macs_params(student, ctx.example)[0]
            pstep = p if step == 1 else replace(p, drop_blocks=0)  # blocks are dropped once, in the first step
            pr = prune(student, ctx.example, pstep, ratio=max(0.0, 1 - goal_macs / now), latency=_probe(ctx),
                       **_calib(ctx))
            student = pr.model
            allocations.append(pr.allocation)
            for x in pr.protected:  # an iterative schedule meets the same groups at every step
                if x["layer"] not in protected:
                    protected[x["layer"]] = x
                    ctx.log(f"left {x['layer']} unpruned: pruning it breaks the model ({x['reason']})")
            if pr.allocation.get("groups_without_curve"):
                w = missing_warning(pr.allocation["groups_without_curve"])
                if w not in warnings_:  # an iterative schedule meets the same groups at every step
                    warnings_.append(w)
                    ctx.log(f"warning: {w}")
            if step == 1:
                dropped = pr.dropped_blocks
            if Stage.DISTILL in cfg.plan():
                history.append(_distill_round(ctx, student, step, p.steps, pr.macs_after))
        # the record and the summary are relative to the original model, whatever the schedule
        pr.record = structural_record(teacher, student)
        pr.macs_before, pr.params_before = count_macs_params(teacher, ctx.example)
        pr.layers = layer_table(teacher, student)
        pr.dropped_blocks = dropped
        pr.protected = list(protected.values())
        if p.steps > 1 and p.allocation == "sensitivity":
            pr.allocation = {"per_step": allocations}
        ctx.stages.append(Stage.PRUNE)
        ctx.stage_results["prune"] = pr.summary() | _prune_settings(p) | ({"warnings": warnings_} if warnings_ else {})
        ctx.log(f"pruned: MACs {pr.macs_before:,} -> {pr.macs_after:,} ({1 - pr.macs_after / pr.macs_before:.1%} "
                f"removed), params {pr.params_before:,} -> {pr.params_after:,}")
        if history:
            ctx.stages.append(Stage.DISTILL)
            ctx.stage_results["distill"] = _distill_summary(ctx, history)
        ctx.timings["prune+distill"] = time.time() - t0
        save_pruned(ctx.d / "pruned.pt", ctx.lm.spec, tuple(ctx.lm.input_shape), student, pr.record)
        ctx.log("exporting pruned.onnx")
        fp32_artifact(ctx, "pruned", student, "original").checkpoint = "pruned.pt"
        ctx.fp32_parent, ctx.fp32_model = "pruned", student


def _calib(ctx: RunContext) -> dict[str, np.ndarray | None]:
    """Up to 256 calibration samples (the first of PTQ's when it runs): block dropping, Taylor."""
    train = ctx.splits.train
    idx = ctx.calib_idx[:256] if len(ctx.calib_idx) else np.arange(min(256, len(train)))
    return {"calib_x": train.x[idx], "calib_y": None if train.y is None else train.y[idx]}


def _probe(ctx: RunContext):
    """The latency criterion of --target-latency-ms: the file the run ships, with its settings."""
    if ctx.cfg.prune.target_latency_ms is None:
        return None
    quant = ctx.cfg.quant if ctx.cfg.quant_stage() is not None else None
    return latency_criterion(ctx.example, _calib(ctx)["calib_x"], onnx=ctx.cfg.onnx, quant=quant)


def _prune_settings(p: PruneConfig) -> dict[str, Any]:
    return {"importance": p.importance, "allocation": p.allocation, "round_to": p.round_to, "steps": p.steps,
            "macs_target": p.macs_target, "target_params": p.target_params, "target_latency_ms": p.target_latency_ms}


def _distill_round(ctx: RunContext, student: nn.Module, step: int, steps: int, macs: int) -> dict[str, Any]:
    """One KD round of the schedule (``epochs / steps`` epochs); the record of it."""
    td, cfg, ev = time.time(), ctx.cfg, ctx.splits.eval
    after_prune = top1(student, ev) if ctx.labelled_eval else None
    dcfg = replace(cfg.distill, epochs=cfg.distill.epochs / steps)
    ctx.log(f"distilling for {dcfg.epochs:g} epoch(s) (T={dcfg.temperature:g}, alpha={dcfg.alpha:g}, "
            f"lr={dcfg.lr:g}{f', mixup={dcfg.mixup:g}' if dcfg.mixup else ''})"
            f"{f' [step {step}/{steps}]' if steps > 1 else ''}")
    dr = run_kd(cfg, ctx.lm, ctx.splits, student, ctx.lm.model, dcfg, step, ctx.log)
    after = top1(student, ev) if ctx.labelled_eval else None
    if ctx.labelled_eval:
        ctx.log(f"top-1 after pruning {after_prune:.4f}, after distillation {after:.4f}")
    return {"step": step, "macs": macs, "steps": dr.steps,
            "final_loss": dr.final_loss, "val_top1_before": dr.val_top1_before, "val_top1_after": dr.val_top1_after,
            "eval_top1_after_prune": after_prune, "eval_top1_after_distill": after, "best_epoch": dr.best_epoch,
            "val_top1_history": dr.val_history, "stopped_early": dr.stopped_early, "feature_hints": dr.feature_hints,
            "feature_loss_first": dr.feature_loss_first, "feature_loss_last": dr.feature_loss_last,
            "teacher_forward_batches": dr.teacher_forward_batches, "resumed_from_step": dr.resumed_from_step,
            "nproc": dr.nproc, "rank_state_sha256": dr.rank_state_sha256, "seconds": round(time.time() - td, 1)}


def _distill_summary(ctx: RunContext, history: list[dict[str, Any]]) -> dict[str, Any]:
    d = ctx.cfg.distill
    return {"epochs": d.epochs, "steps": sum(h["steps"] for h in history), "final_loss": history[-1]["final_loss"],
            "eval_top1_after_prune": history[0]["eval_top1_after_prune"],
            "eval_top1_after_distill": history[-1]["eval_top1_after_distill"], "schedule": history,
            "patience": d.patience, "best_epoch": history[-1]["best_epoch"],
            "val_top1_history": history[-1]["val_top1_history"],
            "stopped_early": any(h["stopped_early"] for h in history)}


def _sensitivity_table(ctx: RunContext) -> Path:
    """--allocation sensitivity without --sensitivity FILE: the table measured on (up to 2000 samples
    of) the validation split, never the eval set, saved in the run as sensitivity.json."""
    val = ctx.splits.val
    if val.y is None or not len(val):
        raise BadInput("--allocation sensitivity measures top-1 on the validation split, which needs labelled "
                       "--data; pass such data or a table with --sensitivity FILE (edgecompress sensitivity)")
    val = val.take(np.arange(min(2000, len(val))), val.source)
    imp = ctx.cfg.prune.importance if ctx.cfg.prune.importance != "taylor" else "l2"  # no gradients in the sweep
    ctx.log(f"measuring pruning sensitivity per layer group on {len(val)} validation samples")
    scfg = SensitivityConfig(importance=imp, ratios=ratios_up_to(ctx.cfg.prune.max_layer_ratio))
    res = sensitivity(ctx.lm.model, ctx.example, val, scfg, progress=ctx.log)
    path = ctx.d / "sensitivity.json"
    atomic_write_text(path, json.dumps(res, indent=2) + "\n")
    return path


class Quantize:
    """INT8 from the FP32 parent by the quantizer of (mode, backend) in ``quantize.registry``."""

    name = "quantize"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.cfg.quant_stage() is not None

    def run(self, ctx: RunContext) -> None:
        t0, cfg, stage = time.time(), ctx.cfg, ctx.cfg.quant_stage()
        parent, splits = ctx.fp32_parent, ctx.splits
        started = f"{parent} (distilled)" if Stage.DISTILL in ctx.stages else parent  # QAT continues from KD
        job = registry.QuantJob(
            src=ctx.d / f"{parent}.onnx", dst=ctx.d / "int8.onnx", cfg=cfg.quant,
            calib_x=splits.train.x[ctx.calib_idx], val_x=splits.val.x, val_y=splits.val.y,
            max_accuracy_drop=cfg.verify.max_accuracy_drop, threads=cfg.bench.threads, batch=cfg.bench.batch,
            input_shape=tuple(ctx.lm.input_shape), model=ctx.fp32_model, teacher=ctx.lm.model, train=splits.train,
            example=ctx.example, parity_x=ctx.parity_samples(256), qat=cfg.qat, opset=cfg.onnx.opset,
            seed=cfg.seed, started_from=started, log=ctx.log)  # fmt: skip
        out = registry.quantizer_for(QuantMode(stage.value), cfg.quant.backend)(job)
        qr = out.result
        ctx.stage_results.update(out.stage_results)
        ctx.gates.extend(out.gates)
        # the layers kept in FP32 keep their names, so the manifest's lists match the shipped file
        stamp(ctx, qr.path, "int8", tuple(qr.settings.get("exclude_nodes") or ()))
        check_onnx(qr.path)
        kr = kernel_report(qr.path)
        if out.check_float_layers:
            _check_float_layers(qr.path, qr.settings, kr.float_islands)
        ctx.stages.append(stage)
        p = ctx.arts[parent]
        ctx.arts["int8"] = Artifact(path=qr.path.name, macs=p.macs, params=p.params, parent=parent,
                                    int8_op_fraction=kr.int8_op_fraction)
        ctx.stage_results["quantize"] = {"settings": qr.settings, "calib_samples": qr.calib_samples,
                                         "kernels": kr.to_dict()} | out.quantize_record
        ctx.timings[str(stage) if stage == Stage.QAT else "quantize"] = time.time() - t0


def _check_float_layers(path: Path, settings: dict, float_islands: list[str]) -> None:
    """The compute layers asked to stay FP32 must run as float kernels after onnxruntime's
    optimiser (``float_islands`` of the kernel report; they keep their names under
    --compact-names); any that do not are named in a warning (and the manifest)."""
    import onnx

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
