"""Distillation losses that fit each kind of output (``runtime.outputs.OutputKind``).

A single logits output keeps the classic loss (``distill.kd_loss``: KL at temperature + CE on
labels). Other outputs get the loss their values call for:

* logits: KL(softmax(t/T) || softmax(s/T)) * T^2 over axis 1 (per position for [N, C, ...]);
* softmax probabilities: the same KL on the recovered logits log(p) (a softmax of p itself, as
  plain KL-on-logits would take, is almost flat: p in [0, 1] carries no signal at T = 4);
* sigmoid probabilities: binary cross-entropy of the student's recovered logits logit(p) against
  the teacher's probabilities, summed over classes (multi-label: every class is its own yes/no);
* dense per-pixel logits: KL at temperature per pixel, averaged over pixels;
* regression / embeddings: MSE per channel divided by the teacher's spread of that channel, so a
  box coordinate in pixels and a score in [0, 1] weigh alike and the loss has no unit.

Outputs are summed with per-output weights (``--kd-output-weight NAME=W``, default 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecompress.errors import BadInput
from edgecompress.runtime.fidelity import channel_axis
from edgecompress.runtime.outputs import OutputInfo, OutputKind

_EPS = 1e-6


def _prob_logits(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp(_EPS, 1.0))


def kl_at_temperature(s_logits: torch.Tensor, t_logits: torch.Tensor, t: float) -> torch.Tensor:
    """KL over axis 1, summed over classes, averaged over every other position, times T^2."""
    log_s, log_t = F.log_softmax(s_logits / t, 1), F.log_softmax(t_logits / t, 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return kl.mean() * (t * t)


def sigmoid_bce(s_probs: torch.Tensor, t_probs: torch.Tensor) -> torch.Tensor:
    """BCE of the student's probabilities against the teacher's, through recovered logits (stable
    where p saturates), summed over classes, averaged over samples (and positions)."""
    p = s_probs.clamp(_EPS, 1 - _EPS)
    s_logit = torch.log(p) - torch.log1p(-p)
    bce = F.binary_cross_entropy_with_logits(s_logit, t_probs.clamp(0, 1), reduction="none")
    return bce.sum(1).mean()


def relative_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE per channel (``fidelity.channel_axis``) over the teacher's spread of that channel: its
    variance plus 1% of its mean square (a channel the teacher holds constant must not blow up)."""
    if s.dim() < 2:
        s, t = s.reshape(-1, 1), t.reshape(-1, 1)
    ax = channel_axis(t)
    s2, t2 = s.movedim(ax, 0).reshape(s.shape[ax], -1), t.movedim(ax, 0).reshape(t.shape[ax], -1)
    spread = t2.var(dim=1, unbiased=False) + 0.01 * t2.pow(2).mean(1) + 1e-8
    return (((s2 - t2) ** 2).mean(1) / spread).mean()


def output_loss(s: torch.Tensor, t: torch.Tensor, kind: OutputKind, temperature: float) -> torch.Tensor:
    if kind in (OutputKind.LOGITS, OutputKind.DENSE):
        return kl_at_temperature(s, t, temperature)
    if kind == OutputKind.SOFTMAX:
        return kl_at_temperature(_prob_logits(s), _prob_logits(t), temperature)
    if kind == OutputKind.SIGMOID:
        return sigmoid_bce(s, t)
    return relative_mse(s, t)


def parse_weights(entries: tuple[str, ...], infos: tuple[OutputInfo, ...]) -> dict[str, float]:
    """``NAME=W`` entries -> {output name: weight}; every output not named weighs 1."""
    names = [i.name for i in infos]
    w = dict.fromkeys(names, 1.0)
    for e in entries:
        name, _, val = e.rpartition("=")
        if name not in w:
            raise BadInput(f"--kd-output-weight {e}: the model has no output {name!r}; its outputs are "
                           f"{', '.join(names)}")
        w[name] = float(val)
    return w


def multi_output_loss(s_out: list[torch.Tensor], t_out: list[torch.Tensor], infos: tuple[OutputInfo, ...],
                      weights: dict[str, float], temperature: float) -> torch.Tensor:
    """The weighted sum of every output's loss."""
    total = s_out[0].new_zeros(())
    for s, t, info in zip(s_out, t_out, infos, strict=True):
        if weights[info.name]:
            total = total + weights[info.name] * output_loss(s, t, info.kind, temperature)
    return total
