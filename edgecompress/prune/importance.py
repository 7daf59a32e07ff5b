"""Channel importance: a registry of Torch-Pruning scorers by name (``--importance``), and the
gradients that first-order Taylor importance needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.config import Importance
from edgecompress.models.outputs import tensors


def _scorers() -> dict[Importance, Callable[[], Any]]:
    import torch_pruning as tp

    imp = tp.importance
    return {
        Importance.L1: lambda: imp.GroupMagnitudeImportance(p=1),
        Importance.L2: lambda: imp.GroupMagnitudeImportance(p=2),
        Importance.BN: lambda: imp.BNScaleImportance(),
        Importance.TAYLOR: lambda: imp.GroupTaylorImportance(),
        Importance.LAMP: lambda: imp.LAMPImportance(p=2),
        Importance.FPGM: lambda: imp.FPGMImportance(p=2),
        Importance.RANDOM: lambda: imp.RandomImportance(),
    }


def importance(name: Importance | str):
    """A fresh Torch-Pruning importance object for ``name``."""
    return _scorers()[Importance(name)]()


def needs_gradients(name: Importance | str) -> bool:
    return Importance(name) == Importance.TAYLOR


def accumulate_taylor_grads(model: nn.Module, x: np.ndarray, y: np.ndarray | None, batches: int,
                            device: str = "cpu") -> None:
    """First-order Taylor importance needs gradients of the task loss on real batches; computed on
    ``device``, the model (with its gradients) is back on the CPU afterwards."""
    model.eval()  # BN statistics stay frozen; gradients still flow
    model.zero_grad()
    dev = torch.device(device)
    model.to(dev)
    bs = max(1, math.ceil(len(x) / batches))
    for i in range(0, min(len(x), bs * batches), bs):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + bs])).to(dev)
        out = tensors(model(xb))
        logits = out[0]
        if len(out) > 1 or logits.dim() != 2:  # not one classifier output: the outputs' energy
            loss = sum(o.float().pow(2).mean() for o in out)
        elif y is not None:
            loss = F.cross_entropy(logits, torch.from_numpy(y[i : i + bs]).to(dev))
        else:  # unlabelled: self-distillation target = the model's own prediction
            loss = F.cross_entropy(logits, logits.argmax(1).detach())
        loss.backward()
    model.cpu()
