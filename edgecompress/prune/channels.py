"""Structured channel pruning with Torch-Pruning's dependency graph.

Channels are physically removed (conv/linear/BN shapes shrink), coupled layers (residual
adds, concats, depthwise/grouped convs) are pruned together as one *group*, and the
classifier's output is never touched. The target (MACs and/or params removed, or a measured
latency) is met by Torch-Pruning's progressive schedule: the per-layer channel ratio grows in
small steps, importance re-estimated on what is left, until the target is met. Counting MACs
MACs and the overrides of Torch-Pruning's internals live in ``tp_adapter``; a latency target is
measured by a ``LatencyCriterion`` that the pipeline builds from the run's export and
quantization settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import Allocation, PruneConfig
from edgecompress.errors import BadInput, one_line
from edgecompress.models.outputs import tensors
from edgecompress.models.pruned import structural_record
from edgecompress.prune.allocation import load_table, prune_by_sensitivity
from edgecompress.prune.depth import drop_blocks
from edgecompress.prune.importance import accumulate_taylor_grads, importance, needs_gradients
from edgecompress.prune.latency import Criterion, LatencyCriterion
from edgecompress.prune.protect import Guard, GuardedImportance, Restart, scratch_copy
from edgecompress.prune.tp_adapter import count_macs_params, group_aware_pruner, tp_errors

__all__ = ["PruneResult", "layer_table", "output_layers", "prune"]

@dataclass
class PruneResult:
    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channel_ratio: float  # the per-layer channel ratio the search settled on
    record: dict[str, dict[str, Any]]  # module name -> changed structural attributes
    layers: list[dict[str, Any]] = field(default_factory=list)  # per prunable layer: before/after
    latency_history: list[dict[str, float]] = field(default_factory=list)  # latency-target mode
    dropped_blocks: list[dict[str, Any]] = field(default_factory=list)  # depth pruning (--drop-blocks)
    allocation: dict[str, Any] = field(default_factory=dict)  # --allocation sensitivity: budget, per-group ratios
    protected: list[dict[str, Any]] = field(default_factory=list)  # groups left whole: the model relies on them

    def summary(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "macs_removed": 1 - self.macs_after / self.macs_before,
            "params_before": self.params_before, "params_after": self.params_after,
            "channel_ratio": round(self.channel_ratio, 4), "layers": self.layers,
            "latency_history": self.latency_history, "dropped_blocks": self.dropped_blocks,
            "protected": self.protected,
            **({"sensitivity_allocation": self.allocation} if self.allocation else {}),
        }  # fmt: skip


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The leaf modules whose output *is* a model output (the classifier head; every head of a
    model with several outputs): pruning their output channels would change what the model returns."""
    out, seen = _forward_seen(model, example, grad=False)
    outs = tensors(out)
    if len(outs) == 1:
        ptr = outs[0].untyped_storage().data_ptr()
        heads = [m for m, o in seen if o.untyped_storage().data_ptr() == ptr]
        if heads:
            return heads
    out, seen = _forward_seen(model, example, grad=True)  # follow the autograd graph back to the layers
    heads = []
    for o in tensors(out):  # the compute layers each output is made of (through softmax, reshapes, concats...)
        for m in _producers(o, seen):
            if m not in heads:
                heads.append(m)
    if not heads and seen:  # no autograd graph to follow: the last compute layer
        heads = [seen[-1][0]]
    return heads


