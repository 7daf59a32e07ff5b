"""Training, validation and evaluation splits, disjoint by construction.

The evaluation set is never used for training, calibration or early stopping: ``load_splits``
returns disjoint train / val / eval parts and records where each came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.dataset import Dataset, Splits
from edgecompress.data.readers import load_fashion_mnist, load_npz, random_data, resolve_data
from edgecompress.errors import BadInput


def load_splits(
    data: str | None,
    eval_data: str | None,
    *,
    input_shape: tuple[int, ...] | None,
    val_fraction: float = 0.1,
    eval_fraction: float = 0.2,
    seed: int = 0,
    random_samples: int = 256,
    images: Callable[[Path, Any], tuple[Dataset, dict]] | None = None,
) -> Splits:
    """Loads the training data and a disjoint evaluation set.

    Fashion-MNIST: eval is the official 10k test split. npz without --eval-data: a
    deterministic (seeded) ``eval_fraction`` of the samples is held out and recorded.
    ``val_fraction`` of the remaining training samples is kept for validation (none with 0: the
    validation split is then empty). Image folders (``images(path, prep) -> (data set, record)``,
    the run's loader with its preprocessing) are split like npz, by a seeded permutation of their
    sorted file list; an image folder given as ``eval_data`` is read with the training set's
    preprocessing.
    """
    kind, path = resolve_data(data)
    desc: dict = {"kind": kind, "path": None if path is None else str(path)}
    if kind == "random":
        if input_shape is None:
            raise BadInput("--data random needs the input shape: pass --input-shape N,C,H,W")
        d = random_data(tuple(input_shape), random_samples, seed)
        return Splits(d, d, None, desc | {"train": len(d), "val": len(d), "eval": 0})
    if kind == "fashion-mnist":
        full = load_fashion_mnist(path, "train")
        ev: Dataset | None = None
        if eval_data is None:
            ev = load_fashion_mnist(path, "test")
            desc["eval_source"] = "official 10k test split"
    elif kind == "images":
        if images is None:
            raise BadInput(f"--data {data}: an image folder needs the run's preprocessing; use edgecompress export")
        full, desc["images"] = images(path, None)
        ev = None
    else:
        full = load_npz(path)
        ev = None
    if eval_data is not None:
        if not Path(eval_data).exists():
            raise BadInput(f"--eval-data {eval_data}: no such file or directory; pass an .npz file, IDX directory "
                           "or image folder")
        ev = load_npz(Path(eval_data)) if Path(eval_data).suffix == ".npz" else None
        if ev is None:
            k, p = resolve_data(eval_data)
            if k == "images" and images is not None:
                ev, desc["eval_images"] = images(p, getattr(full.x, "prep", None))
            elif k != "fashion-mnist":
                raise BadInput(f"--eval-data {eval_data}: expected an .npz file, IDX directory or image folder")
            else:
                ev = load_fashion_mnist(p, "test")
        desc["eval_source"] = f"--eval-data {eval_data}"
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(full))
    if ev is None:
        n_eval = max(1, int(round(eval_fraction * len(full))))
        if len(full) - n_eval < 2:
            raise BadInput(f"--data has only {len(full)} samples; need more to hold out an eval set")
        ev = full.take(order[:n_eval], f"{full.source}:heldout")
        order = order[n_eval:]
        desc["eval_source"] = f"held-out {eval_fraction:.0%} of --data (seed {seed})"
    n_val = max(1, int(round(val_fraction * len(order)))) if val_fraction > 0 else 0  # 0: all of it trains
    train = full.take(np.sort(order[n_val:]), f"{full.source}:train")
    val = full.take(np.sort(order[:n_val]), f"{full.source}:val")
    # an eval set without labels is enough: fidelity to the original replaces accuracy (pipeline.verify)
    if tuple(ev.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise BadInput(f"evaluation samples have shape {tuple(ev.x.shape[1:])}, training samples "
                       f"{tuple(train.x.shape[1:])}; both sets must match the model input")
    desc |= {"train": len(train), "val": len(val), "eval": len(ev)}
    for name, d in (("training", train), ("evaluation", ev)):
        if input_shape is not None and tuple(d.x.shape[1:]) != tuple(input_shape):
            raise BadInput(
                f"{name} data has samples of shape {tuple(d.x.shape[1:])} but the model input is "
                f"{tuple(input_shape)}; pass --input-shape 1,{','.join(map(str, d.x.shape[1:]))}"
            )
    return Splits(train, val, ev, desc)


def limit(splits: Splits, *, seed: int, max_train: int | None, max_eval: int | None, val_fraction: float) -> Splits:
    """At most ``max_train`` training samples (and the validation split cut to the same fraction) and
    ``max_eval`` evaluation samples, drawn with a seed of their own (``seed + 1``)."""
    rng = np.random.default_rng(seed + 1)
    train, val, ev = splits.train, splits.val, splits.eval
    if max_train is not None and len(train) > max_train:
        train = train.take(np.sort(rng.choice(len(train), max_train, replace=False)), train.source)
        n_val = max(1, int(max_train * val_fraction))
        if len(val) > n_val:
            val = val.take(np.sort(rng.choice(len(val), n_val, replace=False)), val.source)
    if max_eval is not None and ev is not None and len(ev) > max_eval:
        ev = ev.take(np.sort(rng.choice(len(ev), max_eval, replace=False)), ev.source)
    desc = dict(splits.description) | {"train": len(train), "val": len(val), "eval": 0 if ev is None else len(ev)}
    return Splits(train, val, ev, desc)
