"""Knowledge distillation: the original model teaches the pruned student (Hinton et al. 2015).

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

The teacher runs in eval mode without gradients on the same augmented batch as the student.
Without labels the loss is pure KD (alpha = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.config import DistillConfig
from edgecompress.data import Dataset
from edgecompress.train import TrainConfig, fit, top1


@dataclass(frozen=True)
class DistillResult:
    epochs: float
    steps: int
    final_loss: float
    val_top1_before: float | None
    val_top1_after: float | None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor | None,
            alpha: float, temperature: float) -> torch.Tensor:
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    if y is None or alpha >= 1:
        return kd
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits, y)


def distill(student: nn.Module, teacher: nn.Module, train: Dataset, cfg: DistillConfig, *,
            val: Dataset | None = None, seed: int = 0, desc: str = "distill") -> DistillResult:
    """Fine-tunes ``student`` in place with KD from ``teacher`` (which is left unchanged)."""
    labelled_val = val is not None and val.y is not None
    before = top1(student, val) if labelled_val else None
    if cfg.epochs <= 0:
        return DistillResult(0.0, 0, float("nan"), before, before)
    was_training = teacher.training
    teacher.eval()  # its forward runs under no_grad below; its parameters are left as they were

    def loss_fn(s_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        return kd_loss(s_logits, t_logits, y, cfg.alpha, cfg.temperature)

    tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                       weight_decay=cfg.weight_decay, seed=seed)
    try:
        res = fit(student, train, tcfg, loss_fn, desc=desc)
    finally:
        teacher.train(was_training)
    after = top1(student, val) if labelled_val else None
    return DistillResult(cfg.epochs, res.steps, res.final_loss, before, after)
