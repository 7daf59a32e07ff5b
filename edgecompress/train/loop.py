"""The training loop shared by teacher training, distillation and QAT.

One loop, a pluggable loss: ``loss_fn(student_logits, x, y) -> loss``. SGD with Nesterov
momentum and a cosine schedule, light augmentation (random shift by padding + crop, optional
horizontal flip, optional mixup), progress on stderr, and optional early stopping on a validation set.

Mixup (Zhang et al. 2018) blends each batch with a shuffled copy of itself, ``lam * x + (1 - lam) *
x[perm]`` with ``lam ~ Beta(a, a)``, and hands ``loss_fn`` soft targets (class probabilities, the
same blend of one-hot labels), which ``F.cross_entropy`` accepts as they are. For distillation the
teacher sees the same blended images, so the student learns to match the teacher's function between
training images too ("function matching", Beyer et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.data.dataset import Dataset, as_float
from edgecompress.data.loader import batches
from edgecompress.errors import BadInput
from edgecompress.runtime.progress import estimator, progress
from edgecompress.train import device as devices

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
    mixup: float = 0.0  # Beta(a, a) parameter of mixup; 0 = off
    seed: int = 0
    device: str = "cpu"  # a resolved torch device (train.device.resolve); the model is already there
    workers: int = 0  # DataLoader processes decoding image files (in-memory arrays need none)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_loss: float
    val_top1: list[float]  # one per validation round (end of each pass over the data, and the end)
    val_steps: list[int] = field(default_factory=list)  # the step of each validation round
    best_step: int | None = None  # the weights kept are from this step; None = no validation
    stopped_early: bool = False  # patience ran out before the planned number of steps
    resumed_from: int = 0  # step a checkpoint was resumed from; 0 = a fresh start
    planned_steps: int = 0


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
    if flip:
        m = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)
    return standard_layout(x)


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the strides of a freshly allocated NCHW tensor (a copy only when they differ).

    ``.contiguous()`` is not enough: it ignores the stride of a size-1 dimension, so a
    1-channel batch built through a channels-last view stays channels-last, the convolutions
    then answer in channels-last, and a model whose forward does ``x.view(x.size(0), -1)``
    fails. Every batch the loop feeds a model goes through here."""
    want, acc = [], 1
    for size in reversed(x.shape):
        want.append(acc)
        acc *= size
    if tuple(reversed(want)) == x.stride():
        return x
    return x.clone(memory_format=torch.contiguous_format)


