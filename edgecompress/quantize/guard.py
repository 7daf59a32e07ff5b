"""The mixed-range guard: outputs whose channels span ranges orders of magnitude apart keep their
tail in float.

A detector exported YOLO-style returns one tensor holding box coordinates in pixels (0..640) next
to class scores (0..1). Static INT8 gives that tensor, and the Concat/Mul/Add feeding it, one scale
per tensor: a step of ~2.5 px wipes out every score, and mAP collapses to ~0 (onnxruntime issues
#14233 and #10787; Ultralytics quantizes only Conv/Gemm/MatMul for that reason). The guard measures
each output's per-channel ranges on the calibration samples with the FP32 file, and for an output
whose widest channel range is ``ratio`` times its narrowest or more, names the nodes from that output
back to (and including) the compute layers that produce it, so that ``QuantConfig.exclude_nodes``
keeps them in float. The record says which outputs, which channels' ranges and which nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.quantize.ptq import preprocessed_model
from edgecompress.runtime.fidelity import channel_axis
from edgecompress.runtime.session import make_session, run_batched_all

DEFAULT_RATIO = 100.0  # two orders of magnitude between the widest and the narrowest channel range
_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def channel_ranges(a: np.ndarray) -> np.ndarray:
    """max - min of every channel (``fidelity.channel_axis``) of ``a``."""
    ax = channel_axis(a)
    r = np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1)
    return r.max(1) - r.min(1)


def tail_nodes(graph, output: str) -> list[str]:
    """The nodes from graph output ``output`` back to the compute layers that produce it (included)."""
    producer = {o: n for n in graph.node for o in n.output}
    names, stack, seen = [], [output], set()
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        names.append(n.name)
        if n.op_type not in _COMPUTE:
            stack.extend(i for i in n.input if i)
    return names


def mixed_range_guard(src: Path, calib_x: np.ndarray, ratio: float = DEFAULT_RATIO) -> dict[str, Any]:
    """Which outputs of ``src`` mix ranges ``ratio`` apart, and the nodes to keep in float for them."""
    sess = make_session(src, threads=1)
    outs = run_batched_all(sess, calib_x[:256])
    guarded = []
    for o, a in zip(sess.get_outputs(), outs, strict=True):
        if a.ndim < 2:
            continue
        span = channel_ranges(a.astype(np.float64))
        live = span[span > 0]
        if len(live) < 2 or live.max() / live.min() < ratio:
            continue
        guarded.append({"output": o.name, "channel_axis": channel_axis(a), "widest_range": float(live.max()),
                        "narrowest_range": float(live.min()), "ratio": float(live.max() / live.min()),
                        "widest_channel": int(np.argmax(span)),
                        "narrowest_channel": int(np.flatnonzero(span == live.min())[0])})
    nodes: list[str] = []
    if guarded:
        graph = preprocessed_model(src).graph
        for g in guarded:
            g["nodes"] = tail_nodes(graph, g["output"])
            nodes += [n for n in g["nodes"] if n not in nodes]
    return {"ratio": ratio, "outputs": guarded, "nodes": nodes,
            "why": "channel ranges of one output differ by >= ratio: one INT8 scale would wipe out the narrow "
                   "channels, so these nodes stay float"}
