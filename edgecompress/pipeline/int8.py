"""The INT8 stage, whatever the run starts from (a PyTorch model or an ONNX file): the calibration
samples, the quantizer of (mode, backend) from ``quantize.registry``, the metadata stamped on the
files, onnx.checker and the kernel report. No torch here: the ONNX-input pipeline runs it as is."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import QuantConfig, QuantMode, RunConfig, Stage
from edgecompress.config.stages import DEFAULT_CALIB_SAMPLES
from edgecompress.data import Splits, as_float
from edgecompress.data.dataset import subset
from edgecompress.errors import BadInput
from edgecompress.export import check_onnx, finalize_onnx
from edgecompress.pipeline.context import RunRecord
from edgecompress.quantize import registry
from edgecompress.quantize.guard import mixed_range_guard
from edgecompress.report import Artifact
from edgecompress.runtime import COMPUTE_OPS, kernel_report


def calibration_count(requested: int | None, available: int) -> tuple[int, str]:
    """How many training samples calibrate INT8, and where that number comes from (for the
    manifest): the user's ``--calib-samples`` (more than the data holds is an error), else the
    default, capped at what the data holds."""
    if requested is not None:
        if requested > available:
            raise BadInput(f"--calib-samples {requested} exceeds the {available} training samples; lower "
                           "--calib-samples or pass more data")
        return requested, "--calib-samples"
    if available < DEFAULT_CALIB_SAMPLES:
        return available, f"default {DEFAULT_CALIB_SAMPLES} capped at the {available} training samples"
    return DEFAULT_CALIB_SAMPLES, f"default {DEFAULT_CALIB_SAMPLES}"


def calibration_indices(cfg: RunConfig, splits: Splits, log: Callable[[str], None]) -> tuple[np.ndarray, str]:
    """The seeded calibration samples of a PTQ plan (indices into the training split) and where their
    number comes from; none otherwise."""
    if Stage.PTQ not in cfg.plan():
        return np.zeros(0, int), ""
    n, source = calibration_count(cfg.quant.calib_samples, len(splits.train))
    if n < DEFAULT_CALIB_SAMPLES and cfg.quant.calib_samples is None:
        log(f"calibrating INT8 on all {n} training samples (fewer than the default --calib-samples "
            f"{DEFAULT_CALIB_SAMPLES})")
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(len(splits.train), n, replace=False)), source


def stamp(ctx: RunRecord, path: Path, name: str, keep_node_names: tuple[str, ...] = ()) -> None:
    """Metadata on the file; with --compact-names short tensor names (``keep_node_names`` keep theirs)."""
    finalize_onnx(path, ctx.meta | {"edgecompress.artifact": name}, compact_names=ctx.cfg.onnx.compact_names,
                  keep_node_names=set(keep_node_names))


class Quantize:
    """INT8 from the FP32 parent by the quantizer of (mode, backend) in ``quantize.registry``."""

    name = "quantize"

    def applies(self, ctx: RunRecord) -> bool:
        return ctx.cfg.quant_stage() is not None

    def run(self, ctx: RunRecord) -> None:
        t0, cfg, stage = time.time(), ctx.cfg, ctx.cfg.quant_stage()
        parent, splits = ctx.fp32_parent, ctx.splits
        started = f"{parent} (distilled)" if Stage.DISTILL in ctx.stages else parent  # QAT continues from KD
        qcfg, guard = _range_guard(ctx, stage)
        job = registry.QuantJob(
            src=ctx.d / f"{parent}.onnx", dst=ctx.d / "int8.onnx", cfg=qcfg,
            calib_x=as_float(subset(splits.train.x, ctx.calib_idx)), val_x=as_float(splits.val.x),
            val_y=splits.val.y if ctx.classifier else None,
            max_accuracy_drop=cfg.verify.max_accuracy_drop, threads=cfg.bench.threads, batch=cfg.bench.batch,
            input_shape=tuple(ctx.input_shape), meter=ctx.meter, model_macs=ctx.arts.get("original", ctx.arts[parent]).macs,
            parity_x=ctx.parity_samples(256), qat=cfg.qat,
            opset=cfg.onnx.opset, seed=cfg.seed, started_from=started, log=ctx.log, **ctx.torch_inputs())  # fmt: skip
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
                                         "calib_samples_source": ctx.calib_source or None,
                                         "kernels": kr.to_dict()} | out.quantize_record
        if guard is not None:
            ctx.stage_results["quantize"]["mixed_range_guard"] = guard
        ctx.timings[str(stage) if stage == Stage.QAT else "quantize"] = time.time() - t0


def _range_guard(ctx: RunRecord, stage: Stage) -> tuple[QuantConfig, dict[str, Any] | None]:
    """The mixed-range guard (quantize.guard) for static onnxruntime PTQ of a model that is not one
    classifier output: the nodes it names join exclude_nodes."""
    q = ctx.cfg.quant
    if not q.range_guard or ctx.classifier or stage != Stage.PTQ or q.backend != "ort":
        return q, None
    rec = mixed_range_guard(ctx.d / f"{ctx.fp32_parent}.onnx", as_float(subset(ctx.splits.train.x, ctx.calib_idx)))
    for g in rec["outputs"]:
        ctx.log(f"mixed-range guard: output {g['output']} has channel ranges {g['narrowest_range']:.3g} to "
                f"{g['widest_range']:.3g} ({g['ratio']:.0f}x); {len(g['nodes'])} node(s) feeding it stay float")
    if not rec["nodes"]:
        return q, rec
    return replace(q, exclude_nodes=tuple(q.exclude_nodes) + tuple(n for n in rec["nodes"]
                                                                 if n not in q.exclude_nodes)), rec


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
