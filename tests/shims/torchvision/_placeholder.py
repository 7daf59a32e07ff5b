"""Placeholder classes for the torchvision shim (see ``torchvision/__init__.py``)."""

from __future__ import annotations

from collections.abc import Callable


def placeholder(qualname: str) -> type:
    """A class named ``qualname`` that can be subclassed and isinstance-tested, not instantiated."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{qualname} is a placeholder of the edgecompress test shim for torchvision "
                           "(tests/shims); install a torchvision that imports to use it")

    module, _, name = qualname.rpartition(".")
    return type(name, (), {"__init__": __init__, "__module__": module})


def module_getattr(module: str) -> Callable[[str], type]:
    """A module-level ``__getattr__`` that answers every public name with one placeholder class."""
    made: dict[str, type] = {}

    def __getattr__(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in made:
            made[name] = placeholder(f"{module}.{name}")
        return made[name]

    return __getattr__
