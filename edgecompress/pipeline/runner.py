"""Runs the stages in order and records each result:

    load model + data -> export original.onnx (parity) -> prune -> distill -> export
    pruned.onnx (parity) + pruned.pt -> INT8 (the registry's quantizer) -> evaluate (top-1 under
    onnxruntime, agreement, gates) -> benchmark -> manifest.json + report.md

Everything is written into a staging directory that replaces ``--out`` only when complete.
A failing gate still delivers the directory (for inspection) but with ``status: failed``, the
failed file renamed to ``<name>.failed.onnx`` (never under a deliverable name), and exit 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from edgecompress.config import RunConfig
from edgecompress.pipeline import rundir
from edgecompress.pipeline.context import RunContext, RunResult, StopRun
from edgecompress.pipeline.device import run_meter
from edgecompress.pipeline.inputs import load_inputs
from edgecompress.pipeline.stages import ExportOriginal, PruneDistill, Quantize
from edgecompress.pipeline.verify import Benchmark, Evaluate, write_manifest
from edgecompress.train import resume

STAGES = (ExportOriginal(), PruneDistill(), Quantize())  # each may stop the run (StopRun)
CLOSING = (Evaluate(), Benchmark())  # run on whatever the stages delivered


def _log(msg: str) -> None:
    print(f"edgecompress: {msg}", file=sys.stderr, flush=True)


def run(cfg: RunConfig, *, log: Callable[[str], None] = _log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    stage_dir = rundir.staging_dir(out)
    if not cfg.resume:
        resume.clear(out)  # a fresh run: checkpoints of an interrupted one would only mislead
    try:
        with run_meter(cfg, log) as (cfg, meter):
            ctx = load_inputs(cfg, stage_dir, log, t_start)
            ctx.meter = meter
            log(f"stages: {' -> '.join(cfg.plan()) or 'export only'}")
            result = _run_stages(ctx)
        rundir.finalize(stage_dir, out)
    except BaseException:
        rundir.discard(stage_dir)  # the KD checkpoints (train.resume) stay for --resume
        raise
    resume.clear(out)
    result.out_dir = out
    log(f"{result.manifest['status']}: wrote {out}/ (manifest.json, report.md) in {time.time() - t_start:.0f} s")
    return result


def _run_stages(ctx: RunContext) -> RunResult:
    try:
        for stage in STAGES:
            if stage.applies(ctx):
                stage.run(ctx)
    except StopRun:
        pass
    for closing in CLOSING:
        t0 = time.time()
        closing.run(ctx)
        ctx.timings[closing.name] = time.time() - t0
    return write_manifest(ctx)
