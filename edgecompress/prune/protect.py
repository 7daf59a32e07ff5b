"""Pruning that protects itself from the model's own shape assumptions.

Torch-Pruning follows the channels through the traced graph, but a model's code may hold
numbers the graph does not show: ``x.view(-1, 256)`` after the last conv, ``torch.split(x,
[1, 64, 64])`` with sizes fixed at construction (MobileViT-V2), a layer scale of one
channel. Pruning such a group breaks the forward (or silently changes the output shape), and
Torch-Pruning's importance can fail on a group whose index mapping it got wrong (IndexError).

:class:`Guard` runs each step of the progressive schedule group by group (Torch-Pruning's
``step(interactive=True)``). The first time a group is about to be pruned, it is pruned on a
scratch copy of the model first, and the copy is run on the example input: when the forward
fails or the output shape changed, the group is left whole (its root layer joins the pruner's
ignored layers) and recorded with the one-line reason; the other groups of the step are pruned
as usual, and pruning goes on toward the target with what is left. A model's fixed sizes break
on the first channel removed, so later cuts of a checked group are not re-checked; the whole
model is still run after every step, and when a step breaks it anyway the schedule restarts
(:class:`Restart`) with that step's groups checked at every cut. Split sizes kept as a list
next to the layers they feed (MixNet's mixed-kernel convs) are not a reason to protect: they are
rewritten from those layers after each cut (``models.pruned.SplitSizes``). A group whose importance
Torch-Pruning cannot compute is left whole the same way (:class:`GuardedImportance`), and so is
one whose dependency group it cannot build within bounds (``tp_adapter.bounded_groups``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import one_line
from edgecompress.models.pruned import SplitSizes

__all__ = ["Guard", "GuardedImportance", "Protected", "Restart", "output_shapes", "scratch_copy"]


@dataclass(frozen=True)
class Protected:
    layer: str  # the root layer of the group left whole (what --ignore would name)
    reason: str  # one line: the exception, or the output shape that changed
    step: int  # the step of the progressive schedule that found it

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "reason": self.reason, "step": self.step}


def output_shapes(out: Any) -> Any:
    """The shapes of a model output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(output_shapes(o) for o in out)
    if isinstance(out, dict):
        return {k: output_shapes(v) for k, v in out.items()}
    return type(out).__name__


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e, 160)}"


class GuardedImportance:
    """Wraps a Torch-Pruning importance: a group it cannot score is skipped (``None``, which the
    pruner treats as "not prunable") and remembered in ``failed`` as (root module, reason)."""

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner
        self.failed: list[tuple[nn.Module, str]] = []

    def __call__(self, group: Any) -> Any:
        try:
            return self.inner(group)
        except Exception as e:  # Torch-Pruning's index mapping, e.g. "index 48 is out of bounds"
            self.failed.append((group[0].dep.target.module, "torch-pruning cannot score this group: " + _reason(e)))
            return None


def _root(group: Any, names: dict[nn.Module, str]) -> nn.Module:
    """The layer that names a group: its root, or its first member that is a model module (the
    root of an attention group may be one of Torch-Pruning's graph-only ops)."""
    for dep, _ in group:
        if dep.target.module in names:
            return dep.target.module
    return group[0].dep.target.module


@dataclass(frozen=True)
class Restart:
    """A whole step broke the model although each of its groups passed its first check: the
    schedule starts again with these groups (root names) checked at every cut."""

    roots: list[str]
    why: str
    step: int


