"""Depth pruning: remove whole residual blocks, y = act(x + f(x)) -> y = x.

On small inputs (28 px) a CNN's latency is bound by the number of operators, not by MACs:
removing channels shrinks every kernel but leaves ~one kernel launch per layer. Removing whole
residual blocks removes their operators. A block qualifies when its output has the shape of
its input and, traced with torch.fx, its output is ``x + f(x)`` (optionally through a ReLU,
which is the identity on the non-negative output of the previous block). Which blocks go is
decided greedily by what removing each one does to the model's output on calibration data
(KL divergence to the unpruned logits), re-measured after every removal.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import BadInput
from edgecompress.models.pruned import replace_module
from edgecompress.prune.tp_adapter import count_macs_params

_ADDS = {operator.add, operator.iadd, torch.add}
_PASSTHROUGH_FN = {F.relu, torch.relu, operator.pos}


@dataclass(frozen=True)
class DroppedBlock:
    name: str
    kl: float  # KL(original || model without this block) on the calibration batch, at removal time
    macs: int  # MACs of the model after the removal

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kl": round(self.kl, 6), "macs_after": self.macs}


def _is_identity_of(node, placeholder, gm) -> bool:
    """True if ``node`` is the block input, possibly through nn.Identity modules."""
    while True:
        if node is placeholder:
            return True
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node = node.args[0]
            continue
        return False


def _is_residual(block: nn.Module) -> bool:
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(block)
    except Exception:  # data-dependent control flow etc.: not a candidate
        return False
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(placeholders) != 1 or len(outputs) != 1:
        return False
    x, node = placeholders[0], outputs[0].args[0]
    # peel a trailing ReLU (module, function or method)
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU):
        node = node.args[0]
    elif (node.op == "call_function" and node.target in _PASSTHROUGH_FN) or (
        node.op == "call_method" and node.target in ("relu", "relu_")
    ):
        node = node.args[0]
    is_add = (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_", "__add__")
    )
    if not is_add or len(node.args) < 2:
        return False
    return any(isinstance(a, fx.Node) and _is_identity_of(a, x, gm) for a in node.args[:2])


def residual_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the blocks that can be replaced by the identity (shape-preserving residuals)."""
    shapes: dict[str, bool] = {}
    hooks = []
    for name, m in model.named_modules():
        if not name or not list(m.children()):
            continue

        def hook(mod, inp, out, name=name):
            shapes[name] = (len(inp) == 1 and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor)
                            and inp[0].shape == out.shape)

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    found = [n for n, same in shapes.items() if same and _is_residual(mods[n])]
    # a container whose only content is one residual block traces as residual too (layer1 =
    # Sequential(block)): it is the same block, so keep the innermost name only
    return [n for n in found if not any(o.startswith(n + ".") for o in found)]


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    return float(F.kl_div(F.log_softmax(logits, 1), ref_logp, reduction="batchmean", log_target=True))


def drop_blocks(model: nn.Module, example: torch.Tensor, n: int, calib_x: np.ndarray | None,
                *, protect: tuple[str, ...] = ()) -> list[DroppedBlock]:
    """Replaces the ``n`` least important residual blocks of ``model`` (in place) by nn.Identity."""
    cands = [c for c in residual_blocks(model, example) if not any(c == p or p.startswith(c + ".") for p in protect)]
    if n > len(cands):
        raise BadInput(f"--drop-blocks {n}: this model has {len(cands)} removable residual block(s)"
                       f"{' (' + ', '.join(cands[:12]) + ')' if cands else ''}; lower --drop-blocks")
    if calib_x is None:  # data-free: the output distortion on random inputs still ranks the blocks
        calib_x = np.random.default_rng(0).random((64, *example.shape[1:]), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(calib_x[:256]))
    model.eval()
    with torch.no_grad():
        ref = F.log_softmax(model(x), 1)
    dropped: list[DroppedBlock] = []
    for _ in range(n):
        scores = []
        for c in cands:
            trial = copy.deepcopy(model)
            replace_module(trial, c, nn.Identity())
            with torch.no_grad():
                scores.append((_kl(ref, trial(x)), c))
        kl, best = min(scores)
        replace_module(model, best, nn.Identity())
        # nested candidates inside the removed block are gone with it
        cands = [c for c in cands if c != best and not c.startswith(best + ".")]
        dropped.append(DroppedBlock(best, kl, count_macs_params(model, example)[0]))
    return dropped
