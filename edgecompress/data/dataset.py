"""The in-memory form of a data set: float32 NCHW samples, optional labels, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, N x C x H x W
    y: np.ndarray | None  # int64, N (None for unlabelled / random data)
    source: str
    classes: tuple[str, ...] = field(default=())
    # targets of a user's --metric, any shape, one row per sample: {"y": y} or {output name: y_<output>}
    targets: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray, source: str) -> Dataset:
        targets = None if self.targets is None else {k: v[idx] for k, v in self.targets.items()}
        return Dataset(self.x[idx], None if self.y is None else self.y[idx], source, self.classes, targets)


@dataclass(frozen=True)
class Splits:
    train: Dataset  # training and calibration
    val: Dataset  # early stopping / model selection (part of the training data); empty with val_fraction 0
    eval: Dataset | None  # held-out evaluation; None when data is random
    description: dict
