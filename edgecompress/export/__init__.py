"""PyTorch -> ONNX (one example builder, one batch limit), the parity gate, and the finishing of
the shipped files (metadata, compact names, onnx.checker).

The finishing (``finalize``) needs no torch and is imported here; the PyTorch side
(``onnx_export``) is a table imported by name when first used (PEP 562), so the ONNX-input
pipeline, which stamps and checks files it did not export, loads no torch."""

from __future__ import annotations

import importlib
from typing import Any

from edgecompress.export.finalize import check_onnx, compact_graph_names, finalize_onnx, metadata

# name -> module, imported when the name is first used
_TORCH_SIDE = {n: "edgecompress.export.onnx_export" for n in (
    "INPUT_NAME", "MAX_BATCH", "OUTPUT_NAME", "Parity", "batch_dim", "export_example", "export_onnx", "parity")}

__all__ = ["INPUT_NAME", "MAX_BATCH", "OUTPUT_NAME", "Parity", "batch_dim", "check_onnx", "compact_graph_names",
           "export_example", "export_onnx", "finalize_onnx", "metadata", "parity"]


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module(_TORCH_SIDE[name]), name)
    raise AttributeError(f"module 'edgecompress.export' has no attribute {name!r}")
