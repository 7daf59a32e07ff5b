"""The in-memory form of a data set: NCHW samples, optional labels, and where they came from.

Samples are float32, or uint8 images in [0, 255] (an .npz of uint8 stays uint8 in memory: a quarter
of the float32 bytes). Whoever feeds samples to a model reads them through :func:`as_float`, batch by
batch (training loop, logits, calibration, evaluation, parity), never the whole set at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def as_float(x: np.ndarray) -> np.ndarray:
    """Samples as a model reads them: float32, uint8 images scaled by 1/255 (as the readers did)."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # N x C x H x W: float32, or uint8 images read through as_float
    y: np.ndarray | None  # int64, N (None for unlabelled / random data)
    source: str
    classes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray, source: str) -> Dataset:
        return Dataset(self.x[idx], None if self.y is None else self.y[idx], source, self.classes)


@dataclass(frozen=True)
class Splits:
    train: Dataset  # training and calibration
    val: Dataset  # early stopping / model selection (part of the training data); empty with val_fraction 0
    eval: Dataset | None  # held-out evaluation; None when data is random
    description: dict