def mixup(x: torch.Tensor, g: torch.Generator, a: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(a, a)`` drawn from ``g`` (so a resumed run
    draws the same values); returns the blend, ``perm`` and ``lam``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    lam = float(np.random.default_rng(seed).beta(a, a))
    perm = torch.randperm(x.shape[0], generator=g)
    return lam * x + (1 - lam) * x[perm], perm, lam


def mixed_targets(y: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """Soft targets of a mixed batch: ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``."""
    if int(y.max()) >= num_classes:
        raise BadInput(f"label {int(y.max())} but the model has {num_classes} outputs; check the data's labels")
    onehot = F.one_hot(y, num_classes).float()
    return lam * onehot + (1 - lam) * onehot[perm]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``n`` samples (the last batch may be short)."""
    return max(1, math.ceil(n / batch_size))


def total_steps(epochs: float, spe: int) -> int:
    """Steps of a schedule of ``epochs`` passes (fractions allowed; at least one step)."""
    return max(1, int(round(epochs * spe)))


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    was = model.training
    model.eval()
    dev = devices.model_device(model)
    out = [model(standard_layout(torch.from_numpy(as_float(np.ascontiguousarray(x[i : i + batch_size])))).to(dev))
           .float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def top1(model: nn.Module, d: Dataset) -> float:
    assert d.y is not None
    return float((predict_logits(model, d.x).argmax(1) == d.y).mean())


def fit(
    model: nn.Module,
    train: Dataset,
    cfg: TrainConfig,
    loss_fn: LossFn,
    *,
    desc: str = "train",
    on_epoch: Callable[[int], None] | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    patience: int = 0,
    extra: nn.Module | None = None,
    on_batch: Callable[[torch.Tensor], None] | None = None,
    checkpoint: Checkpointer | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains ``model`` in place for ``cfg.epochs`` passes over ``train``.

    ``validate(model) -> top-1`` runs at the end of every pass and at the last step; the best
    weights are restored at the end, and with ``patience`` > 0 training stops after that many
    rounds without improvement. ``extra`` holds trainable modules that are not part of the
    model (feature-KD adapters): optimised alongside it, checkpointed with it. ``on_batch(idx)``
    sees the training indices of each batch before the loss. ``checkpoint`` saves the loop state
    (weights, optimizer, step, position in the epoch, RNG) and resumes from it. ``log`` gets one
    line with the measured speed and the time left, after the first steps.
    """
    n = len(train)
    if n < 2:
        raise BadInput(f"training needs at least 2 samples (BatchNorm), got {n}; pass more data or --max-train")
    ddp = _Ddp.current(n, cfg)  # torch.distributed initialised: this process trains its shard
    n_local, bs = (n, cfg.batch_size) if ddp is None else (ddp.n_local, ddp.batch_size)
    spe = steps_per_epoch(n_local, bs)
    total = total_steps(cfg.epochs, spe)
    g = torch.Generator().manual_seed(cfg.seed if ddp is None else cfg.seed + 7919 * ddp.rank)
    opt = _optimizer(model, extra, cfg)
    lr_at = _cosine(cfg, total)
    dev = torch.device(cfg.device)
    feed = None  # the batches of the current pass (data.loader: in memory, or decoded by workers)
    # the whole loop state, so that a checkpoint can carry it
    st: dict[str, Any] = {"step": 0, "perm": None, "pos": 0, "loss": float("nan"), "val": [], "val_steps": [],
                          "best": None, "best_step": None, "best_state": None, "bad": 0, "stopped": False,
                          "epoch": 0, "rng_ranks": None}
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        _restore(saved, st, model, extra, opt, g)
        if ddp is not None:  # the checkpoint holds rank 0's shard; rebuild this rank's
            g.set_state(st["rng_ranks"][ddp.rank])
            st["perm"] = None if st["perm"] is None else ddp.perm(st["epoch"] - 1)
    resumed_from = st["step"]

    def save() -> None:
        if checkpoint is not None:
            if ddp is not None:  # a collective: every rank calls save(), only rank 0's checkpoint writes
                st["rng_ranks"] = ddp.gather(g.get_state())
            checkpoint.save(_snapshot(st, model, extra, opt, g))

    model.train()
    net = model if ddp is None else ddp.wrap(model, extra)
    bar = progress(total, desc, disable=ddp is not None and ddp.rank != 0)
    bar.update(st["step"])
    eta = estimator(desc, log, warm=min(20, max(3, (total - resumed_from) // 20)), bar=bar)
    try:
        while st["step"] < total and not st["stopped"]:
            if st["perm"] is None:
                perm = torch.randperm(n, generator=g) if ddp is None else ddp.perm(st["epoch"])
                st["perm"], st["pos"], st["epoch"] = perm, 0, st["epoch"] + 1
            feed = batches(train.x, train.y, [st["perm"][p : p + bs] for p in range(st["pos"], n_local, bs)],
                           workers=cfg.workers, pin_memory=devices.pin(dev))
            while st["pos"] < n_local and st["step"] < total:
                idx = st["perm"][st["pos"] : st["pos"] + bs]
                st["pos"] += bs
                xb, yb = next(feed)
                if len(idx) < 2:  # BatchNorm cannot train on a single sample
                    continue
                for group in opt.param_groups:
                    group["lr"] = lr_at(st["step"])
                if on_batch is not None:
                    on_batch(idx)
                if xb.dtype == torch.uint8:  # uint8 samples in memory: float per batch (as_float)
                    xb = torch.from_numpy(as_float(xb.numpy()))
                st["loss"] = _step(net, opt, loss_fn, xb, yb, g, cfg, dev)
                st["step"] += 1
                if log is not None:
                    eta(st["step"] - resumed_from, total - st["step"])
                bar.update(1)
                bar.set_postfix(loss=f"{st['loss']:.3f}", refresh=False)
                if checkpoint is not None and checkpoint.every and st["step"] % checkpoint.every == 0:
                    save()
            st["perm"], feed = None, None  # a pass over the data (or the training) ended
            if on_epoch is not None:
                on_epoch(st["step"] // spe)
            if validate is not None:
                _end_of_round(st, model, validate, ddp, patience, total)
            model.train()
            save()
    finally:
        bar.close()
    if ddp is not None:
        ddp.sync_buffers(model)
    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"])
    model.eval()
    return TrainResult(st["step"], st["loss"], list(st["val"]), list(st["val_steps"]), st["best_step"],
                       st["stopped"], resumed_from, total)


def _end_of_round(st: dict[str, Any], model: nn.Module, validate: Callable[[nn.Module], float], ddp: _Ddp | None,
                  patience: int, total: int) -> None:
    """Validation after a pass: keeps the best weights, counts the rounds without improvement."""
    if ddp is not None:
        ddp.sync_buffers(model)  # BN statistics differ per shard; every rank validates rank 0's
    acc = float(validate(model))
    st["val"].append(acc)
    st["val_steps"].append(st["step"])
    if st["best"] is None or acc > st["best"]:
        st["best"], st["best_step"], st["bad"] = acc, st["step"], 0
        st["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        st["bad"] += 1
    st["stopped"] = patience > 0 and st["bad"] >= patience and st["step"] < total


def _optimizer(model: nn.Module, extra: nn.Module | None, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on biases and norm scales."""
    decay, no_decay = [], []
    for p in [*model.parameters(), *(extra.parameters() if extra is not None else ())]:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
    )


def _cosine(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0 at step ``total``."""

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))

    return lr_at


def _step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor | None,
          g: torch.Generator, cfg: TrainConfig, dev: torch.device) -> float:
    """One optimizer step on a batch (augmented, mixed up when asked); returns the loss. The random
    draws stay on the CPU generator ``g`` whatever the device, so a device does not change them."""
    x = augment(x, g, cfg.augment_shift, cfg.augment_flip)
    mix = None
    if cfg.mixup > 0:
        x, *mix = mixup(x, g, cfg.mixup)
    x = standard_layout(x).to(dev, non_blocking=True)  # whatever the data's or the augmentation's strides
    with devices.autocast(dev):
        logits = net(x)
        if mix is not None and y is not None:
            y = mixed_targets(y, mix[0], mix[1], logits.shape[1])
        if y is not None:
            y = y.to(dev, non_blocking=True)
        loss = loss_fn(logits, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


class _Ddp:
    """This process's part of a torch.distributed run: DistributedSampler shards, a
    DistributedDataParallel wrapper (gradients all-reduced, buffers broadcast from rank 0) and
    the per-rank batch (the global batch stays ``cfg.batch_size``)."""

    def __init__(self, n: int, cfg: TrainConfig, rank: int, world: int) -> None:
        from torch.utils.data.distributed import DistributedSampler

        self.rank, self.world = rank, world
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        self.n_local = len(self.sampler)  # equal on every rank (padded), so all ranks take the same steps
        self.batch_size = max(2, cfg.batch_size // world)

    @classmethod
    def current(cls, n: int, cfg: TrainConfig) -> _Ddp | None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls(n, cfg, dist.get_rank(), dist.get_world_size())

    def perm(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(self.sampler), dtype=torch.long)

    def wrap(self, model: nn.Module, extra: nn.Module | None) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(_Joint(model, extra))

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @staticmethod
    def sync_buffers(model: nn.Module) -> None:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)


class _Joint(nn.Module):
    """The student and its extra trainable modules (adapters) as one module for DDP, so the
    adapters' gradients are all-reduced too; the forward is the student's."""

    def __init__(self, model: nn.Module, extra: nn.Module | None) -> None:
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Checkpointer(Protocol):
    every: int  # also save every N steps; 0 = only at the end of each pass over the data

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


def _snapshot(st: dict[str, Any], model: nn.Module, extra: nn.Module | None, opt, g: torch.Generator) -> dict:
    return {"loop": dict(st), "model": model.state_dict(), "extra": None if extra is None else extra.state_dict(),
            "opt": opt.state_dict(), "rng": g.get_state(), "torch_rng": torch.get_rng_state()}


def _restore(saved: dict, st: dict[str, Any], model: nn.Module, extra: nn.Module | None, opt, g) -> None:
    st.update(saved["loop"])
    model.load_state_dict(saved["model"])
    if extra is not None and saved["extra"] is not None:
        extra.load_state_dict(saved["extra"])
    opt.load_state_dict(saved["opt"])
    g.set_state(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])


def cross_entropy(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError("cross-entropy training needs labels")
    return F.cross_entropy(logits, y)
