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

from edgecompress.config import ExportOnnxConfig
from edgecompress.errors import BadInput, GateFailed
from edgecompress.io import atomic_write

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class Parity:
    max_abs: float
    tol: float  # the bound actually applied: parity_tol * max(1, max|logit|)
    passed: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"max_abs": self.max_abs, "tol": self.tol, "passed": self.passed}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, cfg: ExportOnnxConfig) -> Path:
    model = model.eval()
    # Export with batch 2 so the exporter cannot specialise the batch dimension to 1.
    ex = example.repeat(2, 1, 1, 1) if example.shape[0] == 1 else example

    def write(tmp: Path) -> None:
        quiet = io.StringIO()
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            if cfg.exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                prog = torch.onnx.export(
                    model, (ex,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},), opset_version=cfg.opset, external_data=False,
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
            f"ONNX export failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:240] if str(e).strip() else ''}); "
            "try --exporter torchscript, or simplify the model's forward (no data-dependent control flow)"
        ) from None
    check_onnx(path)
    return path


def finalize_onnx(path: Path, meta: dict[str, str], *, compact_names: bool = False,
                  keep_node_names: frozenset[str] | set[str] = frozenset()) -> None:
    """Writes the consumer-facing metadata into the ONNX file (metadata_props) and drops what
    only a debugger needs: the dynamo exporter's per-node source metadata, graph signature and
    doc strings, and intermediate value_info (onnxruntime infers shapes). That is ~30% of a small
    INT8 file.
    ``compact_names`` also renames every tensor and node to a short id (compact_graph_names),
    except the nodes named in ``keep_node_names`` (those the manifest refers to)."""
    import onnx

    from edgecompress.io import atomic_write_bytes

    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del m.graph.value_info[:]
    del m.graph.metadata_props[:]  # the dynamo exporter's graph signature: ~8 KB of parameter names
    for v in (*m.graph.input, *m.graph.output):
        del v.metadata_props[:]
    if compact_names:
        compact_graph_names(m.graph, keep_node_names)
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    atomic_write_bytes(path, m.SerializeToString())


def compact_graph_names(graph, keep_node_names: frozenset[str] | set[str] = frozenset()) -> None:
    """Renames the graph's internal tensors to base-36 ids and its nodes to ``OpType_i``; the
    graph's inputs and outputs keep their names, so callers see the same interface, and so do
    the nodes in ``keep_node_names`` (e.g. the layers a manifest lists as kept in FP32). Names
    are free-form in ONNX; a quantized file's (``layer1.0.conv1.weight_quantized_scale``...)
    cost about 16 KB of an 89 KB ResNet-20."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    new: dict[str, str] = {"": ""}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in new:
            new[name] = np.base_repr(len(new) - 1, 36).lower()
        return new[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for t in graph.sparse_initializer:
        t.values.name = short(t.values.name)
    for i, node in enumerate(graph.node):
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise ValueError(f"compact_names: node {node.name} ({node.op_type}) has a subgraph; not supported")
        if node.name not in keep_node_names:
            node.name = f"{node.op_type}_{i}"
            while node.name in keep_node_names:  # a kept name of that form: stay unique
                node.name += "_"
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise GateFailed(f"{path.name} fails onnx.checker: {str(e).splitlines()[0][:240]}") from None


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray, tol: float) -> Parity:
    """Max-abs logit difference between PyTorch and onnxruntime on ``x``."""
    from edgecompress.bench import make_session, run_batched

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = run_batched(make_session(onnx_path, threads=1), x)
    max_abs = float(np.max(np.abs(ref - got)))
    bound = tol * max(1.0, float(np.max(np.abs(ref))))
    return Parity(max_abs, bound, bool(max_abs <= bound))
