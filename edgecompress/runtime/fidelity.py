"""How faithfully a compressed file reproduces the FP32 original, per output (numpy only).

``fidelity(ref, got, kind)`` compares one output of two files on the same inputs: SNR in dB,
mean per-sample cosine similarity and max-abs error for every kind, the worst channel's SNR (a
tensor that mixes box coordinates in pixels and scores in [0, 1] can keep a fine overall SNR while
INT8 wipes out the scores), plus, by kind:

* logits / softmax: top-1 agreement (same argmax over axis 1);
* sigmoid: multi-label agreement (same side of 0.5, per label) and exact-set agreement (per sample);
* dense: per-pixel agreement (same argmax over axis 1) and mIoU of the file's argmax map against
  the original's.

``fidelity_gates`` turns the headline figure of each output into a gate (value, bound, passed);
the pipeline wraps them in its Gate records. Torch-free, so the ONNX-input path can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecompress.runtime.outputs import OutputInfo, OutputKind

SNR_CAP_DB = 200.0  # identical tensors: a finite number for JSON


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10 log10(signal power / error power), capped at SNR_CAP_DB."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return float(min(SNR_CAP_DB, 10.0 * np.log10(signal / noise)))


def channel_axis(a: np.ndarray) -> int:
    """Axis 1 (NC..., as convolutions give), except for [N, A, K] with K < A: detector outputs
    of A anchors with K values each (4 box coordinates + class scores) keep channels last."""
    if a.ndim == 3 and a.shape[2] < a.shape[1]:
        return 2
    return 1


def channel_snr_db(ref: np.ndarray, got: np.ndarray) -> list[float]:
    """SNR of every channel (``channel_axis``) on its own."""
    ax = channel_axis(ref)
    r, g = np.moveaxis(ref, ax, 0), np.moveaxis(got, ax, 0)
    return [snr_db(r[c], g[c]) for c in range(r.shape[0])]


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the flattened outputs."""
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    num = np.sum(r * g, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.all(r == g, axis=1), 1.0, 0.0))
    return float(np.mean(cos))


def miou(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """Mean intersection-over-union of two label maps over the classes present in either."""
    ious = []
    for c in range(num_classes):
        p, r = pred == c, ref == c
        union = np.logical_or(p, r).sum()
        if union:
            ious.append(np.logical_and(p, r).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def fidelity(ref: np.ndarray, got: np.ndarray, kind: OutputKind | str) -> dict[str, float]:
    """The figures of one output of a file (``got``) against the original's (``ref``)."""
    if ref.shape != got.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {got.shape}")
    kind = OutputKind(kind)
    ch = channel_snr_db(ref, got) if ref.ndim >= 2 else [snr_db(ref, got)]
    out: dict[str, float] = {"snr_db": snr_db(ref, got), "min_channel_snr_db": float(min(ch)),
                             "cosine": cosine(ref, got),
                             "max_abs": float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0}
    if kind in (OutputKind.LOGITS, OutputKind.SOFTMAX):
        out["top1_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    elif kind == OutputKind.SIGMOID:
        r, g = ref > 0.5, got > 0.5
        out["label_agreement"] = float(np.mean(r == g))
        out["exact_set_agreement"] = float(np.mean(np.all((r == g).reshape(len(r), -1), axis=1)))
    elif kind == OutputKind.DENSE:
        r, g = ref.argmax(1), got.argmax(1)
        out["pixel_agreement"] = float(np.mean(r == g))
        out["miou_vs_original"] = miou(g, r, ref.shape[1])
    return out


# the headline figure of each kind, gated against a VerifyConfig bound (see GateBounds)
HEADLINE = {OutputKind.LOGITS: "top1_agreement", OutputKind.SOFTMAX: "top1_agreement",
            OutputKind.SIGMOID: "label_agreement", OutputKind.DENSE: "pixel_agreement",
            OutputKind.REGRESSION: "min_channel_snr_db"}  # fmt: skip


@dataclass(frozen=True)
class GateBounds:
    min_agreement: float = 0.99  # top-1 / per-label / per-pixel agreement with the FP32 parent
    min_snr_db: float = 20.0  # regression outputs: worst channel's SNR against the FP32 parent


@dataclass(frozen=True)
class FidelityGate:
    output: str
    metric: str
    value: float
    bound: float
    passed: bool

    @property
    def name(self) -> str:
        what = {"top1_agreement": "top-1 agreement", "label_agreement": "multi-label agreement",
                "pixel_agreement": "per-pixel agreement", "min_channel_snr_db": "worst-channel SNR (dB)"}[self.metric]
        return f"{what} of output {self.output}"


def fidelity_gates(figures: dict[str, dict[str, float]], infos: tuple[OutputInfo, ...],
                   bounds: GateBounds) -> list[FidelityGate]:
    """One gate per output on its headline figure (``figures``: output name -> fidelity())."""
    gates = []
    for info in infos:
        metric = HEADLINE[info.kind]
        value = figures[info.name][metric]
        bound = bounds.min_snr_db if metric == "min_channel_snr_db" else bounds.min_agreement
        gates.append(FidelityGate(info.name, metric, value, bound, bool(value >= bound)))
    return gates


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray],
                    infos: tuple[OutputInfo, ...]) -> dict[str, dict[str, Any]]:
    """fidelity() of every output: {output name: figures}."""
    return {i.name: fidelity(r, g, i.kind) for i, r, g in zip(infos, ref, got, strict=True)}
