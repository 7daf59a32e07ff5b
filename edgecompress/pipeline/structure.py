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
from edgecompress.config.enums import Allocation, LatencyAware, LayerKind, Structure
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
    tables = {k: width_table(ctx.meter, threads=1, int8=int8, log=ctx.log, kind=k)
              for k in (LayerKind.DENSE, *sorted(layer_kinds(ctx.lm.model) - {LayerKind.DENSE}))}
    table = tables[LayerKind.DENSE]
    g = table.granularity()
    for k, t in tables.items():
        ctx.log(f"structure: {k} convs round to {t.granularity()} by the width table of {t.device} ("
                + ", ".join(f"multiples of {m}: {v:.0f} MMAC/ms" for m, v in t.efficiency().items())
                + (", cached" if t.cached else "") + ")")
    # per kind, when the kinds' tables disagree: each pruning group rounds to its kind's multiple (one
    # more candidate, at the depth of the fastest uniform one)
    by_kind = {str(k): t.granularity() for k, t in tables.items()}
    per_kind = tuple(f"{k}={m}" for k, m in by_kind.items()) if len(set(by_kind.values())) > 1 else ()
    blocks = residual_blocks(ctx.lm.model, ctx.example)
    # candidates are timed as plain INT8 files: --latency-aware-int8's per-layer choice (minutes per
    # file) is made once, on the chosen structure
    timed_as = replace(quant, latency_aware=LatencyAware.OFF) if quant is not None else None
    probe = latency_criterion(ctx.example, calib["calib_x"], onnx=ctx.cfg.onnx, quant=timed_as, meter=ctx.meter)
    candidates: list[dict[str, Any]] = []
    multiples = [c for c in CHOICES if g <= c <= 2 * g]  # the table's multiple and the next coarser one
    finer = [c for c in CHOICES if c < g][::-1]  # for a model too narrow for g: the finer multiples
    timed_shapes: dict[tuple, dict[str, Any]] = {}  # pruned shapes -> the candidate that timed them

    def add(n: int, r: int, kinds: tuple[str, ...] = ()) -> None:
        pr, why = _candidate(ctx, p, calib, r, n, kinds)
        fallback = list(finer)
        while pr is None and r == g and not kinds and fallback:
            r = fallback.pop(0)
            pr, why = _candidate(ctx, p, calib, r, n)
        what = f"{n} block(s) dropped, " + (f"round-to {r}" if not kinds else "round-to per kind " + ", ".join(kinds))
        rec: dict[str, Any] = {"drop_blocks": n, "round_to": r} | ({"round_to_by_kind": list(kinds)} if kinds else {})
        if pr is None:  # this depth cannot meet the budget (or breaks the model): not a candidate
            candidates.append(rec | {"skipped": why})
            ctx.log(f"structure: {what}: skipped ({why[:120]})")
            return
        shapes = _shapes(pr.model)
        same = timed_shapes.get(shapes)
        p50 = same["p50_ms"] if same is not None else probe(pr.model, repeats=3)
        candidates.append(rec | {"p50_ms": round(p50, 4), "macs_removed": round(1 - pr.macs_after / pr.macs_before, 4),
                                 "params_removed": round(1 - pr.params_after / pr.params_before, 4)}
                          | ({"same_shapes_as": candidates.index(same)} if same is not None else {}))
        timed_shapes.setdefault(shapes, candidates[-1])
        ctx.log(f"structure: {what}: {candidates[-1]['macs_removed']:.1%} of MACs removed, "
                + (f"{'INT8' if int8 else 'FP32'} p50 {p50:.3f} ms" if same is None else
                   f"the same layer widths as candidate {candidates.index(same) + 1} (not timed again)"))

    for n in range(min(MAX_DROPPED, len(blocks)) + 1):
        for r in multiples:
            add(n, r)
    if per_kind and any("p50_ms" in c for c in candidates):  # then per kind, at the fastest depth
        add(min((c for c in candidates if "p50_ms" in c), key=lambda c: c["p50_ms"])["drop_blocks"],
            by_kind[LayerKind.DENSE], per_kind)
    timed = [c for c in candidates if "p50_ms" in c]
    if not timed:
        raise BadInput(f"--structure {mode['mode']}: no candidate meets {p.goal()} "
                       f"({candidates[0]['skipped']}); pass --structure fixed and lower the target")
    best = min(timed, key=lambda c: c["p50_ms"])  # the first of equals: uniform before per kind, fewer blocks first
    kinds = tuple(best.get("round_to_by_kind", ()))
    chosen = replace(p, round_to=best["round_to"], drop_blocks=best["drop_blocks"], round_to_by_kind=kinds)
    ctx.log(f"structure: {best['drop_blocks']} block(s) dropped and round-to "
            + (", ".join(kinds) if kinds else str(best["round_to"]))
            + f", the fastest ({best['p50_ms']:.3f} ms, {probe.description})")
    return chosen, mode | {"round_to": best["round_to"], "round_to_by_kind": list(kinds),
                           "drop_blocks": best["drop_blocks"], "candidates": candidates,
                           "measured": probe.description, "width_table": table.to_dict(),
                           "width_tables": {str(k): t.to_dict() for k, t in tables.items()}}


def layer_kinds(model: Any) -> set[LayerKind]:
    """The convolution kinds (width tables) of ``model``."""
    import torch.nn as nn

    kinds = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kinds.add(LayerKind.DEPTHWISE if m.groups > 1 and m.groups == m.in_channels else
                      LayerKind.POINTWISE if tuple(m.kernel_size) == (1, 1) and m.groups == 1 else
                      LayerKind.DENSE if m.groups == 1 else None)
    return kinds - {None}


def _shapes(model: Any) -> tuple:
    """The widths of every weighted layer: two candidates with the same are the same file to time."""
    return tuple((n, tuple(m.weight.shape)) for n, m in model.named_modules()
                 if getattr(m, "weight", None) is not None and hasattr(m.weight, "shape"))


def _candidate(ctx: RunContext, p: PruneConfig, calib: dict[str, np.ndarray | None], r: int,
               n: int, kinds: tuple[str, ...] = ()) -> tuple[Any, str]:
    """The model pruned to the budget with round-to ``r`` (per kind: ``kinds``) after dropping
    ``n`` blocks, or why not."""
    cand = replace(p, round_to=r, drop_blocks=n, round_to_by_kind=kinds, structure=Structure.FIXED)
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
    if (p.round_to, p.drop_blocks) != (DEFAULT_ROUND_TO, DEFAULT_DROP) or p.round_to_by_kind:
        return {"mode": Structure.FIXED, "why": "auto: --round-to / --drop-blocks given"}
    macs = count_macs_params(ctx.lm.model, ctx.example)[0]
    if macs < AUTO_MIN_MACS:
        return {"mode": Structure.FIXED, "why": f"auto: {macs / 1e6:.0f}M MACs, below the {AUTO_MIN_MACS / 1e6:.0f}M "
                                                "where the measured search pays"}
    return {"mode": Structure.FASTEST, "why": f"auto: {macs / 1e6:.0f}M MACs"}
