"""Writing the run's ONNX files: export + metadata + the parity gate for FP32 files."""

from __future__ import annotations

import time

import torch.nn as nn

from edgecompress.export import export_onnx, parity
from edgecompress.pipeline.context import RunContext, StopRun
from edgecompress.pipeline.int8 import stamp
from edgecompress.prune import count_macs_params
from edgecompress.report import Artifact, Gate


def fp32_artifact(ctx: RunContext, name: str, model: nn.Module, parent: str | None) -> Artifact:
    """``name``.onnx from ``model``, gated on parity with PyTorch; a failed gate stops the run."""
    t0 = time.time()
    path = ctx.d / f"{name}.onnx"
    export_onnx(model, ctx.example, path, ctx.cfg.onnx)
    stamp(ctx, path, name)
    par = parity(model, path, ctx.parity_samples(64), ctx.cfg.verify.parity_tol)
    ctx.gates.append(Gate(name=f"parity {name}.onnx vs PyTorch (max-abs logit)", value=par.max_abs, bound=par.tol,
                          passed=par.passed))
    macs, params = count_macs_params(model, ctx.example)
    art = ctx.arts[name] = Artifact(path=path.name, macs=macs, params=params, parent=parent, parity=par.to_dict(),
                                    status="ok" if par.passed else "failed")
    ctx.timings[f"export_{name}"] = time.time() - t0
    if not par.passed:
        path.rename(ctx.d / f"{name}.failed.onnx")
        art.path = f"{name}.failed.onnx"
        ctx.log(f"gate failed: {name}.onnx differs from PyTorch by {par.max_abs:.3g} (bound {par.tol:.3g}); "
                "try --exporter torchscript")
        raise StopRun()
    return art
