"""The device of the PyTorch stages (``--device auto|cpu|cuda[:N]|mps``).

CPU is the default and its code path is today's: no autocast, no pinned memory, the same tensors,
so the same seed gives the same weights. On CUDA the training step runs under bfloat16 autocast
when the GPU supports it (no loss scaling needed) and batches come from pinned memory. ONNX export
and INT8 (onnxruntime) always run on the CPU: models are moved back before export.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from edgecompress.errors import BadInput


def resolve(spec: str) -> torch.device:
    """``auto`` = cuda if available, else mps, else cpu; an unavailable device is a one-line BadInput."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {spec}: this machine has no CUDA GPU usable by torch {torch.__version__} "
                           "(torch.cuda.is_available() is False); use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0..")
        return dev
    if spec == "mps":
        if not _mps():
            raise BadInput("--device mps: Apple's Metal backend is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise BadInput(f"--device {spec}: use auto, cpu, cuda, cuda:N or mps")


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def autocast(device: torch.device):
    """bfloat16 autocast on a CUDA GPU that supports it; nothing elsewhere (CPU results unchanged)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pin(device: torch.device) -> bool:
    return device.type == "cuda"


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device
