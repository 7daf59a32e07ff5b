"""The pruned structure chosen by measured latency (``--structure``), before pruning.

At one budget (``--prune-ratio`` / ``--target-params``) the file's speed still depends on the
shape of what is kept: channel counts that the INT8 kernels run at full rate, and fewer, wider
blocks rather than many thin ones. ``fastest``:

1. the channel multiple (``--round-to``) is read from the device's width table
   (``quantize.widths``: a 3x3 conv timed at 8..128 channels, measured once, cached); a model
   too narrow to meet the budget at that multiple gets the next finer one;
2. the model is pruned to the budget with 0, 1, 2 and 3 residual blocks dropped first (as many
   as it has), at that multiple and at the next coarser one (coarser rounding steps past the
   budget by more: fewer MACs, often the faster file); each candidate is exported and quantized
   as the run ships it (export and quantization settings, ``--bench-on`` device) and timed, and
   the fastest is kept. Every candidate meets the budget; how far past it each went is recorded.

The run then prunes that candidate again (same settings, same structure: pruning is
deterministic) under its bounds and structural-equivalence gate. ``auto`` (the default) is
``fastest`` for models of at least ``AUTO_MIN_MACS`` MACs whose ``--round-to`` and
``--drop-blocks`` are left at their defaults - where the search costs little next to the run
and latency is what the user is after - and ``fixed`` otherwise. Every candidate, the table's
figures and the choice are recorded (``stage_results["prune"]["structure"]``) and reported.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgecompress.config import PruneConfig, QuantMode
from edgecompress.config.enums import Allocation, LatencyAware, Structure
from edgecompress.config.stages import LARGE_MODEL_MACS
from edgecompress.errors import BadInput, one_line
from edgecompress.pipeline.context import RunContext
from edgecompress.pipeline.probe import latency_criterion
from edgecompress.prune import prune
from edgecompress.prune.bounds import bounded
from edgecompress.prune.depth import residual_blocks
from edgecompress.prune.tp_adapter import count_macs_params
from edgecompress.quantize.widths import CHOICES, width_table

AUTO_MIN_MACS = LARGE_MODEL_MACS
MAX_DROPPED = 3  # candidates: 0..3 residual blocks dropped
DEFAULT_ROUND_TO, DEFAULT_DROP = 8, 0


def choose(ctx: RunContext, p: PruneConfig, calib: dict[str, np.ndarray | None]) -> tuple[PruneConfig, dict[str, Any]]:
    """``p`` with ``round_to`` and ``drop_blocks`` decided, and the record of the decision."""
    mode = _mode(ctx, p)
    if mode["mode"] == Structure.FIXED:
        return p, mode
    quant = ctx.cfg.quant if ctx.cfg.quant_stage() is not None else None
    int8 = quant is not None and quant.mode != QuantMode.DYNAMIC
    table = width_table(ctx.meter, threads=1, int8=int8, log=ctx.log)
    g = table.granularity()
    eff = table.efficiency()
    ctx.log(f"structure: round-to {g} from the width table of {table.device} ("
            + ", ".join(f"multiples of {k}: {v:.0f} MMAC/ms" for k, v in eff.items())
            + (", cached" if table.cached else "") + ")")
    blocks = residual_blocks(ctx.lm.model, ctx.example)
    # candidates are timed as plain INT8 files: --latency-aware-int8's per-layer choice (minutes per
    # file) is made once, on the chosen structure
    timed_as = replace(quant, latency_aware=LatencyAware.OFF) if quant is not None else None
    probe = latency_criterion(ctx.example, calib["calib_x"], onnx=ctx.cfg.onnx, quant=timed_as, meter=ctx.meter)
    candidates: list[dict[str, Any]] = []
    multiples = [c for c in CHOICES if g <= c <= 2 * g]  # the table's multiple and the next coarser one
    finer = [c for c in CHOICES if c < g][::-1]  # for a model too narrow for g: the finer multiples
    for n in range(min(MAX_DROPPED, len(blocks)) + 1):
        for r in multiples:
            pr, why = _candidate(ctx, p, calib, r, n)
            fallback = list(finer)
            while pr is None and r == g and fallback:
                r = fallback.pop(0)
                pr, why = _candidate(ctx, p, calib, r, n)
            if pr is None:  # this depth cannot meet the budget (or breaks the model): not a candidate
                candidates.append({"drop_blocks": n, "round_to": r, "skipped": why})
                ctx.log(f"structure: {n} block(s) dropped, round-to {r}: skipped ({why[:120]})")
                continue
            p50 = probe(pr.model, repeats=3)
            candidates.append({"drop_blocks": n, "round_to": r, "p50_ms": round(p50, 4),
                               "macs_removed": round(1 - pr.macs_after / pr.macs_before, 4),
                               "params_removed": round(1 - pr.params_after / pr.params_before, 4)})
            ctx.log(f"structure: {n} block(s) dropped, round-to {r}: {candidates[-1]['macs_removed']:.1%} of MACs "
                    f"removed, {'INT8' if int8 else 'FP32'} p50 {p50:.3f} ms")
    timed = [c for c in candidates if "p50_ms" in c]
    if not timed:
        raise BadInput(f"--structure {mode['mode']}: no candidate meets {p.goal()} "
                       f"({candidates[0]['skipped']}); pass --structure fixed and lower the target")
    best = min(timed, key=lambda c: c["p50_ms"])
    chosen = replace(p, round_to=best["round_to"], drop_blocks=best["drop_blocks"])
    ctx.log(f"structure: {best['drop_blocks']} block(s) dropped and round-to {best['round_to']}, the fastest "
            f"({best['p50_ms']:.3f} ms, {probe.description})")
    return chosen, mode | {"round_to": best["round_to"], "drop_blocks": best["drop_blocks"], "candidates": candidates,
                           "measured": probe.description, "width_table": table.to_dict()}


def _candidate(ctx: RunContext, p: PruneConfig, calib: dict[str, np.ndarray | None], r: int,
               n: int) -> tuple[Any, str]:
    """The model pruned to the budget with round-to ``r`` after dropping ``n`` blocks, or why not."""
    cand = replace(p, round_to=r, drop_blocks=n, structure=Structure.FIXED)
    try:
        with bounded(f"structure candidate ({n} blocks dropped, round-to {r})", seconds=p.max_seconds,
                     memory_fraction=p.max_memory, way_out="pass --structure fixed"):
            return prune(ctx.lm.model, ctx.example, cand, device=ctx.device, **calib), ""
    except BadInput as e:
        return None, one_line(e, 200)


def _mode(ctx: RunContext, p: PruneConfig) -> dict[str, Any]:
    """fixed or fastest, and why."""
    if p.structure == Structure.FIXED:
        return {"mode": Structure.FIXED, "why": "--structure fixed"}
    if p.structure == Structure.FASTEST:
        return {"mode": Structure.FASTEST, "why": "--structure fastest"}
    if p.target_latency_ms is not None or p.steps > 1 or p.allocation == Allocation.SENSITIVITY:
        return {"mode": Structure.FIXED, "why": "auto: the latency target, iterative schedule or sensitivity "
                                                "allocation decides the structure"}
    if (p.round_to, p.drop_blocks) != (DEFAULT_ROUND_TO, DEFAULT_DROP):
        return {"mode": Structure.FIXED, "why": "auto: --round-to / --drop-blocks given"}
    macs = count_macs_params(ctx.lm.model, ctx.example)[0]
    if macs < AUTO_MIN_MACS:
        return {"mode": Structure.FIXED, "why": f"auto: {macs / 1e6:.0f}M MACs, below the {AUTO_MIN_MACS / 1e6:.0f}M "
                                                "where the measured search pays"}
    return {"mode": Structure.FASTEST, "why": f"auto: {macs / 1e6:.0f}M MACs"}
