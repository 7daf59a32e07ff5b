"""The training loop shared by teacher training, distillation and QAT.

One loop, a pluggable loss: ``loss_fn(student_logits, x, y) -> loss``. SGD with Nesterov
momentum and a cosine schedule, light augmentation (random shift by padding + crop, optional
horizontal flip), progress on stderr, and optional early stopping on a validation set.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.data import Dataset

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: float = 1.0  # fractional epochs allowed: 0.5 = half a pass over the training data
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    augment_shift: int = 2
    augment_flip: bool = True
    warmup_steps: int = 0
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_loss: float
    val_top1: list[float]  # one per epoch boundary where validation ran


def augment(x: torch.Tensor, g: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    if shift:
        b, _, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift))
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=g)
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=g)
        rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w)
        bidx = torch.arange(b).view(b, 1, 1, 1)
        x = padded.permute(0, 2, 3, 1)[bidx, rows, cols].squeeze(1).permute(0, 3, 1, 2)
        x = x.contiguous()
    if flip:
        m = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)
    return x


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    was = model.training
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def top1(model: nn.Module, d: Dataset) -> float:
    assert d.y is not None
    return float((predict_logits(model, d.x).argmax(1) == d.y).mean())


def progress(total: int, desc: str):
    from tqdm import tqdm

    # Off a terminal (CI, logs) a bar redraw is a new line: update rarely there.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.2 if tty else 30.0)


def fit(
    model: nn.Module,
    train: Dataset,
    cfg: TrainConfig,
    loss_fn: LossFn,
    *,
    desc: str = "train",
    on_epoch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains ``model`` in place for ``cfg.epochs`` passes over ``train``."""
    n = len(train)
    if n < 2:
        from edgecompress.errors import BadInput

        raise BadInput(f"training needs at least 2 samples (BatchNorm), got {n}; pass more data or --max-train")
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    g = torch.Generator().manual_seed(cfg.seed)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))

    xs = torch.from_numpy(train.x)
    ys = None if train.y is None else torch.from_numpy(train.y)
    model.train()
    step, loss_val, val = 0, float("nan"), []
    bar = progress(total, desc)
    try:
        while step < total:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, cfg.batch_size):
                if step >= total:
                    break
                idx = perm[i : i + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm cannot train on a single sample
                    continue
                x = augment(xs[idx], g, cfg.augment_shift, cfg.augment_flip)
                y = None if ys is None else ys[idx]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                loss = loss_fn(model(x), x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_val = float(loss.detach())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
            if on_epoch is not None:
                on_epoch(step // steps_per_epoch)
    finally:
        bar.close()
    model.eval()
    return TrainResult(step, loss_val, val)


def cross_entropy(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError("cross-entropy training needs labels")
    return F.cross_entropy(logits, y)
