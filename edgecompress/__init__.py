"""edgecompress: prune, distill and quantize a PyTorch CNN into a smaller, faster INT8 ONNX
model, and prove it (parity, accuracy, latency, size — all in a manifest).

Python API (keyword-only, typed)::

    from edgecompress import RunConfig, PruneConfig, compress, load_pruned
    res = compress(RunConfig(prune=PruneConfig(ratio=0.5), out="out"))
    model = load_pruned("out/pruned.pt")

Heavy libraries (torch, torch-pruning, onnxruntime.quantization) are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgecompress.config import (
    BenchConfig,
    DataConfig,
    DistillConfig,
    ExportOnnxConfig,
    ModelConfig,
    PruneConfig,
    QuantConfig,
    RunConfig,
    VerifyConfig,
)
from edgecompress.errors import BadInput, ConfigError, EdgeCompressError, GateFailed

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.pipeline import RunResult

__all__ = [
    "BadInput", "BenchConfig", "ConfigError", "DataConfig", "DistillConfig", "EdgeCompressError",
    "ExportOnnxConfig", "GateFailed", "ModelConfig", "PruneConfig", "QuantConfig", "RunConfig",
    "VerifyConfig", "compress", "load_pruned",
]  # fmt: skip


def compress(cfg: RunConfig | None = None, **kwargs: Any) -> RunResult:
    """Runs the whole pipeline; returns the result record (out_dir, manifest, exit_code)."""
    from edgecompress.pipeline import run

    return run(cfg or RunConfig(), **kwargs)


def load_pruned(path: str, *, factory: str | None = None) -> nn.Module:
    """Rebuilds a pruned model from ``pruned.pt`` without unpickling arbitrary objects."""
    from edgecompress.checkpoint import load_pruned as _load

    return _load(path, factory=factory)
