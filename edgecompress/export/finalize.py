"""What the shipped ONNX files carry, and what they shed: consumer-facing metadata (input layout,
shape, normalisation, classes, lineage), no debugger-only data, optionally short names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecompress.errors import GateFailed, one_line
from edgecompress.files import atomic_write_bytes


def metadata(*, version: str, input_shape: tuple[int, ...], classes: tuple[str, ...], num_classes: int,
             source_model: str, weights_sha256: str | None) -> dict[str, str]:
    """The metadata_props of every artifact (``edgecompress predict`` reads them)."""
    return {
        "edgecompress.version": version,
        "input.layout": "NCHW",
        "input.shape": json.dumps(list(input_shape)),
        "input.normalization": "float32 in [0,1]: uint8 pixels / 255",
        "classes": json.dumps(list(classes) or [str(i) for i in range(num_classes)]),
        "source.model": source_model,
        "source.weights_sha256": weights_sha256 or "",
    }


def finalize_onnx(path: Path, meta: dict[str, str], *, compact_names: bool = False,
                  keep_node_names: frozenset[str] | set[str] = frozenset()) -> None:
    """Writes the consumer-facing metadata into the ONNX file (metadata_props) and drops what
    only a debugger needs: the dynamo exporter's per-node source metadata, graph signature and
    doc strings, and intermediate value_info (onnxruntime infers shapes). That is ~30% of a small
    INT8 file.
    ``compact_names`` also renames every tensor and node to a short id (compact_graph_names),
    except the nodes named in ``keep_node_names`` (those the manifest refers to)."""
    import onnx

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
    """onnx.checker (full check, with shape inference) on a file the run writes; GateFailed names it."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise GateFailed(f"{path.name} fails onnx.checker: {one_line(e)}") from None
