"""Knowledge distillation: the original model teaches the pruned student (Hinton et al. 2015).

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

The teacher runs in eval mode without gradients on the same augmented batch as the student.
Without labels the loss is pure KD (alpha = 1). Models whose outputs are not one logits tensor
(several outputs, probabilities, dense maps, boxes, embeddings) get the loss that fits each output's
kind instead (``edgecompress.train.losses``). Options (``DistillConfig``):

* feature KD (``features``, ``feature_weight``): MSE between hint-layer features through 1x1
  adapters, added to the loss (``edgecompress.train.features``);
* cached teacher logits (``cache_teacher``): one teacher pass over the training images instead of
  one per step. Only with augmentation off (a config error otherwise, rather than a silent
  fallback: with augmentation on the cached logits would be for images the student never sees);
* mixup (``mixup``): teacher and student see the same blended batch; the CE term gets the blended
  labels (``edgecompress.train.loop.mixup``);
* early stopping (``patience``) on the validation part of the training data, best weights kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.config import DistillConfig
from edgecompress.data.dataset import Dataset, as_float
from edgecompress.errors import BadInput
from edgecompress.models.outputs import predict_outputs, tensors
from edgecompress.runtime.outputs import OutputInfo, OutputKind, is_classifier
from edgecompress.train.augment_policy import augment_policy
from edgecompress.train.features import FeatureHints
from edgecompress.train.loop import (
    Checkpointer,
    TrainConfig,
    fit,
    predict_logits,
    standard_layout,
    steps_per_epoch,
    top1,
)
from edgecompress.train.losses import multi_output_loss, parse_weights


@dataclass(frozen=True)
class DistillResult:
    epochs: float
    steps: int
    final_loss: float
    val_top1_before: float | None
    val_top1_after: float | None
    # early stopping (patience > 0): validation top-1 per round, the epoch whose weights were kept
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: float | None = None
    stopped_early: bool = False
    resumed_from_step: int = 0
    # feature KD: per hint name / channels / whether an adapter was needed; the feature MSE
    # averaged over the first and the last tenth of the steps
    feature_hints: list[dict] = field(default_factory=list)
    feature_loss_first: float | None = None
    feature_loss_last: float | None = None
    teacher_forward_batches: int = 0  # teacher forward passes (one per step, or per cache batch)
    nproc: int = 1  # processes that trained (torch.distributed); the numbers above are rank 0's
    rank_state_sha256: list[str] = field(default_factory=list)  # each rank's final weights (all equal)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor | None,
            alpha: float, temperature: float) -> torch.Tensor:
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    if y is None or alpha >= 1:
        return kd
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits, y)


def distill(student: nn.Module, teacher: nn.Module, train: Dataset, cfg: DistillConfig, *,
            val: Dataset | None = None, seed: int = 0, desc: str = "distill",
            checkpoint: Checkpointer | None = None, device: str = "cpu", workers: int = 0,
            log: Callable[[str], None] | None = None, outputs: tuple[OutputInfo, ...] = ()) -> DistillResult:
    """Fine-tunes ``student`` in place with KD from ``teacher`` (which is left unchanged), on
    ``device`` (both models are back on the CPU when it returns); ``workers`` decode image files.
    ``outputs``: the kinds of the model's outputs (runtime.outputs); empty or one logits output =
    a classifier, distilled as always (kd_loss); anything else gets the losses of train.losses."""
    dev = torch.device(device)
    if dev.type != "cpu":
        student.to(dev)
        teacher.to(dev)
    try:
        return _distill(student, teacher, train, cfg, val=val, seed=seed, desc=desc, checkpoint=checkpoint,
                        device=device, workers=workers, log=log, outputs=outputs)
    finally:
        if dev.type != "cpu":
            student.cpu()
            teacher.cpu()


def _distill(student: nn.Module, teacher: nn.Module, train: Dataset, cfg: DistillConfig, *, val: Dataset | None,
             seed: int, desc: str, checkpoint: Checkpointer | None, device: str, workers: int,
             log: Callable[[str], None] | None, outputs: tuple[OutputInfo, ...]) -> DistillResult:
    classic = not outputs or (is_classifier(outputs) and outputs[0].kind == OutputKind.LOGITS)
    if not is_classifier(outputs) and outputs:  # labels of other models are not class ids: KD only
        train = Dataset(train.x, None, train.source)
        val = None if val is None else Dataset(val.x, None, val.source)
    weights = parse_weights(cfg.output_weights, outputs) if outputs else {}
    labelled_val = val is not None and val.y is not None and len(val) > 0
    if cfg.patience > 0 and not labelled_val:
        raise BadInput("--kd-patience needs a labelled validation split of the training data (and a classifier); "
                       "pass data with labels y or drop --kd-patience")
    before = top1(student, val) if labelled_val else None
    if cfg.epochs <= 0:
        return DistillResult(0.0, 0, float("nan"), before, before)
    was_training = teacher.training
    teacher.eval()  # its forward runs under no_grad below; its parameters are left as they were
    hints = FeatureHints(student, teacher, cfg.features,
                         standard_layout(torch.from_numpy(as_float(train.x[:1]))).to(device)) if cfg.features else None
    calls = [0]
    count = teacher.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + 1))
    feat_losses: list[float] = []
    cached, batch_idx = None, [torch.zeros(0, dtype=torch.long)]
    if cfg.cache_teacher:  # augmentation is off (validated): one teacher pass over the training images
        cached = [torch.from_numpy(predict_logits(teacher, train.x))] if classic else \
            [torch.from_numpy(a) for a in predict_outputs(teacher, as_float(train.x))]

    def loss_fn(s_out: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if cached is not None:
            t_out = [c[batch_idx[0]].to(x.device) for c in cached]
        else:
            with torch.no_grad():
                t_out = tensors(teacher(x))
        if classic:
            loss = kd_loss(s_out, t_out[0], y, cfg.alpha, cfg.temperature)
        else:
            loss = multi_output_loss(tensors(s_out), t_out, outputs, weights, cfg.temperature)
            if y is not None and outputs[0].kind == OutputKind.SOFTMAX and cfg.alpha < 1:  # task loss on labels
                loss = cfg.alpha * loss + (1 - cfg.alpha) * F.nll_loss(torch.log(s_out.clamp_min(1e-6)), y)
        if hints is not None:
            f = hints.loss()
            feat_losses.append(float(f.detach()))
            loss = loss + cfg.feature_weight * f
        return loss

    aug = augment_policy(train.x.shape[1:], cfg.augment_shift, cfg.augment_flip)  # image augmentation on images only
    tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                       augment_shift=aug.shift, augment_flip=aug.flip, mixup=cfg.mixup, seed=seed, device=device,
                       workers=workers)  # fmt: skip
    try:
        validate = (lambda m: top1(m, val)) if cfg.patience > 0 else None
        with hints if hints is not None else contextlib.nullcontext():
            res = fit(student, train, tcfg, loss_fn, desc=desc, validate=validate, patience=cfg.patience,
                      extra=None if hints is None else hints.adapters, on_batch=lambda i: batch_idx.__setitem__(0, i),
                      checkpoint=checkpoint, log=log)
    finally:
        count.remove()
        teacher.train(was_training)
    after = top1(student, val) if labelled_val else None
    spe = steps_per_epoch(len(train), cfg.batch_size)
    hist = [{"epoch": round(s / spe, 3), "val_top1": a} for s, a in zip(res.val_steps, res.val_top1, strict=True)]
    best = None if res.best_step is None else round(res.best_step / spe, 3)
    k = max(1, len(feat_losses) // 10)
    return DistillResult(cfg.epochs, res.steps, res.final_loss, before, after, hist, best, res.stopped_early,
                         res.resumed_from, [] if hints is None else hints.record,
                         float(np.mean(feat_losses[:k])) if feat_losses else None,
                         float(np.mean(feat_losses[-k:])) if feat_losses else None, calls[0])  # fmt: skip
