"""Structural equivalence of a pruning step: the pruned model must compute exactly what the unpruned
one computes with the removed channels zeroed.

Torch-Pruning maps the channels it cuts in one layer onto the layers that consume them (through
adds, concats, flattens, reshapes). When that mapping is wrong (a ``forward`` that permutes NCHW to
NHWC before flattening into a Linear, say) the pruned model still runs, exports and passes ONNX
parity with itself, but its classifier reads the wrong columns. Here every low-level removal
Torch-Pruning makes is recorded (:func:`record_removals`); the same output channels are then zeroed
in a copy of the unpruned model (conv and linear rows, BatchNorm scale and shift), and that masked
copy must give the pruned model's outputs, and every maskable layer's kept channels (each within
the bound of its own scale). When it does not, the first layer (in execution order) whose kept
channels differ is named.

Zeroing is only equivalent to removing when nothing mixes channels statistically: a LayerNorm or
GroupNorm normalises across the channels, attention splits them into heads. A step that changed
such a layer is reported as *not applicable*, with the reason, instead of checked.

The recording wraps one Torch-Pruning internal, ``Dependency.__call__`` (the call that shrinks one
layer), as tests/test_zoo_coverage.py does; tests/test_gates.py fails if that stops recording.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from edgecompress.models.outputs import tensors
from edgecompress.models.pruned import replace_module

MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)
# layers whose output is not per-channel: zeroing a channel is not removing it
UNMASKABLE = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.modules.conv._ConvTransposeNd)
TOL = 1e-4  # max-abs <= TOL * max(1, max|reference|), as the ONNX parity gate


@dataclass
class Equivalence:
    """The record of one step's check (``stage_results["prune"]["equivalence"]``)."""

    step: int
    status: str  # held | failed | not applicable
    max_abs: float | None = None
    bound: float | None = None
    layer: str | None = None  # failed: the first layer whose kept channels differ
    reason: str | None = None  # not applicable: why
    removed_channels: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


Removal = tuple[weakref.ref, str, list[int]]  # (layer, Torch-Pruning handler name, indices at that time)


@contextlib.contextmanager
def record_removals() -> Iterator[list[Removal]]:
    """Every call Torch-Pruning makes to shrink a layer, while the block runs. Layers are held
    weakly: trial copies pruned and dropped (sensitivity bisection) are not kept alive."""
    from torch_pruning.dependency.dependency import Dependency

    log: list[Removal] = []
    original_call = Dependency.__call__

    def recording_call(dep, idxs):
        log.append((weakref.ref(dep.target.module), dep.handler.__name__, [int(getattr(i, "idx", i)) for i in idxs]))
        return original_call(dep, idxs)

    Dependency.__call__ = recording_call
    try:
        yield log
    finally:
        Dependency.__call__ = original_call


