"""Placeholder (see torchvision/__init__.py)."""

from torchvision._placeholder import module_getattr

__getattr__ = module_getattr(__name__)
