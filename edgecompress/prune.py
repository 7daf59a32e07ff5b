"""Structured channel pruning with Torch-Pruning's dependency graph.

Channels are physically removed (conv/linear/BN shapes shrink), coupled layers (residual
adds, concats, depthwise/grouped convs) are pruned together as one *group*, and the
classifier's output is never touched. The target (MACs and/or params removed, or a measured
latency) is met by Torch-Pruning's progressive schedule: the per-layer channel ratio grows in
small steps, importance re-estimated on what is left, until the target is met. Counting MACs
and measuring latency live in ``measure``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.config import PruneConfig
from edgecompress.errors import BadInput
from edgecompress.measure import Criterion, LatencyProbe, count_macs_params

__all__ = ["FORMAT", "LatencyProbe", "PruneResult", "apply_record", "count_macs_params", "layer_table", "prune",
           "structural_record"]

# Module attributes that describe structure; the pruning record stores the changed ones.
STRUCT_ATTRS = (
    "in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
    "num_channels", "num_groups", "normalized_shape", "embed_dim", "num_heads",
)  # fmt: skip


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

    def summary(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "macs_removed": 1 - self.macs_after / self.macs_before,
            "params_before": self.params_before, "params_after": self.params_after,
            "channel_ratio": round(self.channel_ratio, 4), "layers": self.layers,
            "latency_history": self.latency_history, "dropped_blocks": self.dropped_blocks,
            **({"sensitivity_allocation": self.allocation} if self.allocation else {}),
        }  # fmt: skip


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The leaf modules whose output *is* the model output (the classifier head)."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: seen.append((mod, o)) if isinstance(o, torch.Tensor) else None)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))
    ]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    heads = [m for m, o in seen if o.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()]
    if not heads and seen:  # output went through a copying op (e.g. softmax): last compute layer
        heads = [seen[-1][0]]
    return heads


def _importance(name: str):
    import torch_pruning as tp

    imp = tp.importance
    table = {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn": lambda: imp.BNScaleImportance(),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "fpgm": lambda: imp.FPGMImportance(p=2),
        "random": lambda: imp.RandomImportance(),
    }
    return table[name]()


def _accumulate_taylor_grads(model: nn.Module, x: np.ndarray, y: np.ndarray | None, batches: int) -> None:
    """First-order Taylor importance needs gradients of the task loss on real batches."""
    model.eval()  # BN statistics stay frozen; gradients still flow
    model.zero_grad()
    bs = max(1, math.ceil(len(x) / batches))
    for i in range(0, min(len(x), bs * batches), bs):
        xb = torch.from_numpy(x[i : i + bs])
        logits = model(xb)
        if y is not None:
            loss = F.cross_entropy(logits, torch.from_numpy(y[i : i + bs]))
        else:  # unlabelled: self-distillation target = the model's own prediction
            loss = F.cross_entropy(logits, logits.argmax(1).detach())
        loss.backward()


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


def group_aware_pruner(model, example, **kwargs):
    """Torch-Pruning's ``BasePruner`` with rounding that works for grouped convs.

    For a group whose channels are split in G groups (a grouped conv or its neighbours), 1.6.1's
    ``_prune`` passes ``_round_to`` the number of channels to cut *per group* but the layer's
    *total* count; with ``total % round_to == 0`` that rounds up to every channel of each group,
    ``check_pruning_group`` refuses it, and ResNeXt/RegNet grouped convs were silently never
    pruned at ``round_to > 1``. Here the per-group kept count is rounded down to a multiple of
    ``round_to // gcd(G, round_to)``: the total stays a multiple of ``round_to`` and ``groups``
    stays valid (ResNeXt's 32 groups: any per-group width; RegNet's 3 groups of 8 at round_to=8:
    only 8, so that layer keeps its width - G * k % 8 == 0 needs k = 8).
    """
    import torch_pruning as tp

    class GroupAwarePruner(tp.pruner.BasePruner):
        _ec_group = None  # the group ``_prune`` is about to round (set just before ``_round_to``)

        def _is_atten_group(self, group):  # called on each record right before its rounding
            self._ec_group = group
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned, current_channels, round_to):
            g = self._get_channel_groups(self._ec_group) if self._ec_group is not None else 1
            if g <= 1 or current_channels % g or n_pruned > current_channels // g:
                return super()._round_to(n_pruned, current_channels, round_to)
            per_group = current_channels // g
            keep = per_group - n_pruned
            keep -= keep % (round_to // math.gcd(g, round_to))
            return per_group - keep  # 0 kept = every channel: check_pruning_group skips it, as ungrouped

    return GroupAwarePruner(model, example, **kwargs)


def _progressive(model, example, cfg, ignored, done: Criterion, calib_x, calib_y):
    """Torch-Pruning's progressive schedule: the channel ratio grows by max/STEPS per step
    (importance re-estimated on what is left) until ``done`` says the target is met. One
    dependency graph is built; the overshoot is at most one step (0.9 % of a layer's channels)."""
    steps = 100
    try:
        pruner = group_aware_pruner(
            model,
            example,
            importance=_importance(cfg.importance),
            global_pruning=cfg.allocation == "global",
            pruning_ratio=cfg.max_layer_ratio,
            max_pruning_ratio=cfg.max_layer_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=cfg.round_to if cfg.round_to > 1 else None,
        )
    except Exception as e:  # the dependency graph could not trace the model
        raise BadInput(
            f"torch-pruning could not trace this model ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); simplify its forward or leave the "
            "offending layer out with --ignore NAME"
        ) from None
    ratio, met = 0.0, False
    for k in range(1, steps + 1):
        if cfg.importance == "taylor":
            _accumulate_taylor_grads(model, calib_x, calib_y, cfg.taylor_batches)
        try:
            pruner.step()
        except Exception as e:  # torch-pruning raises plain exceptions on layers it cannot handle
            raise BadInput(
                f"torch-pruning could not prune this model ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); leave the offending layer out "
                "with --ignore NAME or lower --prune-ratio"
            ) from None
        ratio = cfg.max_layer_ratio * k / steps
        macs, params = count_macs_params(model, example)
        if done(model, macs, params):
            met = True
            break
    return model, ratio, met


def structural_record(original: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    before, record = _named(original), {}
    for name, m in pruned.named_modules():
        o = before.get(name)
        if o is None:
            continue
        if isinstance(m, nn.Identity) and not isinstance(o, nn.Identity):
            record[name] = {"removed": True}  # depth pruning: the block is the identity now
            continue
        changed = {}
        for a in STRUCT_ATTRS:
            if hasattr(m, a) and getattr(m, a) != getattr(o, a, None):
                v = getattr(m, a)
                changed[a] = list(v) if isinstance(v, tuple) else v
        if changed:
            record[name] = changed
    return record


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
    latency_int8: bool = True,
    exporter: str = "dynamo",
    latency_aware: bool = False,
) -> PruneResult:
    """Returns a pruned copy of ``model`` that meets the target: ``cfg.target_latency_ms``
    (measured), else ``ratio`` (default ``cfg.macs_target``) of MACs removed and, when set,
    ``cfg.target_params`` of parameters removed (both)."""
    ratio = cfg.macs_target if ratio is None else ratio
    original = model
    model = copy.deepcopy(model).eval()
    for prm in model.parameters():  # the dependency graph is traced through autograd
        prm.requires_grad_(True)
    macs0, params0 = count_macs_params(model, example)
    dropped = []
    protect = _ignore_names(model, cfg.ignore)
    if cfg.drop_blocks:  # depth first: the channel search then meets the target on what is left
        from edgecompress.depth import drop_blocks

        dropped = [d.as_dict() for d in drop_blocks(model, example, cfg.drop_blocks, calib_x, protect=protect)]
    ignored = _resolve_ignored(model, example, protect)
    if ratio <= 0 and cfg.target_latency_ms is None and cfg.target_params is None:
        macs1, params1 = count_macs_params(model, example)
        return PruneResult(model, macs0, macs1, params0, params1, 0.0, structural_record(original, model),
                           layer_table(original, model), dropped_blocks=dropped)
    if cfg.importance == "taylor" and calib_x is None:
        raise BadInput("taylor importance needs data for gradients; pass --data or use --importance l2")
    probe = None
    if cfg.target_latency_ms is not None:
        probe = LatencyProbe(example, calib_x, int8=latency_int8, exporter=exporter, latency_aware=latency_aware)
        p50 = probe(model)
        probe.history.append({"macs": macs0, "p50_ms": p50})
        if p50 <= cfg.target_latency_ms:
            raise BadInput(f"--target-latency-ms {cfg.target_latency_ms}: the unpruned model already runs in "
                           f"{p50:.3f} ms here; nothing to prune (use --prune-ratio instead)")
        done = probe.criterion(cfg.target_latency_ms)
    else:  # MACs and params: every target given must be met
        target_m = macs0 * (1 - ratio)
        target_p = params0 * (1 - (cfg.target_params or 0.0))
        done = lambda _m, macs, params: macs <= target_m and params <= target_p  # noqa: E731
    allocation: dict[str, Any] = {}
    if dropped and probe is None and done(model, *count_macs_params(model, example)):
        pruned, r, met = model, 0.0, True  # the dropped blocks alone meet the target
    elif cfg.allocation == "sensitivity":  # per-group ratios from a sensitivity table
        from edgecompress.allocation import load_table, prune_by_sensitivity

        if probe is not None or cfg.sensitivity is None:
            raise BadInput("--allocation sensitivity needs a table (--sensitivity FILE from `edgecompress "
                           "sensitivity`) and a --prune-ratio or --target-params target, not --target-latency-ms")
        pruned, r, met, allocation = prune_by_sensitivity(model, example, cfg, ignored, done,
                                                          load_table(cfg.sensitivity), calib_x, calib_y)
    else:
        pruned, r, met = _progressive(model, example, cfg, ignored, done, calib_x, calib_y)
    macs1 = count_macs_params(pruned, example)[0]
    if not met:
        where = (f"pruning up to {cfg.max_layer_ratio:.0%} of each layer's channels removes {1 - macs1 / macs0:.1%} of "
                 f"MACs (round-to {cfg.round_to}{', ' + str(len(cfg.ignore)) + ' ignored layer(s)' if cfg.ignore else ''})")
        if probe is not None:  # latency does not fall with MACs forever: per-operator costs remain
            best = min(h["p50_ms"] for h in probe.history)
            raise BadInput(
                f"cannot reach {cfg.goal(ratio)}: {where}, and the fastest file measured ran in {best:.3f} ms; "
                "raise --target-latency-ms, remove whole blocks with --drop-blocks N"
                + ("" if latency_aware or not latency_int8 else ", or add --latency-aware-int8")
            )
        raise BadInput(f"cannot reach {cfg.goal(ratio)}: {where}; lower --prune-ratio (or the target) or --round-to, "
                       "or ignore fewer layers")
    pruned.zero_grad(set_to_none=True)
    _check_no_empty_layer(pruned)
    params1 = count_macs_params(pruned, example)[1]
    try:
        with torch.no_grad():
            pruned(example)  # the pruned model must still run
    except RuntimeError as e:
        raise BadInput(
            f"the pruned model no longer runs ({str(e).splitlines()[0][:200]}): torch-pruning missed a channel "
            "dependency (e.g. a channel shuffle or reshape); leave those layers out with --ignore NAME"
        ) from None
    res = PruneResult(pruned, macs0, macs1, params0, params1, r, structural_record(original, pruned),
                      layer_table(original, pruned), dropped_blocks=dropped)
    if probe is not None:
        res.latency_history = probe.history
    res.allocation = allocation
    return res


def _check_no_empty_layer(m: nn.Module) -> None:
    for name, mod in m.named_modules():
        for a in ("out_channels", "out_features", "in_channels", "in_features", "num_features"):
            if getattr(mod, a, 1) == 0:
                raise BadInput(f"pruning removed every channel of layer {name}; lower --prune-ratio "
                               f"or pass --ignore {name}")


# --- persistence: rebuild a pruned architecture from its factory + record, no pickle ---------

FORMAT = "edgecompress-pruned/1"


def apply_record(model: nn.Module, record: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Reshapes a freshly built ``model`` to the pruned structure and loads ``state_dict``."""
    from edgecompress.depth import replace_module

    mods = _named(model)
    for name in sorted(n for n, a in record.items() if a == {"removed": True}):
        if name not in mods:
            raise BadInput(f"pruning record removes module {name!r} the model does not have; "
                           "was the checkpoint made from another model?")
        replace_module(model, name, nn.Identity())
    mods = _named(model)
    for name, attrs in record.items():
        if attrs == {"removed": True}:
            continue
        if name not in mods:
            raise BadInput(f"pruning record names module {name!r} the model does not have; "
                           "was the checkpoint made from another model?")
        for a, v in attrs.items():
            if a not in STRUCT_ATTRS:
                raise BadInput(f"pruning record has unsupported attribute {a!r}")
            setattr(mods[name], a, tuple(v) if isinstance(v, list) else v)
    for key, t in state_dict.items():
        mod_name, _, attr = key.rpartition(".")
        mod = mods.get(mod_name)
        if mod is None:
            continue  # reported by load_state_dict below
        if attr in mod._parameters and mod._parameters[attr] is not None:
            if mod._parameters[attr].shape != t.shape:
                mod._parameters[attr] = nn.Parameter(torch.empty_like(t), requires_grad=mod._parameters[attr].requires_grad)
        elif attr in mod._buffers and mod._buffers[attr] is not None:
            if mod._buffers[attr].shape != t.shape:
                mod._buffers[attr] = torch.empty_like(t)
    from edgecompress.models import apply_state_dict

    apply_state_dict(model, state_dict, "pruned checkpoint")
    return model.eval()
