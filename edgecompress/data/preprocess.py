"""The ``[data]`` preprocessing settings -> the :class:`ImagePrep` of a run, and its record.

The size and channels of image files are decided once, in this order: ``--image-size`` /
``--channels``; else the model's ``--input-shape``; else the first image of the folder (its
size; 1 channel if gray, 3 otherwise). Every other image is converted to that (gray <-> RGB,
resized), in training, calibration, evaluation and ``edgecompress predict`` alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgecompress.config import DataConfig
from edgecompress.errors import BadInput
from edgecompress.runtime.imageprep import META_KEY, ImagePrep

__all__ = ["META_KEY", "image_prep_for", "is_default"]


def image_prep_for(cfg: DataConfig, input_shape: tuple[int, ...] | None) -> Callable[[np.ndarray], ImagePrep]:
    """``prep_for(first_image) -> ImagePrep`` for ``load_image_folder``."""

    def prep_for(first: np.ndarray) -> ImagePrep:
        size = tuple(cfg.image_size) if cfg.image_size else tuple(input_shape[2:]) if input_shape else first.shape[:2]
        if cfg.channels != "auto":
            channels = str(cfg.channels)
        else:
            c = input_shape[1] if input_shape else first.shape[2]
            if c not in (1, 3):
                raise BadInput(f"the model takes {c} channels; image files give 1 (gray) or 3 (RGB): pass an .npz")
            channels = "gray" if c == 1 else "rgb"
        return ImagePrep(size=(int(size[0]), int(size[1])), channels=channels, resize=str(cfg.resize),
                         crop_fraction=cfg.crop_fraction, mean=tuple(cfg.mean), std=tuple(cfg.std),
                         layout=str(cfg.layout))

    return prep_for


def is_default(cfg: DataConfig) -> bool:
    """No image preprocessing asked for (array data sets refuse anything else)."""
    d = DataConfig()
    return all(getattr(cfg, k) == getattr(d, k) for k in ("image_size", "resize", "crop_fraction", "channels",
                                                             "mean", "std", "layout"))