class Guard:
    """Steps of a Torch-Pruning pruner that never leave a model that fails to run or changed its
    output shape. ``recheck``: root names checked at every cut, not only the first."""

    def __init__(self, model: nn.Module, pruner: Any, example: torch.Tensor, recheck: frozenset[str] = frozenset()):
        self.model, self.pruner, self.example, self.recheck = model, pruner, example, recheck
        self.names = _names(model)  # pruning changes modules in place: the map stays valid
        self.expected = output_shapes(self._forward(model))
        self.checked: set[str] = set()
        self.protected: list[Protected] = []
        self.k = 0
        self.splits = SplitSizes(model)

    def _forward(self, model: nn.Module) -> Any:
        with torch.no_grad():
            return model(self.example)

    def check(self, model: nn.Module) -> str | None:
        """None when ``model`` runs on the example with the original output shape, else why not."""
        try:
            got = output_shapes(self._forward(model))
        except Exception as e:
            return _reason(e)
        return None if got == self.expected else f"output shape {got} instead of {self.expected}"

    def step(self) -> Restart | None:
        """One step; a ``Restart`` when the pruned model fails its check although every group of
        the step passed its own (returned, not raised: Torch-Pruning's error wrapper is around)."""
        self.k += 1
        pruned = []
        for group in self.pruner.step(interactive=True):
            root = _root(group, self.names)
            name = self.names.get(root, type(root).__name__)
            if name not in self.checked or name in self.recheck:
                why = self._try(group)
                if why is not None:
                    self.pruner.ignored_layers.extend(root.modules())
                    self.protected.append(Protected(name, why, self.k))
                    continue
                self.checked.add(name)
            group.prune()
            self.splits.sync(self.model)
            pruned.append(name)
        self._unscorable()
        why = self.check(self.model) if pruned else None
        return None if why is None else Restart(pruned, why, self.k)

    def _try(self, group: Any) -> str | None:
        """Prunes ``group`` on a scratch copy of the model and checks the copy."""
        scratch = scratch_copy(self.model)
        mods = dict(scratch.named_modules())
        param_names = self.pruner.DG._param_to_name  # unwrapped parameters (layer scales, tokens)
        try:
            for dep, idxs in group:
                node = dep.target
                if isinstance(node.module, nn.Parameter) and node.module in param_names:
                    parent, _, attr = param_names[node.module].rpartition(".")
                    owner = scratch.get_submodule(parent)
                    setattr(owner, attr, _call(dep, getattr(owner, attr), idxs))
                elif node.module in self.names:  # Torch-Pruning's graph-only ops (concat, split) are skipped
                    _call(dep, mods[self.names[node.module]], idxs)
            self.splits.sync(scratch)
        except Exception as e:
            return _reason(e)
        return self.check(scratch)

    def _unscorable(self) -> None:
        """Groups the importance could not score this step, and root layers whose dependency
        group Torch-Pruning could not build within bounds (``tp_adapter.bounded_groups``):
        ignored from now on, and recorded."""
        imp = self.pruner.importance
        untraceable = [(m, "torch-pruning cannot trace this group: " + why)
                       for m, why in getattr(self.pruner.DG, "untraceable", {}).items()]
        for module, why in [*getattr(imp, "failed", ()), *untraceable]:
            if module not in self.pruner.ignored_layers:
                self.pruner.ignored_layers.extend(module.modules())
                self.protected.append(Protected(self.names.get(module, type(module).__name__), why, self.k))
        if hasattr(imp, "failed"):
            imp.failed.clear()


def _call(dep: Any, module: Any, idxs: Any) -> Any:
    """Runs a dependency's pruning function on ``module`` (a scratch copy of its target)."""
    node = dep.target
    original, node.module = node.module, module
    try:
        return dep(idxs)
    finally:
        node.module = original


def scratch_copy(model: nn.Module) -> nn.Module:
    """``deepcopy`` of a model that may hold tensors computed in a traced forward as plain
    attributes (EfficientFormer's attention-bias cache): those are not graph leaves, which
    ``deepcopy`` refuses, so the copy gets them detached."""
    memo: dict[int, Any] = {}

    def visit(v: Any) -> None:
        if isinstance(v, torch.Tensor) and not v.is_leaf:
            memo[id(v)] = v.detach().clone()
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    for m in model.modules():
        for k, v in vars(m).items():
            if k not in ("_parameters", "_buffers", "_modules"):
                visit(v)
    return copy.deepcopy(model, memo)


def _names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}
