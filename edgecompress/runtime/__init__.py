"""The torch-free runtime: numpy + onnx + onnxruntime only. Sessions, latency (p50/p90, side by
side), per-operator profiles and the kernel report, CPU info, and ``predict``. It imports nothing
of edgecompress outside this package but ``edgecompress.errors``, so ``edgecompress bench`` and
``predict`` run on an edge board with just onnxruntime installed (tested)."""

from edgecompress.runtime.cpu import cpu_info
from edgecompress.runtime.kernels import COMPUTE_OPS, KernelReport, kernel_report, profile_ops
from edgecompress.runtime.latency import Latency, measure_latency, round_robin_p50
from edgecompress.runtime.session import file_bytes, make_session, run_batched, run_batched_all

__all__ = ["COMPUTE_OPS", "KernelReport", "Latency", "cpu_info", "file_bytes", "kernel_report", "make_session",
           "measure_latency", "profile_ops", "round_robin_p50", "run_batched", "run_batched_all"]
