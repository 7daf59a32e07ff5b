"""What the stages of a run share: the inputs (config, model, data) and the records they add to.

``RunRecord`` is what every run has, whatever its input: the quantization stage and the closing
steps (evaluate, benchmark, manifest) read only it, and it needs no torch. ``RunContext`` adds the
PyTorch model of a run that starts from one (the ONNX-input pipeline uses ``RunRecord`` alone)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.config import RunConfig, Stage
from edgecompress.data import Splits, as_float
from edgecompress.report import Artifact, Gate
from edgecompress.runtime.meter import LOCAL, Meter
from edgecompress.runtime.outputs import OutputInfo, is_classifier

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from edgecompress.models import LoadedModel


@dataclass(kw_only=True)
class RunRecord:
    cfg: RunConfig
    d: Path  # the staging directory the run writes into
    log: Callable[[str], None]
    t_start: float
    splits: Splits
    calib_idx: np.ndarray  # calibration samples (indices into the training split)
    calib_source: str = ""  # where their number comes from: --calib-samples, or the default (capped)
    meta: dict[str, str]  # ONNX metadata stamped on every file
    input_shape: tuple[int, ...]  # N,C,H,W the files are benchmarked with (N: the model's batch, 1 if dynamic)
    model_record: dict[str, Any]  # the manifest's "model"
    eval_threads: int = 1  # onnxruntime threads of the batch evaluation
    arts: dict[str, Artifact] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    stage_results: dict[str, Any] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)  # the stages that ran
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fp32_parent: str = "original"  # the FP32 artifact the INT8 one is made from
    meter: Meter = LOCAL  # where latency is measured: here, or the --bench-on device (pipeline.device)
    outputs: tuple[OutputInfo, ...] = ()  # the model's outputs and their kinds (runtime.outputs); () = one classifier
    metric: Callable[..., float] | None = None  # the user's --metric fn(outputs, targets)

    @property
    def classifier(self) -> bool:
        """One output of class scores: top-1 against integer labels applies."""
        return not self.outputs or is_classifier(self.outputs)

    @property
    def labelled_eval(self) -> bool:
        return self.splits.eval is not None and self.splits.eval.y is not None and self.classifier

    def parity_samples(self, n: int) -> np.ndarray:
        """The first ``n`` samples of the eval set (the training set without one), for parity checks."""
        src = self.splits.eval if self.splits.eval is not None else self.splits.train
        return as_float(src.x[:n])

    def warn(self, w: str) -> None:
        """A warning for the log and the manifest, once."""
        if w not in self.warnings:
            self.warnings.append(w)

    def torch_inputs(self) -> dict[str, Any]:
        """What the PyTorch-side quantizers (QAT, INC) take of the run: nothing without a PyTorch model."""
        return {}


@dataclass(kw_only=True)
class RunContext(RunRecord):
    lm: LoadedModel
    example: torch.Tensor  # batch 1, zeros
    fp32_model: nn.Module | None = None  # the PyTorch model of the FP32 parent (INC and QAT start from it)
    device: str = "cpu"  # the resolved device of the PyTorch stages (train.device)
    launch: Any = None  # train.distributed.Launch under torchrun, else None

    @property
    def follower(self) -> bool:
        """A torchrun rank other than 0: it trains its shard and writes nothing."""
        return self.launch is not None and not self.launch.leader

    def torch_inputs(self) -> dict[str, Any]:
        return {"model": self.fp32_model, "teacher": self.lm.model, "train": self.splits.train,
                "example": self.example}


def stderr_log(msg: str) -> None:
    """The default log of a run: one line on stderr per event (numbers go to the manifest)."""
    print(f"edgecompress: {msg}", file=sys.stderr, flush=True)


class StopRun(Exception):
    """A gate failed in a way that makes later stages meaningless: deliver what exists, as failed."""


@dataclass
class RunResult:
    out_dir: Path
    manifest: dict[str, Any]
    exit_code: int
    failures: list[str] = field(default_factory=list)