def _out_dim(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features if isinstance(
        m, nn.Linear) else m.num_features


def _kept_channels(pruned: nn.Module, reference: nn.Module, log: Sequence[Removal]) -> dict[str, list[int]]:
    """Layer name -> the reference's output channels the pruned layer kept (replayed from the log)."""
    name_of = {id(m): n for n, m in pruned.named_modules()}
    ref = dict(reference.named_modules())
    kept: dict[str, list[int]] = {}
    for wref, handler, idxs in log:
        mod = wref()
        # BN and depthwise convs use one function for both directions, named prune_out_channels
        if mod is None or handler != "prune_out_channels" or not isinstance(mod, MASKABLE) or id(mod) not in name_of:
            continue
        name = name_of[id(mod)]
        cur = kept.setdefault(name, list(range(_out_dim(ref[name]))))
        drop = set(idxs)
        kept[name] = [c for i, c in enumerate(cur) if i not in drop]
    return kept


def _unmaskable(pruned: nn.Module, reference: nn.Module, kept: dict[str, list[int]]) -> str | None:
    """Why zeroing cannot stand for this step's removals, or None."""
    ref = dict(reference.named_modules())
    for name, m in pruned.named_modules():
        r = ref.get(name)
        if r is None or type(r) is not type(m):
            continue
        shapes = [tuple(p.shape) for p in m.parameters(recurse=False)]
        if shapes == [tuple(p.shape) for p in r.parameters(recurse=False)]:
            continue
        if isinstance(m, UNMASKABLE):
            return f"{name} ({type(m).__name__}) was pruned; its output mixes channels, so zeroing is not removing"
        if isinstance(m, MASKABLE) and _out_dim(m) != len(kept.get(name, range(_out_dim(r)))):
            return f"{name} shrank without a recorded removal (a Torch-Pruning path this check cannot replay)"
    return None


def _masked(reference: nn.Module, kept: dict[str, list[int]]) -> nn.Module:
    mods = dict(reference.named_modules())
    with torch.no_grad():
        for n, keep in kept.items():
            gone = sorted(set(range(_out_dim(mods[n]))) - set(keep))
            for t in (mods[n].weight, mods[n].bias):
                if t is not None:
                    t[gone] = 0.0
    return reference


def _run_recording(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The model's outputs and the first output of every maskable layer, in execution order."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        return lambda _m, _i, o: seen.setdefault(name, o.detach().clone()) if isinstance(o, torch.Tensor) else None

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, MASKABLE)]
    try:
        with torch.no_grad():
            out = tensors(model(x))
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _first_divergent(pruned: nn.Module, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                     kept: dict[str, list[int]]) -> str | None:
    mods = dict(pruned.named_modules())
    for name, g in got.items():  # execution order
        w = want.get(name)
        if w is None:
            continue
        if name in kept:
            w = w.index_select(-1 if isinstance(mods[name], nn.Linear) else 1, torch.tensor(kept[name]))
        if w.shape != g.shape or float((g - w).abs().max()) > TOL * max(1.0, float(w.abs().max())):
            return name
    return None


def check_equivalence(before: nn.Module, pruned: nn.Module, log: Sequence[Removal], x: torch.Tensor, *,
                      step: int = 1, dropped: Sequence[str] = ()) -> Equivalence:
    """Does ``pruned`` compute ``before`` with the removed channels (``log`` of
    :func:`record_removals` around the pruning) zeroed, on the samples ``x``? ``dropped`` names the
    blocks depth pruning replaced by the identity (replaced likewise in the reference)."""
    reference = copy.deepcopy(before).eval()
    for name in dropped:
        replace_module(reference, name, nn.Identity())
    kept = _kept_channels(pruned, reference, log)
    why = _unmaskable(pruned, reference, kept)
    if why is not None:
        return Equivalence(step=step, status="not applicable", reason=why)
    removed = sum(_out_dim(dict(reference.named_modules())[n]) - len(k) for n, k in kept.items())
    was_training = pruned.training
    try:
        got_out, got = _run_recording(pruned.eval(), x)
        want_out, want = _run_recording(_masked(reference, kept), x)
    finally:
        pruned.train(was_training)
    if len(got_out) != len(want_out) or any(g.shape != w.shape for g, w in zip(got_out, want_out, strict=True)):
        return Equivalence(step=step, status="failed", layer="the model output (shapes differ)",
                           removed_channels=removed)
    max_abs = max((float((g - w).abs().max()) for g, w in zip(got_out, want_out, strict=True)), default=0.0)
    bound = TOL * max(1.0, max((float(w.abs().max()) for w in want_out), default=0.0))
    # every layer too, each against its own scale: a model whose outputs are tiny (a randomly
    # initialised net's logits ~1e-4) would pass the output bound with any channels crossed
    layer = _first_divergent(pruned, got, want, kept)
    if max_abs <= bound and layer is None:
        return Equivalence(step=step, status="held", max_abs=max_abs, bound=bound, removed_channels=removed)
    return Equivalence(step=step, status="failed", max_abs=max_abs, bound=bound, layer=layer or "the model output",
                       removed_channels=removed)
