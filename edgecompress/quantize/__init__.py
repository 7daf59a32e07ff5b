"""INT8 quantization: onnxruntime PTQ (static QDQ, dynamic), accuracy-aware and latency-aware
mixed precision, CPU targets, graph rewrites; QAT (torchao pt2e) and Intel Neural Compressor
beside them. ``registry`` picks the quantizer of a run from (mode, backend).

Only the ONNX-side passes are re-exported here; ``quantize.qat`` and ``quantize.inc`` import torch
and are imported by the registry when their quantizer runs."""

from edgecompress.quantize.accuracy_aware import accuracy_aware_ptq, compute_nodes
from edgecompress.quantize.graph import gemm_to_matmul, keep_float, store_weights_int8
from edgecompress.quantize.latency_aware import latency_aware_ptq
from edgecompress.quantize.ptq import (
    ArrayReader,
    QuantResult,
    preprocess,
    preprocessed_model,
    quantize_dynamic_onnx,
    quantize_ptq,
    resolve_target,
)
from edgecompress.runtime.kernels import layer_times  # the per-layer times latency_aware_ptq measures

__all__ = ["ArrayReader", "QuantResult", "accuracy_aware_ptq", "compute_nodes", "gemm_to_matmul", "keep_float",
           "latency_aware_ptq", "layer_times", "preprocess", "preprocessed_model", "quantize_dynamic_onnx",
           "quantize_ptq", "resolve_target", "store_weights_int8"]
