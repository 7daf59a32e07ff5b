"""PyTorch -> ONNX (one example builder, one batch limit), the parity gate, and the finishing of
the shipped files (metadata, compact names)."""

from edgecompress.export.finalize import compact_graph_names, finalize_onnx, metadata
from edgecompress.export.onnx_export import (
    INPUT_NAME,
    MAX_BATCH,
    OUTPUT_NAME,
    Parity,
    batch_dim,
    check_onnx,
    export_example,
    export_onnx,
    parity,
)

__all__ = ["INPUT_NAME", "MAX_BATCH", "OUTPUT_NAME", "Parity", "batch_dim", "check_onnx", "compact_graph_names",
           "export_example", "export_onnx", "finalize_onnx", "metadata", "parity"]
