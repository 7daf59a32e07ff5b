"""A data set: NCHW samples, optional labels, and where they came from. ``x`` is a numpy array
(IDX, npz, random: float32, or uint8 images in [0, 255] — an .npz of uint8 stays uint8 in memory,
a quarter of the float32 bytes) or an array-like that decodes image files on demand
(``data.folders.ImageFiles``): both support ``len``, ``shape`` and indexing by int, slice or index
array, which is all the stages use. Whoever feeds samples to a model reads them through
:func:`as_float`, batch by batch, never the whole set at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_float(x: np.ndarray) -> np.ndarray:
    """Samples as a model reads them: float32, uint8 images scaled by 1/255 (as the readers did)."""
    return x.astype(np.float32) / 255.0 if getattr(x, "dtype", None) == np.uint8 else x


@dataclass(frozen=True)
class Dataset:
    x: Any  # N x C x H x W: float32 or uint8 array (read through as_float), or data.folders.ImageFiles
    y: np.ndarray | None  # int64, N (None for unlabelled / random data)
    source: str
    classes: tuple[str, ...] = field(default=())
    # targets of a user's --metric, any shape, one row per sample: {"y": y} or {output name: y_<output>}
    targets: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.x, np.ndarray)

    def take(self, idx: np.ndarray, source: str) -> Dataset:
        x = self.x[idx] if self.in_memory else self.x.take(idx)  # a lazy set stays lazy
        targets = None if self.targets is None else {k: v[idx] for k, v in self.targets.items()}
        return Dataset(x, None if self.y is None else self.y[idx], source, self.classes, targets)


def subset(x: Any, idx: np.ndarray) -> Any:
    """``x[idx]`` for arrays; a lazy subset (nothing decoded) for image files."""
    return x[idx] if isinstance(x, np.ndarray) else x.take(idx)


@dataclass(frozen=True)
class Splits:
    train: Dataset  # training and calibration
    val: Dataset  # early stopping / model selection (part of the training data); empty with val_fraction 0
    eval: Dataset | None  # held-out evaluation; None when data is random
    description: dict
