"""edgecompress: prune, distill and quantize a PyTorch CNN into a smaller, faster INT8 ONNX
model, and prove it (parity, accuracy, latency, size — all in a manifest).

Python API (keyword-only, typed)::

    from edgecompress import RunConfig, PruneConfig, compress, load_pruned
    res = compress(RunConfig(prune=PruneConfig(ratio=0.5), out="out"))
    model = load_pruned("out/pruned.pt")

The names are resolved when first used (PEP 562), so ``import edgecompress`` loads nothing, and
the torch-free commands (``bench``, ``predict``) load only the runtime layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

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
    from edgecompress.pipeline import RunResult

_LAZY = {
    **{n: "edgecompress.config" for n in ("BenchConfig", "DataConfig", "DistillConfig", "ExportOnnxConfig",
                                          "ModelConfig", "PruneConfig", "QuantConfig", "RunConfig", "VerifyConfig")},
    **{n: "edgecompress.errors" for n in ("BadInput", "ConfigError", "EdgeCompressError", "GateFailed")},
}

__all__ = [
    "BadInput", "BenchConfig", "ConfigError", "DataConfig", "DistillConfig", "EdgeCompressError",
    "ExportOnnxConfig", "GateFailed", "ModelConfig", "PruneConfig", "QuantConfig", "RunConfig",
    "VerifyConfig", "compress", "load_pruned",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")


def compress(cfg: RunConfig | None = None, **kwargs: Any) -> RunResult:
    """Runs the whole pipeline; returns the result record (out_dir, manifest, exit_code)."""
    from edgecompress.config import RunConfig
    from edgecompress.pipeline import run

    return run(cfg or RunConfig(), **kwargs)


def load_pruned(path: str, *, factory: str | None = None) -> nn.Module:
    """Rebuilds a pruned model from ``pruned.pt`` without unpickling arbitrary objects."""
    from edgecompress.models.pruned import load_pruned as _load

    return _load(path, factory=factory)
