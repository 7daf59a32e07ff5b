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
from edgecompress.errors import BadInput, GateFailed, one_line
from edgecompress.export.finalize import check_onnx
from edgecompress.files import atomic_write
from edgecompress.models.outputs import FlatOutputs, flatten, predict_outputs
from edgecompress.runtime.outputs import INPUT_NAME, SINGLE_OUTPUT_NAME
from edgecompress.runtime.session import make_session, run_batched_all

OUTPUT_NAME = SINGLE_OUTPUT_NAME
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
    max_abs: float  # the worst output's
    tol: float  # the bound actually applied: parity_tol * max(1, max|logit|) (the worst output's)
    passed: bool
    outputs: dict[str, dict[str, float | bool]] | None = None  # per output, when the model has several

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"max_abs": self.max_abs, "tol": self.tol, "passed": self.passed}
        return d | ({"outputs": self.outputs} if self.outputs else {})


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, cfg: ExportOnnxConfig) -> Path:
    """``model`` to ONNX at ``path``: input ``input``, outputs named as ``models.outputs.flatten``
    names them (one tensor: ``logits``), the batch dimension dynamic on every one of them."""
    model = model.eval()
    ex = export_example(example)
    names = list(names_of(model, ex))
    if names != [OUTPUT_NAME]:  # several outputs (or a dict of one): the exporters get a flat tuple
        model = FlatOutputs(model).eval()

    def write(tmp: Path) -> None:
        quiet = io.StringIO()
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            if cfg.exporter == Exporter.DYNAMO:
                prog = torch.onnx.export(
                    model, (ex,), dynamo=True, input_names=[INPUT_NAME], output_names=names,
                    dynamic_shapes=({0: batch_dim()},), opset_version=cfg.opset, external_data=False,
                    verbose=False,
                )
                prog.save(str(tmp), external_data=False)
            else:
                torch.onnx.export(
                    model, (ex,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                    output_names=names, dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
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


@torch.no_grad()
def names_of(model: nn.Module, x: torch.Tensor) -> tuple[str, ...]:
    """The output names of ``model`` (what its forward returns on ``x``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flatten(model(x))[0]


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray, tol: float) -> Parity:
    """Max-abs difference between PyTorch and onnxruntime on ``x``, per output; each output is
    bounded by ``tol * max(1, max|its values|)`` and the record names the worst."""
    refs = predict_outputs(model, x, batch_size=len(x) or 1)
    sess = make_session(onnx_path, threads=1)
    gots = run_batched_all(sess, x)
    if len(refs) != len(gots) or any(r.shape != g.shape for r, g in zip(refs, gots, strict=False)):
        raise GateFailed(f"{onnx_path.name} gives outputs of shapes {[list(g.shape) for g in gots]}, PyTorch "
                         f"{[list(r.shape) for r in refs]}; try --exporter torchscript")
    per = {}
    names = [o.name for o in sess.get_outputs()]
    for name, ref, got in zip(names, refs, gots, strict=True):
        max_abs = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        bound = tol * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        per[name] = {"max_abs": max_abs, "tol": bound, "passed": bool(max_abs <= bound)}
    worst = max(per.values(), key=lambda p: p["max_abs"] / p["tol"])
    return Parity(float(worst["max_abs"]), float(worst["tol"]), all(p["passed"] for p in per.values()),
                  per if len(per) > 1 else None)
