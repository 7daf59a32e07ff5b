"""Batches of a data set, in memory or streamed from image files, for training, calibration and
evaluation. Memory is bounded by the batches in flight, never by the size of the data set.

In-memory arrays keep today's path exactly (``x[idx]``: the same tensors, the same results).
Image files go through a ``torch.utils.data.DataLoader`` whose sampler yields whole index
batches (``batch_size=None``), so one worker decodes one batch; ``workers`` processes decode
ahead of the consumer, and pinned memory speeds the copy to a GPU. The order of the batches is
the caller's (the training loop's seeded permutation, DistributedSampler shards), so the
streamed path sees the same samples in the same order as the in-memory one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


class _Batches:
    """A map-style data set whose items are whole batches: ``self[idx] -> (x, y)`` as tensors."""

    def __init__(self, x: Any, y: np.ndarray | None) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx):
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        xb = torch.from_numpy(np.ascontiguousarray(self.x[idx]))
        return xb, (None if self.y is None else torch.from_numpy(self.y[idx]))


def _collate_none(b):
    return b


def batches(x: Any, y: np.ndarray | None, index_batches: Sequence[Any], *, workers: int = 0,
            pin_memory: bool = False) -> Iterator[tuple[Any, Any]]:
    """(x, y) tensors for each index batch in ``index_batches``, in that order."""
    import torch

    if isinstance(x, np.ndarray):  # in memory: the tensors of today's loop, no copy of the set
        xs = torch.from_numpy(x)
        ys = None if y is None else torch.from_numpy(y)
        for idx in index_batches:
            yield xs[idx], (None if ys is None else ys[idx])
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_Batches(x, y), sampler=[np.asarray(i) for i in index_batches], batch_size=None,
                        num_workers=workers, pin_memory=pin_memory, collate_fn=_collate_none,
                        prefetch_factor=2 if workers else None, persistent_workers=False)
    yield from loader


def array_batches(x: Any, batch: int, *, workers: int = 0) -> Iterator[np.ndarray]:
    """Consecutive numpy batches of ``x`` (evaluation, calibration): slices of an array, or images
    decoded ``workers`` processes ahead."""
    if isinstance(x, np.ndarray) or workers == 0:
        for i in range(0, len(x), batch):
            yield x[i : i + batch]
        return
    ranges = [np.arange(i, min(i + batch, len(x))) for i in range(0, len(x), batch)]
    for xb, _ in batches(x, None, ranges, workers=workers):
        yield xb.numpy()
