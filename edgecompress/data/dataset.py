"""A data set: float32 NCHW samples, optional labels, and where they came from. ``x`` is a numpy
array (IDX, npz, random) or an array-like that decodes image files on demand
(``data.folders.ImageFiles``): both support ``len``, ``shape`` and indexing by int, slice or
index array, which is all the stages use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dataset:
    x: Any  # np.ndarray float32 N x C x H x W, or data.folders.ImageFiles (decoded per item)
    y: np.ndarray | None  # int64, N (None for unlabelled / random data)
    source: str
    classes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.x, np.ndarray)

    def take(self, idx: np.ndarray, source: str) -> Dataset:
        x = self.x[idx] if self.in_memory else self.x.take(idx)  # a lazy set stays lazy
        return Dataset(x, None if self.y is None else self.y[idx], source, self.classes)


def subset(x: Any, idx: np.ndarray) -> Any:
    """``x[idx]`` for arrays; a lazy subset (nothing decoded) for image files."""
    return x[idx] if isinstance(x, np.ndarray) else x.take(idx)


@dataclass(frozen=True)
class Splits:
    train: Dataset  # training and calibration
    val: Dataset  # early stopping / model selection (part of the training data); empty with val_fraction 0
    eval: Dataset | None  # held-out evaluation; None when data is random
    description: dict
