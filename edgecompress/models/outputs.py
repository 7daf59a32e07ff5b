"""A model's outputs as a flat list of tensors: one tensor, a tuple/list or a dict of tensors.

``flatten`` gives the tensors in a fixed order with their names (``runtime.outputs.output_names``:
dict keys, else output_0..k, a single tensor ``logits``); ``FlatOutputs`` wraps a model so that its
forward returns that tuple, which is what the ONNX exporters are given."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import BadInput
from edgecompress.runtime.outputs import output_names


def flatten(out: Any) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    """(names, tensors) of what a model's forward returned; BadInput for anything else."""
    if isinstance(out, torch.Tensor):
        return output_names(1), [out]
    if isinstance(out, dict):
        if not out:
            raise BadInput("model returned an empty dict; return a tensor, a tuple or a dict of tensors")
        keys = tuple(str(k) for k in out)
        _check(list(out.values()), f"dict with keys {list(keys)}")
        return output_names(len(keys), keys), list(out.values())
    if isinstance(out, (tuple, list)):
        if not out:
            raise BadInput(f"model returned an empty {type(out).__name__}; return at least one tensor")
        _check(list(out), type(out).__name__)
        return output_names(len(out)), list(out)
    raise BadInput(f"model returned {type(out).__name__}; edgecompress expects a tensor, a tuple/list or a dict of "
                   "tensors: make forward() return those (e.g. wrap the model)")


def _check(values: list[Any], what: str) -> None:
    bad = [type(v).__name__ for v in values if not isinstance(v, torch.Tensor)]
    if bad:
        raise BadInput(f"model returned a {what} holding {bad[0]}; edgecompress expects tensors only (flatten "
                       "nested outputs, drop non-tensor values in forward())")
    if any(not v.is_floating_point() for v in values):
        raise BadInput(f"model returned a {what} with a non-float tensor; return float outputs (decode integer "
                       "results such as argmax or NMS indices outside the model)")


def tensors(out: Any) -> list[torch.Tensor]:
    return flatten(out)[1]


class FlatOutputs(nn.Module):
    """``model`` with forward returning its outputs as a tuple in ``flatten`` order (for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensors(self.model(x)))


@torch.no_grad()
def predict_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of ``model`` on ``x`` (eval mode, restored after), as float32 numpy arrays."""
    was = model.training
    model.eval()
    try:
        parts = [[t.float().numpy() for t in tensors(model(torch.from_numpy(x[i : i + batch_size])))]
                 for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []
