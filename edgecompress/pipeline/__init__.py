"""The pipeline: a typed run context, the stages in order (``stages``, ``int8``), the closing
evaluation, benchmark and manifest (``verify``), the staging directory (``rundir``) and the runners.

``run`` picks the runner from the input by name (``importlib``), as ``cli.COMMANDS`` and
``quantize.registry`` do: a PyTorch model goes through ``runner`` (prune, distil, quantize), an
ONNX file through ``onnx_input`` (quantize only), which loads no torch."""

from __future__ import annotations

import importlib
from typing import Any

from edgecompress.config import RunConfig
from edgecompress.config.onnx_input import is_onnx_model
from edgecompress.pipeline.context import RunResult

# kind of input -> the module whose run(cfg, log=...) runs it; imported only when used
RUNNERS: dict[str, str] = {"pytorch": "edgecompress.pipeline.runner", "onnx": "edgecompress.pipeline.onnx_input"}


def run(cfg: RunConfig, **kwargs: Any) -> RunResult:
    """Runs the whole pipeline for ``cfg``; returns the result record (out_dir, manifest, exit_code)."""
    kind = "onnx" if is_onnx_model(cfg.model.name) else "pytorch"
    return importlib.import_module(RUNNERS[kind]).run(cfg, **kwargs)


__all__ = ["RUNNERS", "RunResult", "run"]
