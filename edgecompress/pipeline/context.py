"""What the stages of a run share: the inputs (config, model, data) and the records they add to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import RunConfig, Stage
from edgecompress.data import Splits
from edgecompress.models import LoadedModel
from edgecompress.report import Artifact, Gate
from edgecompress.runtime.outputs import is_classifier


@dataclass(kw_only=True)
class RunContext:
    cfg: RunConfig
    d: Path  # the staging directory the run writes into
    log: Callable[[str], None]
    t_start: float
    lm: LoadedModel
    splits: Splits
    example: torch.Tensor  # batch 1, zeros
    calib_idx: np.ndarray  # calibration samples (indices into the training split)
    meta: dict[str, str]  # ONNX metadata stamped on every file
    arts: dict[str, Artifact] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    stage_results: dict[str, Any] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)  # the stages that ran
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fp32_parent: str = "original"  # the FP32 artifact the INT8 one is made from
    fp32_model: nn.Module | None = None  # its PyTorch model (INC and QAT start from it)
    metric: Callable[..., float] | None = None  # the user's --metric fn(outputs, targets)

    @property
    def classifier(self) -> bool:
        """One output of class scores: top-1 against integer labels applies."""
        return is_classifier(self.lm.outputs)

    @property
    def labelled_eval(self) -> bool:
        return self.splits.eval is not None and self.splits.eval.y is not None and self.classifier

    def parity_samples(self, n: int) -> np.ndarray:
        """The first ``n`` samples of the eval set (the training set without one), for parity checks."""
        src = self.splits.eval if self.splits.eval is not None else self.splits.train
        return src.x[:n]

    def warn(self, w: str) -> None:
        """A warning for the log and the manifest, once."""
        if w not in self.warnings:
            self.warnings.append(w)


class StopRun(Exception):
    """A gate failed in a way that makes later stages meaningless: deliver what exists, as failed."""


@dataclass
class RunResult:
    out_dir: Path
    manifest: dict[str, Any]
    exit_code: int
    failures: list[str] = field(default_factory=list)
