"""Pruning to a latency target: a criterion that measures the model as it will ship.

The measurement itself (export with the run's exporter, quantize with the run's quantization
settings, time with onnxruntime) is handed in by the pipeline as ``measure``, so the probe times
the same kind of file the run delivers, and pruning imports neither export nor quantize."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch.nn as nn

Criterion = Callable[[nn.Module, int, int], bool]  # (model, macs, params) -> target met?
# model -> p50 ms of its deployed file, or {"p50_ms": ms, **figures recorded beside it} (e.g. the
# build host's p50 when the measuring device is another machine)
Measure = Callable[[nn.Module], "float | dict[str, float]"]


class LatencyCriterion:
    """p50 latency of the model as deployed, measured by ``measure``. Only re-measures after MACs
    fell by ``min_drop`` since the last measurement, so a 100-step schedule costs ~20 measurements.
    ``description`` says what is measured (for messages); ``can_add_latency_aware`` tells whether
    adding --latency-aware-int8 would change the file measured."""

    def __init__(self, measure: Measure, *, description: str = "", can_add_latency_aware: bool = False,
                 min_drop: float = 0.03) -> None:
        self.measure, self.description, self.min_drop = measure, description, min_drop
        self.can_add_latency_aware = can_add_latency_aware
        self.last_macs: int | None = None
        self.history: list[dict[str, float]] = []
        self.beside: dict[str, float] = {}  # the figures recorded beside the last measurement

    def _one(self, model: nn.Module) -> float:
        m = self.measure(model)
        if isinstance(m, dict):
            self.beside = {k: v for k, v in m.items() if k != "p50_ms"}
            return m["p50_ms"]
        return m

    def __call__(self, model: nn.Module, repeats: int = 1) -> float:
        """p50 in ms; with ``repeats`` > 1 the median of that many independent measurements."""
        return statistics.median(self._one(model) for _ in range(repeats))

    def criterion(self, target_ms: float) -> Criterion:
        def done(model: nn.Module, macs: int, _params: int) -> bool:
            if self.last_macs is not None and macs > (1 - self.min_drop) * self.last_macs:
                return False
            self.last_macs = macs
            p50 = self(model)
            entry: dict[str, Any] = {"macs": macs, "p50_ms": p50}
            if p50 <= target_ms:
                # confirm before stopping: the first noisy dip under the target would otherwise end
                # the search early (the final artifact then misses the target it "met")
                entry = {"macs": macs, "p50_ms": self(model, repeats=3), "first_p50_ms": p50}
            self.history.append(entry | self.beside)
            return entry["p50_ms"] <= target_ms

        return done
