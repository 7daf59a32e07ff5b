"""PyTorch -> ONNX export with a numeric parity gate.

We use torch.onnx's maintained exporter (``dynamo=True``, torch.export based) by default and
write a single self-contained file (``external_data=False``): our models are small, and one
file is what an edge deployment wants. The legacy TorchScript exporter stays selectable
(``exporter="torchscript"``) because it is ~10x faster to run, which matters inside loops.
The batch dimension is dynamic so the same file serves batch-1 latency and batched evaluation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import Exporter, ExportOnnxConfig
from edgecompress.errors import BadInput, one_line
from edgecompress.export.finalize import check_onnx
from edgecompress.files import atomic_write
from edgecompress.runtime.session import make_session, run_batched

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_BATCH = 4096  # the largest batch the exported files (and the QAT/INC graphs) accept


def export_example(example: torch.Tensor) -> torch.Tensor:
    """The example input every exporter traces with: float32, batch 2 when ``example`` has batch 1,
    so that the exporter cannot specialise the batch dimension to 1."""
    ex = example.detach().to(torch.float32)
    return ex.repeat(2, *([1] * (ex.dim() - 1))) if ex.shape[0] == 1 else ex


def batch_dim() -> torch.export.Dim:
    """The dynamic batch dimension of every exported graph."""
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


@dataclass(frozen=True)
class Parity:
    max_abs: float
    tol: float  # the bound actually applied: parity_tol * max(1, max|logit|)
    passed: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"max_abs": self.max_abs, "tol": self.tol, "passed": self.passed}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, cfg: ExportOnnxConfig) -> Path:
    model = model.eval()
    ex = export_example(example)

    def write(tmp: Path) -> None:
        quiet = io.StringIO()
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            if cfg.exporter == Exporter.DYNAMO:
                prog = torch.onnx.export(
                    model, (ex,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch_dim()},), opset_version=cfg.opset, external_data=False,
                    verbose=False,
                )
                prog.save(str(tmp), external_data=False)
            else:
                torch.onnx.export(
                    model, (ex,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=min(cfg.opset, 17), do_constant_folding=True,
                )

    try:
        atomic_write(path, write)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(
            f"ONNX export failed ({type(e).__name__}: {one_line(e)}); "
            "try --exporter torchscript, or simplify the model's forward (no data-dependent control flow)"
        ) from None
    check_onnx(path)
    return path


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray, tol: float) -> Parity:
    """Max-abs logit difference between PyTorch and onnxruntime on ``x``."""
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = run_batched(make_session(onnx_path, threads=1), x)
    max_abs = float(np.max(np.abs(ref - got)))
    bound = tol * max(1.0, float(np.max(np.abs(ref))))
    return Parity(max_abs, bound, bool(max_abs <= bound))
