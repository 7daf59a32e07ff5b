"""What pruning is steered by: MACs and parameter counts, and latency measured with
onnxruntime on this CPU (the ``--target-latency-ms`` probe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

Criterion = Callable[[nn.Module, int, int], bool]  # (model, macs, params) -> target met?


class _Tally:
    """Stands in for a module in Torch-Pruning's per-type counting hooks: reads go to the module,
    the ``module.__flops__ += n`` they do lands here instead of on the model."""

    def __init__(self, module: nn.Module) -> None:
        self.__dict__.update(_module=module, __flops__=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Torch-Pruning's ``count_ops_and_params``, same numbers, without its deep copy of the model
    (0.5 GB for VGG, at each of up to 100 pruning steps). Its own per-type hooks count each
    module whose *exact* type it knows; a known module's children are not added again, a module
    called twice counts twice, and the total is per sample. The forward runs in eval mode under
    no_grad, and the modules' train/eval flags are restored afterwards."""
    from torch_pruning.utils import op_counter

    table = op_counter.MODULES_MAPPING
    tallies = {m: _Tally(m) for m in model.modules() if type(m) in table}
    modes = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_hook(lambda mod, i, o, t=t: table[type(mod)](t, i, o)) for m, t in tallies.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training

    def total(m: nn.Module) -> int:  # op_counter.accumulate_flops
        return tallies[m].__flops__ if m in tallies else sum(total(c) for c in m.children())

    return int(total(model) / len(example)), sum(p.numel() for p in model.parameters())


class LatencyProbe:
    """Measures the p50 latency (onnxruntime, 1 thread, batch 1) of a model as deployed: FP32
    ONNX, or INT8 after a quick PTQ when ``int8``; with ``latency_aware`` too, the INT8 file of
    ``--latency-aware-int8`` (the layers faster in FP32 left in FP32, decided by a shortened pass:
    one profile per file, 3 timing rounds), since that is the file the run will ship. Only
    re-measures after MACs fell by ``min_drop`` since the last measurement, so a 100-step schedule
    costs ~20 measurements."""

    def __init__(self, example: torch.Tensor, calib_x: np.ndarray | None, *, int8: bool, runs: int = 100,
                 min_drop: float = 0.03, exporter: str = "dynamo", latency_aware: bool = False) -> None:
        self.example, self.calib_x, self.int8, self.runs, self.min_drop = example, calib_x, int8, runs, min_drop
        self.latency_aware = latency_aware and int8
        self.exporter = exporter  # measure the graph that will ship: the exporters' graphs differ in speed
        self.last_macs: int | None = None
        self.history: list[dict[str, float]] = []

    def __call__(self, model: nn.Module, repeats: int = 1) -> float:
        """p50 in ms; with ``repeats`` > 1 the median of that many independent measurements."""
        import statistics
        import tempfile
        from pathlib import Path

        from edgecompress.bench import measure_latency
        from edgecompress.config import ExportOnnxConfig, QuantConfig
        from edgecompress.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="edgecompress-lat-") as d:
            path = Path(d) / "m.onnx"
            export_onnx(model, self.example, path, ExportOnnxConfig(exporter=self.exporter))
            if self.int8:
                from edgecompress.quantize import quantize_ptq

                calib = self.calib_x[:64] if self.calib_x is not None else \
                    np.random.default_rng(0).random((16, *self.example.shape[1:]), dtype=np.float32)
                if self.latency_aware:
                    from edgecompress.quant_speed import latency_aware_ptq

                    path = latency_aware_ptq(path, Path(d) / "q.onnx", calib, QuantConfig(latency_aware=True),
                                             rounds=3, profile_rounds=1)[0].path
                else:
                    path = quantize_ptq(path, Path(d) / "q.onnx", calib, QuantConfig()).path
            return statistics.median(measure_latency(path, threads=1, batch=1, warmup=10, runs=self.runs).p50_ms
                                     for _ in range(repeats))

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
            self.history.append(entry)
            return entry["p50_ms"] <= target_ms

        return done