def _forward_seen(model: nn.Module, example: torch.Tensor, *, grad: bool) -> tuple[Any, list]:
    """The model's output on ``example`` and the (module, output) of every compute layer it ran."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: seen.append((mod, o)) if isinstance(o, torch.Tensor) else None)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))
    ]
    try:
        with torch.set_grad_enabled(grad):
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _producers(out: torch.Tensor, seen: list[tuple[nn.Module, torch.Tensor]]) -> list[nn.Module]:
    """The hooked layers nearest to ``out`` on its autograd graph (no compute layer in between)."""
    by_fn = {o.grad_fn: m for m, o in seen if o.grad_fn is not None}
    found, stack, visited = [], [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        if fn in by_fn:
            found.append(by_fn[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def _named(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _ignore_names(model: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """--ignore plus what the model declares: a model may list layers the dependency graph cannot
    follow (e.g. ShuffleNet's channel shuffle) as ``prune_ignore``, names of modules whose output
    channels must stay whole."""
    return tuple(getattr(model, "prune_ignore", ())) + tuple(names)


def _resolve_ignored(model: nn.Module, example: torch.Tensor, names: tuple[str, ...]) -> list[nn.Module]:
    """The modules to leave alone: the output layers and ``names`` (from _ignore_names)."""
    mods = _named(model)
    ignored = output_layers(model, example)
    for n in names:
        if n not in mods:
            close = [k for k in mods if n in k][:3]
            raise BadInput(f"--ignore {n}: no module of that name" + (f"; did you mean {close}?" if close else
                           "; list names with print(model)"))
        ignored.append(mods[n])
    return ignored


def _progressive(model, example, cfg, ignored, done: Criterion, calib_x, calib_y, device: str = "cpu"):
    """Torch-Pruning's progressive schedule: the channel ratio grows by max/STEPS per step
    (importance re-estimated on what is left) until ``done`` says the target is met. One
    dependency graph is built; the overshoot is at most one step (0.9 % of a layer's channels).
    Each step is guarded (``protect.Guard``): a group whose pruning breaks the model's forward or
    changes its output shape is left whole, and pruning goes on with the others. Returns
    (model, ratio, met, protected layers)."""
    start, recheck = copy.deepcopy(model), frozenset()
    names = {m: n for n, m in model.named_modules()}
    ignored_names = [names[m] for m in ignored if m in names]
    for _attempt in range(3):
        out = _schedule(model, example, cfg, ignored, done, calib_x, calib_y, device, recheck)
        if not isinstance(out, Restart):
            return out
        if recheck.issuperset(out.roots):
            break
        recheck |= frozenset(out.roots)  # again from the start, these groups checked at every cut
        model = scratch_copy(start)
        mods = dict(model.named_modules())
        ignored = [mods[n] for n in ignored_names]
    raise BadInput(f"pruning step {out.step} breaks the model ({out.why}) although each of its layer groups alone "
                   f"does not; leave some of {', '.join(out.roots[:5])} out with --ignore NAME")


def _schedule(model, example, cfg, ignored, done: Criterion, calib_x, calib_y, device: str,
              recheck: frozenset[str]):
    steps = 100
    with tp_errors("trace", "simplify its forward or leave the offending layer out with --ignore NAME"):
        pruner = group_aware_pruner(
            model,
            example,
            importance=GuardedImportance(importance(cfg.importance)),
            global_pruning=cfg.allocation == Allocation.GLOBAL,
            pruning_ratio=cfg.max_layer_ratio,
            max_pruning_ratio=cfg.max_layer_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=cfg.round_to if cfg.round_to > 1 or cfg.round_to_by_kind else None,
            round_to_by_kind=cfg.round_to_kinds() or None,
        )
    guard = Guard(model, pruner, example, recheck)
    ratio, met = 0.0, False
    for k in range(1, steps + 1):
        if needs_gradients(cfg.importance):
            accumulate_taylor_grads(model, calib_x, calib_y, cfg.taylor_batches, device)
        with tp_errors("prune", "leave the offending layer out with --ignore NAME or lower --prune-ratio"):
            broken = guard.step()
        if broken is not None:
            return broken
        ratio = cfg.max_layer_ratio * k / steps
        macs, params = count_macs_params(model, example)
        if done(model, macs, params):
            met = True
            break
    return model, ratio, met, [p.as_dict() for p in guard.protected]


def layer_table(original: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    after = _named(pruned)
    rows = []
    for name, o in original.named_modules():
        if isinstance(o, (nn.Conv2d, nn.Linear)):
            a = "out_channels" if isinstance(o, nn.Conv2d) else "out_features"
            m = after.get(name)
            if m is None:  # inside a block removed by depth pruning
                rows.append({"layer": name, "before": getattr(o, a), "after": 0, "removed": True})
            else:
                rows.append({"layer": name, "before": getattr(o, a), "after": getattr(m, a)})
    return rows


def prune(
    model: nn.Module,
    example: torch.Tensor,
    cfg: PruneConfig,
    *,
    calib_x: np.ndarray | None = None,
    calib_y: np.ndarray | None = None,
    ratio: float | None = None,
    latency: LatencyCriterion | None = None,
    device: str = "cpu",
) -> PruneResult:
    """Returns a pruned copy of ``model`` that meets the target: ``cfg.target_latency_ms``
    (measured by ``latency``, which the caller builds to time the file it ships), else ``ratio``
    (default ``cfg.macs_target``) of MACs removed and, when set, ``cfg.target_params`` of
    parameters removed (both). Groups whose pruning would break the model are left whole and
    listed in ``PruneResult.protected``."""
    ratio = cfg.macs_target if ratio is None else ratio
    original = model
    model = copy.deepcopy(model).eval()
    for prm in model.parameters():  # the dependency graph is traced through autograd
        prm.requires_grad_(True)
    macs0, params0 = count_macs_params(model, example)
    dropped = []
    protect = _ignore_names(model, cfg.ignore)
    if cfg.drop_blocks:  # depth first: the channel search then meets the target on what is left
        dropped = [d.as_dict() for d in drop_blocks(model, example, cfg.drop_blocks, calib_x, protect=protect)]
    ignored = _resolve_ignored(model, example, protect)
    if ratio <= 0 and cfg.target_latency_ms is None and cfg.target_params is None:
        macs1, params1 = count_macs_params(model, example)
        return PruneResult(model, macs0, macs1, params0, params1, 0.0, structural_record(original, model),
                           layer_table(original, model), dropped_blocks=dropped)
    if needs_gradients(cfg.importance) and calib_x is None:
        raise BadInput("taylor importance needs data for gradients; pass --data or use --importance l2")
    done, probe = _criterion(model, cfg, ratio, latency, macs0, params0)
    allocation: dict[str, Any] = {}
    protected: list[dict[str, Any]] = []
    if dropped and probe is None and done(model, *count_macs_params(model, example)):
        pruned, r, met = model, 0.0, True  # the dropped blocks alone meet the target
    elif cfg.allocation == Allocation.SENSITIVITY:  # per-group ratios from a sensitivity table
        if probe is not None or cfg.sensitivity is None:
            raise BadInput("--allocation sensitivity needs a table (--sensitivity FILE from `edgecompress "
                           "sensitivity`) and a --prune-ratio or --target-params target, not --target-latency-ms")
        pruned, r, met, allocation = prune_by_sensitivity(model, example, cfg, ignored, done,
                                                          load_table(cfg.sensitivity), calib_x, calib_y, device)
    else:
        pruned, r, met, protected = _progressive(model, example, cfg, ignored, done, calib_x, calib_y, device)
    macs1 = count_macs_params(pruned, example)[0]
    if not met:
        raise _unreachable(cfg, ratio, 1 - macs1 / macs0, probe, protected)
    _check_runs(pruned, example)
    res = PruneResult(pruned, macs0, macs1, params0, count_macs_params(pruned, example)[1], r,
                      structural_record(original, pruned), layer_table(original, pruned), dropped_blocks=dropped,
                      allocation=allocation, protected=protected)
    if probe is not None:
        res.latency_history = probe.history
    return res


def _criterion(model: nn.Module, cfg: PruneConfig, ratio: float, latency: LatencyCriterion | None,
               macs0: int, params0: int) -> tuple[Criterion, LatencyCriterion | None]:
    """``done(model, macs, params)`` for the run's target, and the latency probe when it is one."""
    if cfg.target_latency_ms is None:  # MACs and params: every target given must be met
        target_m = macs0 * (1 - ratio)
        target_p = params0 * (1 - (cfg.target_params or 0.0))
        return (lambda _m, macs, params: macs <= target_m and params <= target_p), None
    if latency is None:
        raise BadInput("--target-latency-ms needs a latency measurement; pass prune(..., latency=LatencyCriterion(...))")
    p50 = latency(model)
    latency.history.append({"macs": macs0, "p50_ms": p50})
    if p50 <= cfg.target_latency_ms:
        raise BadInput(f"--target-latency-ms {cfg.target_latency_ms}: the unpruned model already runs in "
                       f"{p50:.3f} ms here; nothing to prune (use --prune-ratio instead)")
    return latency.criterion(cfg.target_latency_ms), latency


def _check_runs(pruned: nn.Module, example: torch.Tensor) -> None:
    """The pruned model has no empty layer and still runs (the sensitivity allocation and depth
    pruning are not guarded step by step)."""
    pruned.zero_grad(set_to_none=True)
    _check_no_empty_layer(pruned)
    try:
        with torch.no_grad():
            pruned(example)
    except RuntimeError as e:
        raise BadInput(
            f"the pruned model no longer runs ({one_line(e, 200)}): torch-pruning missed a channel "
            "dependency (e.g. a channel shuffle or reshape); leave those layers out with --ignore NAME"
        ) from None


def _unreachable(cfg: PruneConfig, ratio: float, removed: float, probe: LatencyCriterion | None,
                 protected: list[dict[str, Any]] | None = None) -> BadInput:
    """The one-line error for a target pruning cannot reach, with the ways out."""
    where = (f"pruning up to {cfg.max_layer_ratio:.0%} of each layer's channels removes {removed:.1%} of "
             f"MACs (round-to {cfg.round_to}{', ' + str(len(cfg.ignore)) + ' ignored layer(s)' if cfg.ignore else ''})")
    if protected:  # the model's own shape assumptions kept these whole: name them and the fix
        where += (f", with {len(protected)} layer(s) left whole because pruning them breaks the model "
                  f"({_protected_line(protected)}; make the model's code derive those sizes from its layers)")
    if probe is not None:  # latency does not fall with MACs forever: per-operator costs remain
        best = min(h["p50_ms"] for h in probe.history)
        return BadInput(
            f"cannot reach {cfg.goal(ratio)}: {where}, and the fastest file measured ran in {best:.3f} ms; "
            "raise --target-latency-ms, remove whole blocks with --drop-blocks N"
            + (", or add --latency-aware-int8" if probe.can_add_latency_aware else "")
        )
    return BadInput(f"cannot reach {cfg.goal(ratio)}: {where}; lower --prune-ratio (or the target) or --round-to, "
                    "or ignore fewer layers")


def _protected_line(protected: list[dict[str, Any]], most: int = 3) -> str:
    shown = "; ".join(f"{p['layer']}: {p['reason'][:100]}" for p in protected[:most])
    return shown + (f"; and {len(protected) - most} more" if len(protected) > most else "")


def _check_no_empty_layer(m: nn.Module) -> None:
    for name, mod in m.named_modules():
        for a in ("out_channels", "out_features", "in_channels", "in_features", "num_features"):
            if getattr(mod, a, 1) == 0:
                raise BadInput(f"pruning removed every channel of layer {name}; lower --prune-ratio "
                               f"or pass --ignore {name}")
