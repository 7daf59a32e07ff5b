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

from edgecompress.config import PruneConfig, Stage
from edgecompress.data import as_float
from edgecompress.errors import BadInput
from edgecompress.files import atomic_write_text
from edgecompress.models import save_pruned, structural_record
from edgecompress.pipeline.artifacts import fp32_artifact
from edgecompress.pipeline.context import RunContext
from edgecompress.pipeline.probe import latency_criterion
from edgecompress.pipeline.prune_step import prune_step
from edgecompress.pipeline.structure import choose as choose_structure
from edgecompress.prune import count_macs_params, layer_table
from edgecompress.prune.allocation import missing_warning
from edgecompress.prune.sensitivity import SensitivityConfig, ratios_up_to, sensitivity
from edgecompress.train import distributed
from edgecompress.train.augment_policy import augment_policy
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
        p, structure = choose_structure(ctx, p, _calib(ctx))
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
            pr = prune_step(ctx, student, pstep, step, ratio=max(0.0, 1 - goal_macs / now), latency=_probe(ctx),
                            device=ctx.device, **_calib(ctx))
            student = pr.model
            if ctx.launch is not None:  # torchrun: every rank trains rank 0's structure, not its own pruning's
                student = distributed.broadcast_student(teacher, student, ctx.lm.spec)
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
        if ctx.follower:  # torchrun: rank 0 writes the pruned model and goes on; this rank is done
            return
        # the record and the summary are relative to the original model, whatever the schedule
        pr.record = structural_record(teacher, student)
        pr.macs_before, pr.params_before = count_macs_params(teacher, ctx.example)
        pr.layers = layer_table(teacher, student)
        pr.dropped_blocks = dropped
        pr.protected = list(protected.values())
        if p.steps > 1 and p.allocation == "sensitivity":
            pr.allocation = {"per_step": allocations}
        ctx.stages.append(Stage.PRUNE)
        ctx.stage_results["prune"] = (pr.summary() | _prune_settings(p) | {"structure": structure}
                                      | ({"warnings": warnings_} if warnings_ else {}))
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
    return {"calib_x": as_float(train.x[idx]), "calib_y": None if train.y is None or not ctx.classifier else train.y[idx]}


def _probe(ctx: RunContext):
    """The latency criterion of --target-latency-ms: the file the run ships, with its settings."""
    if ctx.cfg.prune.target_latency_ms is None:
        return None
    quant = ctx.cfg.quant if ctx.cfg.quant_stage() is not None else None
    return latency_criterion(ctx.example, _calib(ctx)["calib_x"], onnx=ctx.cfg.onnx, quant=quant, meter=ctx.meter)


def _prune_settings(p: PruneConfig) -> dict[str, Any]:
    return {"importance": p.importance, "allocation": p.allocation, "round_to": p.round_to,
            "round_to_by_kind": list(p.round_to_by_kind), "steps": p.steps, "macs_target": p.macs_target, "target_params": p.target_params, "target_latency_ms": p.target_latency_ms}


def _distill_round(ctx: RunContext, student: nn.Module, step: int, steps: int, macs: int) -> dict[str, Any]:
    """One KD round of the schedule (``epochs / steps`` epochs); the record of it."""
    td, cfg, ev = time.time(), ctx.cfg, ctx.splits.eval
    after_prune = top1(student, ev) if ctx.labelled_eval else None
    dcfg = replace(cfg.distill, epochs=cfg.distill.epochs / steps)
    ctx.log(f"distilling for {dcfg.epochs:g} epoch(s) (T={dcfg.temperature:g}, alpha={dcfg.alpha:g}, "
            f"lr={dcfg.lr:g}{f', mixup={dcfg.mixup:g}' if dcfg.mixup else ''})"
            f"{f' [step {step}/{steps}]' if steps > 1 else ''}")
    aug = augment_policy(ctx.splits.train.x.shape[1:], dcfg.augment_shift, dcfg.augment_flip)  # as distill() applies
    if (aug.shift, aug.flip) != (dcfg.augment_shift, dcfg.augment_flip):
        ctx.log(f"KD augmentation: {aug.reason}")
    dr = run_kd(cfg, ctx.lm, ctx.splits, student, ctx.lm.model, dcfg, step, ctx.log, device=ctx.device)
    after = top1(student, ev) if ctx.labelled_eval else None
    if ctx.labelled_eval:
        ctx.log(f"top-1 after pruning {after_prune:.4f}, after distillation {after:.4f}")
    return {"step": step, "macs": macs, "steps": dr.steps,
            "final_loss": dr.final_loss, "val_top1_before": dr.val_top1_before, "val_top1_after": dr.val_top1_after,
            "eval_top1_after_prune": after_prune, "eval_top1_after_distill": after, "best_epoch": dr.best_epoch,
            "val_top1_history": dr.val_history, "stopped_early": dr.stopped_early, "feature_hints": dr.feature_hints,
            "feature_loss_first": dr.feature_loss_first, "feature_loss_last": dr.feature_loss_last,
            "teacher_forward_batches": dr.teacher_forward_batches, "resumed_from_step": dr.resumed_from_step,
            "nproc": dr.nproc, "rank_state_sha256": dr.rank_state_sha256, "seconds": round(time.time() - td, 1),
            "augmentation": aug.to_dict()}


def _distill_summary(ctx: RunContext, history: list[dict[str, Any]]) -> dict[str, Any]:
    d = ctx.cfg.distill
    return {"epochs": d.epochs, "steps": sum(h["steps"] for h in history), "final_loss": history[-1]["final_loss"],
            "eval_top1_after_prune": history[0]["eval_top1_after_prune"],
            "eval_top1_after_distill": history[-1]["eval_top1_after_distill"], "schedule": history,
            "patience": d.patience, "best_epoch": history[-1]["best_epoch"],
            "val_top1_history": history[-1]["val_top1_history"],
            "stopped_early": any(h["stopped_early"] for h in history), "augmentation": history[-1]["augmentation"]}


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
    res = sensitivity(ctx.lm.model, ctx.example, val, scfg, progress=ctx.log, device=ctx.device)
    path = ctx.d / "sensitivity.json"
    atomic_write_text(path, json.dumps(res, indent=2) + "\n")
    return path
