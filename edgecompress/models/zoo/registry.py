"""The zoo's registry: ``@register(name, ...)`` on a factory; the modules of ``edgecompress.models.zoo``
register theirs when the package is imported.

``create_model(name, num_classes=10, in_chans=1)`` builds a model; ``list_models()`` lists
the names with a one-line description. Every factory takes the same keyword arguments so a
pruned checkpoint can be rebuilt from ``(name, kwargs)`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from edgecompress.errors import BadInput


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    default_input: tuple[int, int, int]  # (C, H, W) the model was designed for


_REGISTRY: dict[str, ZooEntry] = {}


def register(name: str, description: str, default_input: tuple[int, int, int] = (1, 28, 28)):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"zoo name {name!r} registered twice")
        _REGISTRY[name] = ZooEntry(name, fn, description, default_input)
        return fn

    return deco


def list_models() -> list[ZooEntry]:
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def get_entry(name: str) -> ZooEntry:
    if name not in _REGISTRY:
        raise BadInput(
            f"unknown model {name!r}; known zoo models: {', '.join(sorted(_REGISTRY))} "
            "(or pass path/to/file.py:factory or package.module:factory)"
        )
    return _REGISTRY[name]


def create_model(name: str, *, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return get_entry(name).factory(num_classes=num_classes, in_chans=in_chans)
