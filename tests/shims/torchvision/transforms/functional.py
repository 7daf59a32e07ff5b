"""Placeholder (see torchvision/__init__.py)."""

import enum

from torchvision._placeholder import module_getattr

__getattr__ = module_getattr(__name__)


class InterpolationMode(enum.Enum):
    """torchvision's enum (timm builds its interpolation tables from it at import time)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
