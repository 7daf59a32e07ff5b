"""Accuracy-aware PTQ: keep the most quantization-sensitive layers in FP32 until the INT8 model
is within ``max_drop`` points of top-1 of the FP32 model it was made from.

Accuracy is measured on the *validation* split (part of the training data), never on the
evaluation set, so the evaluation numbers stay honest. Sensitivity of a compute node (Conv,
Gemm, MatMul) = how much the INT8 logits move closer to the FP32 logits (MSE) when only that
node is left in FP32. Nodes are then returned to FP32 greedily, most sensitive first, with the
top-1 re-measured after each, until the bound holds or nothing is left to try. Every step is
recorded so the report can say which layers stayed FP32 and why.

Known limit: onnxruntime may still fuse an excluded Conv that sits between two quantized
neighbours (e.g. residual Adds) into a QLinearConv, quantizing its constant weight itself; the
accuracy measured after each step is what counts, and it is measured on the real file.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import QuantConfig
from edgecompress.quantize.ptq import QuantResult, preprocessed_model, quantize_ptq
from edgecompress.runtime.kernels import COMPUTE_OPS
from edgecompress.runtime.session import make_session, run_batched


def compute_nodes(fp32: Path) -> list[str]:
    """Names of the quantizable compute nodes, as quantize_static sees them (after pre-processing)."""
    return [n.name for n in preprocessed_model(fp32).graph.node if n.op_type in COMPUTE_OPS]


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return run_batched(make_session(path, threads=2), x)


def accuracy_aware_ptq(
    fp32: Path,
    out: Path,
    calib_x: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: QuantConfig,
    max_drop: float,
    *,
    log: Callable[[str], None] = lambda m: None,
    sensitivity_samples: int = 512,
) -> tuple[QuantResult, dict[str, Any]]:
    ref = _logits(fp32, val_x)
    ref_top1 = float((ref.argmax(1) == val_y).mean())

    def attempt(excluded: list[str], dest: Path) -> tuple[QuantResult, np.ndarray]:
        c = dataclasses.replace(cfg, exclude_nodes=tuple(cfg.exclude_nodes) + tuple(excluded))
        res = quantize_ptq(fp32, dest, calib_x, c)
        return res, _logits(dest, val_x)

    res, q = attempt([], out)
    drop = 100 * (ref_top1 - float((q.argmax(1) == val_y).mean()))
    record: dict[str, Any] = {"max_drop": max_drop, "val_samples": len(val_x), "val_top1_fp32": ref_top1,
                              "steps": [{"fp32_nodes": [], "val_drop": drop}], "fp32_nodes": [], "sensitivity": {}}
    if drop <= max_drop:
        record["met"] = True
        return res, record
    log(f"INT8 loses {drop:.2f} points on the validation split (bound {max_drop}); measuring per-layer sensitivity")
    sub = slice(0, min(sensitivity_samples, len(val_x)))
    base_mse = float(np.mean((q[sub] - ref[sub]) ** 2))
    nodes = [n for n in compute_nodes(fp32) if n not in cfg.exclude_nodes]
    sens: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompress-fb-") as d:
        for n in nodes:
            _, qn = attempt([n], Path(d) / "one.onnx")
            sens[n] = base_mse - float(np.mean((qn[sub] - ref[sub]) ** 2))
    order = sorted(nodes, key=lambda n: sens[n], reverse=True)
    record["sensitivity"] = {n: sens[n] for n in order}
    kept: list[str] = []
    for n in order:
        kept.append(n)
        res, q = attempt(kept, out)
        drop = 100 * (ref_top1 - float((q.argmax(1) == val_y).mean()))
        record["steps"].append({"fp32_nodes": list(kept), "val_drop": drop})
        log(f"  {n} back to FP32 (sensitivity {sens[n]:.3g}): validation drop {drop:.2f} points")
        if drop <= max_drop:
            break
    record["fp32_nodes"] = kept
    record["met"] = drop <= max_drop
    return res, record
