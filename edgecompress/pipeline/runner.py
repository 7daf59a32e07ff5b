"""Runs the stages in order and records each result:

    load model + data -> export original.onnx (parity) -> prune -> distill -> export
    pruned.onnx (parity) + pruned.pt -> INT8 (the registry's quantizer) -> evaluate (top-1 under
    onnxruntime, agreement, gates) -> benchmark -> manifest.json + report.md

Everything is written into a staging directory that replaces ``--out`` only when complete.
A failing gate still delivers the directory (for inspection) but with ``status: failed``, the
failed file renamed to ``<name>.failed.onnx`` (never under a deliverable name), and exit 1.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgecompress.config import RunConfig
from edgecompress.errors import ConfigError
from edgecompress.pipeline import rundir
from edgecompress.pipeline.context import RunContext, RunResult, StopRun, stderr_log
from edgecompress.pipeline.device import run_meter
from edgecompress.pipeline.inputs import load_inputs
from edgecompress.pipeline.int8 import Quantize
from edgecompress.pipeline.stages import ExportOriginal, PruneDistill
from edgecompress.pipeline.verify import close
from edgecompress.train import device as devices
from edgecompress.train import distributed, resume

STAGES = (ExportOriginal(), PruneDistill(), Quantize())  # each may stop the run (StopRun); then verify.close


def run(cfg: RunConfig, *, log: Callable[[str], None] = stderr_log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    device, launch = devices.resolve(cfg.device), distributed.from_env()  # a missing GPU fails here, in one line
    if launch is not None:
        if cfg.nproc > 1:
            raise ConfigError(f"--nproc {cfg.nproc} under torchrun: torchrun already started the processes; drop --nproc")
        device = distributed.init(launch, device)
        if not launch.leader:
            return _follow(cfg, launch, str(device), t_start)
        log(f"torchrun: rank 0 of {launch.world} ({'nccl' if device.type == 'cuda' else 'gloo'}); only this rank "
            "writes artifacts")
    try:
        return _lead(cfg, log, str(device), launch, t_start)
    finally:
        if launch is not None:
            distributed.shutdown()


def _lead(cfg: RunConfig, log: Callable[[str], None], device: str, launch, t_start: float) -> RunResult:
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    if not cfg.resume:
        resume.clear(out)  # a fresh run: checkpoints of an interrupted one would only mislead
    def work(d: Path) -> RunResult:
        with run_meter(cfg, log) as (run_cfg, meter):
            ctx = load_inputs(run_cfg, d, log, t_start)
            ctx.device, ctx.launch, ctx.meter = device, launch, meter
            return _run_stages(ctx)

    # a failed run leaves the KD checkpoints (train.resume) for --resume; a delivered one clears them
    result = rundir.deliver(out, work, log=log, t_start=t_start)
    resume.clear(out)
    return result


def _follow(cfg: RunConfig, launch, device: str, t_start: float) -> RunResult:
    """A torchrun rank > 0: the inputs, rank 0's pruned structure, its shard of distillation; no files."""
    try:
        with tempfile.TemporaryDirectory(prefix=f"edgecompress-rank{launch.rank}-") as tmp:
            ctx = load_inputs(cfg, Path(tmp), lambda m: None, t_start)
            ctx.device, ctx.launch = device, launch
            if PruneDistill().applies(ctx):
                PruneDistill().run(ctx)
    finally:
        distributed.shutdown()
    return RunResult(out_dir=Path(tmp), manifest={}, exit_code=0)


def _run_stages(ctx: RunContext) -> RunResult:
    ctx.log(f"stages: {' -> '.join(ctx.cfg.plan()) or 'export only'}")
    try:
        for stage in STAGES:
            if stage.applies(ctx):
                stage.run(ctx)
    except StopRun:
        pass
    return close(ctx)
