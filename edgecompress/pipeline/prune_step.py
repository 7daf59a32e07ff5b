"""One pruning step of a run, guarded: bounded in time and memory (``prune.bounds``), and checked
for structural equivalence (``prune.equivalence``) right after pruning, before any distillation
can hide a miswired layer. A step that fails the check is a failed gate: the run stops and
delivers what exists as failed (exit 1), naming the layer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import PruneConfig
from edgecompress.pipeline.context import RunContext, StopRun
from edgecompress.prune import PruneResult, prune
from edgecompress.prune.bounds import bounded
from edgecompress.prune.equivalence import check_equivalence, record_removals
from edgecompress.report import Gate

EQUIVALENCE_SAMPLES = 16  # of the eval set (parity samples)
WAY_OUT = ("leave the slow layers out with --ignore NAME, use a smaller --input-shape, lower --prune-ratio, "
           "or raise --prune-max-seconds / --prune-max-memory (0 = no bound)")


def prune_step(ctx: RunContext, student: nn.Module, p: PruneConfig, step: int, **kwargs) -> PruneResult:
    """``prune(student, ctx.example, p, **kwargs)`` as step ``step`` of ``p.steps``, bounded and checked."""
    label = f"pruning step {step}/{p.steps}" if p.steps > 1 else "pruning"
    with bounded(label, seconds=p.max_seconds, memory_fraction=p.max_memory, way_out=WAY_OUT), \
            record_removals() as removals:
        pr = prune(student, ctx.example, p, **kwargs)
    x = torch.from_numpy(np.ascontiguousarray(ctx.parity_samples(EQUIVALENCE_SAMPLES), dtype=np.float32))
    eq = check_equivalence(student, pr.model, removals, x, step=step,
                           dropped=[d["name"] for d in pr.dropped_blocks])
    ctx.stage_results.setdefault("equivalence", []).append(eq.to_dict())
    if eq.status == "not applicable":
        ctx.log(f"structural check of {label} not applicable: {eq.reason}")
        return pr
    where = f", first differs at {eq.layer}" if eq.layer else ""
    ctx.gates.append(Gate(name=f"{label}: pruned = original with the removed channels zeroed (max-abs logit{where})",
                          value=eq.max_abs if eq.max_abs is not None else -1.0,
                          bound=eq.bound if eq.bound is not None else 0.0, passed=eq.status == "held"))
    if eq.status == "failed":
        ctx.log(f"gate failed: {label} miswired {eq.layer}: the pruned model differs from the original with the "
                f"removed channels zeroed (max-abs {eq.max_abs:.3g}, bound {eq.bound:.3g}); Torch-Pruning mapped "
                f"the cut channels wrongly into {eq.layer}; leave the layer feeding it out with --ignore NAME")
        raise StopRun()
    return pr
