"""Factories for two digit classifiers whose trained weights ship inside PyPI wheels, as a user
would write them for ``edgecompress export file.py:factory --weights FILE``:

- ``ccexam`` 1.0.0 (MIT): ``ccexam/weights/mnist.pth``, a state_dict of ``ccexam.models.MNISTNet``
  (2 convs + 2 linear; flattens with ``x.flatten(1)``);
- ``digit-recognizer-py`` 0.1.0 (MIT): ``digit_recognizer/models/handwriting_model.pth``, a
  state_dict of ``digit_recognizer.model.CNN`` (3 convs + 2 linear; flattens with
  ``x.view(x.size(0), -1)``, the 1-channel case the training loop once broke on).

Both were trained on MNIST normalised by mean 0.1307 / std 0.3081; edgecompress feeds pixels in
[0, 1], so each factory puts that normalisation in front (a subclass: the state_dict keys stay the
wheel's). ``digit_recognizer/__init__`` imports torchvision, so its ``model.py`` is loaded by path.
Install both with ``pip install --no-deps`` (their torchvision requirement is not needed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MEAN, STD = 0.1307, 0.3081


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (None if not installed)."""
    spec = importlib.util.find_spec(name)
    return None if spec is None or not spec.submodule_search_locations else Path(spec.submodule_search_locations[0])


WEIGHTS = {"ccexam": ("ccexam", "weights/mnist.pth"),
           "digit_recognizer": ("digit_recognizer", "models/handwriting_model.pth")}


def weights(which: str) -> Path | None:
    pkg, rel = WEIGHTS[which]
    d = package_dir(pkg)
    return None if d is None else d / rel


def ccexam() -> torch.nn.Module:
    from ccexam.models import MNISTNet  # ccexam/__init__ is lazy: this imports torch.nn only

    class Normalised(MNISTNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward((x - MEAN) / STD)

    return Normalised(input_size=28)


def digit_recognizer() -> torch.nn.Module:
    d = package_dir("digit_recognizer")
    if d is None:
        raise ModuleNotFoundError("pip install --no-deps digit-recognizer-py==0.1.0")
    spec = importlib.util.spec_from_file_location("digit_recognizer_model", d / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class Normalised(mod.CNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward((x - MEAN) / STD)

    return Normalised()
