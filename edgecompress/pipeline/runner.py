"""Runs the stages in order and records each result:

    load model + data -> export original.onnx (parity) -> prune -> distill -> export
    pruned.onnx (parity) + pruned.pt -> INT8 (the registry's quantizer) -> evaluate (top-1 under
    onnxruntime, agreement, gates) -> benchmark -> manifest.json + report.md

Everything is written into a staging directory that replaces ``--out`` only when complete.
A failing gate still delivers the directory (for inspection) but with ``status: failed``, the
failed file renamed to ``<name>.failed.onnx`` (never under a deliverable name), and exit 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgecompress.config import RunConfig
from edgecompress.pipeline import rundir
from edgecompress.pipeline.context import RunContext, RunResult, StopRun, stderr_log
from edgecompress.pipeline.inputs import load_inputs
from edgecompress.pipeline.int8 import Quantize
from edgecompress.pipeline.stages import ExportOriginal, PruneDistill
from edgecompress.pipeline.verify import close
from edgecompress.train import resume

STAGES = (ExportOriginal(), PruneDistill(), Quantize())  # each may stop the run (StopRun); then verify.close


def run(cfg: RunConfig, *, log: Callable[[str], None] = stderr_log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    if not cfg.resume:
        resume.clear(out)  # a fresh run: checkpoints of an interrupted one would only mislead
    # a failed run leaves the KD checkpoints (train.resume) for --resume; a delivered one clears them
    result = rundir.deliver(out, lambda d: _run_stages(load_inputs(cfg, d, log, t_start)), log=log, t_start=t_start)
    resume.clear(out)
    return result


def _run_stages(ctx: RunContext) -> RunResult:
    ctx.log(f"stages: {' -> '.join(ctx.cfg.plan()) or 'export only'}")
    try:
        for stage in STAGES:
            if stage.applies(ctx):
                stage.run(ctx)
    except StopRun:
        pass
    return close(ctx)
