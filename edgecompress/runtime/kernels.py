"""What onnxruntime really runs: int8 vs float kernels after its optimiser, the time per node and
per operator type from its profiler, and the map from an optimised kernel back to the node of the
file it came from (numpy + onnx + onnxruntime only).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgecompress.runtime.session import make_session, random_feed

# Compute ops: int8 kernels vs float kernels, as they appear after onnxruntime's optimiser.
INT8_COMPUTE = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
                "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM"}


FLOAT_COMPUTE = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "ConvTranspose"}


# the layers quantize_static quantizes with a weight: what QuantConfig.exclude_nodes and the passes
# that choose FP32 layers (accuracy-aware, latency-aware) refer to
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")

def consumers_of(graph) -> dict[str, list]:
    """Tensor name -> the nodes of ``graph`` that read it."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")


_INT8_WEIGHT_INPUT = 3  # QLinearConv, QGemm and QLinearMatMul take their weight as input 3


def origin_keys(pre_model) -> dict[str, str]:
    """Names an optimised kernel may carry -> the compute node of ``pre_model`` it comes from: the
    node's own name, its output, the output of an activation fused into it, and its weight."""
    consumers = consumers_of(pre_model.graph)
    inits = {i.name for i in pre_model.graph.initializer}
    keys: dict[str, str] = {}
    for n in pre_model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        keys[n.name] = keys[n.output[0]] = n.name
        if len(n.input) > 1 and n.input[1] in inits:
            keys["weight:" + n.input[1]] = n.name
        after = consumers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type in _ACTIVATIONS:
            keys[after[0].output[0]] = n.name
    return keys


def origin_node(node, keys: dict[str, str]) -> str | None:
    """The compute node (of the graph ``keys`` was built from) that optimised kernel ``node`` runs."""
    if node.op_type in INT8_COMPUTE:
        w = node.input[_INT8_WEIGHT_INPUT] if len(node.input) > _INT8_WEIGHT_INPUT else ""
        return keys.get("weight:" + w.removesuffix("_quantized"))
    name = node.name.removesuffix("_nchwc")  # onnxruntime's NCHWc transformer names a conv after its output
    return keys.get(name) or keys.get(node.name) or keys.get(node.output[0])


@dataclass(frozen=True)
class KernelReport:
    int8_ops: int
    float_ops: int
    int8_op_fraction: float  # int8 compute kernels / all compute kernels after optimisation
    float_islands: list[str]  # the file's compute nodes that run in float after optimisation
    op_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_report(path: Path | str) -> KernelReport:
    """Which compute nodes onnxruntime actually runs as int8 kernels, after its optimiser."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "optimized.onnx"
        make_session(path, 1, optimized_out=opt)
        m = onnx.load(str(opt))
    # float islands by the names of the file's own nodes (what a viewer shows, and what
    # --latency-aware-int8 lists), not the optimiser's (e.g. "<output>_nchwc"); a kernel that maps to
    # no node of the file keeps the optimiser's name
    keys = origin_keys(onnx.load(str(path), load_external_data=False))
    counts: dict[str, int] = {}
    int8, flt, islands = 0, 0, []
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
        if n.op_type in INT8_COMPUTE:
            int8 += 1
        elif n.op_type in FLOAT_COMPUTE:
            flt += 1
            islands.append(origin_node(n, keys) or n.name or n.op_type)
    total = int8 + flt
    return KernelReport(int8, flt, int8 / total if total else 0.0, islands, dict(sorted(counts.items())))


@dataclass(frozen=True)
class OpTime:
    op: str  # op type after onnxruntime's optimiser; grouped convs are labelled "(depthwise)"/"(grouped)"
    nodes: int
    ms_per_run: float
    share: float  # of the time spent in node kernels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OpProfile:
    runs: int
    kernel_ms_per_run: float  # sum of node kernel times; the rest of a run is session overhead
    ops: list[OpTime]  # slowest first

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "kernel_ms_per_run": self.kernel_ms_per_run, "ops": [o.to_dict() for o in self.ops]}


def _conv_kinds(model) -> dict[str, str]:
    """Node name -> "(depthwise)" or "(grouped)" for convolutions with group > 1."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    kinds = {}
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1:
            w = shapes.get(n.input[3] if n.op_type == "QLinearConv" else n.input[1], [])
            kinds[n.name] = "(depthwise)" if len(w) > 1 and w[1] == 1 else "(grouped)"
    return kinds


@dataclass(frozen=True)
class NodeTimes:
    runs: int
    ms: dict[str, float]  # node of the optimised graph -> kernel ms per run
    op: dict[str, str]  # node -> op type (grouped convs labelled "(depthwise)"/"(grouped)")
    model: Any  # the optimised graph (onnx.ModelProto) the node names refer to


def node_times(path: Path | str, *, threads: int = 1, batch: int = 1, warmup: int = 20, runs: int = 100,
               input_shape: tuple[int, ...] | None = None, seed: int = 0) -> NodeTimes:
    """Kernel time per node of onnxruntime's optimised graph (fused QLinearConv, FusedConv, ...),
    from onnxruntime's own profiler; warm-up runs are left out."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "optimized.onnx"
        sess = make_session(path, threads, optimized_out=opt, profile_prefix=Path(d) / "profile")
        model = onnx.load(str(opt))
        feed = random_feed(sess, batch, input_shape, seed)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    kinds = _conv_kinds(model)
    timed = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    start = timed[0]["ts"] if timed else 0
    n = len(timed) or warmup + runs  # without run events (other onnxruntime builds) warm-up stays in
    total: dict[str, float] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        ops[node] = f"{op} {kinds[node]}" if node in kinds else op
        total[node] = total.get(node, 0.0) + e["dur"] / 1e3
    return NodeTimes(n, {k: v / n for k, v in total.items()}, ops, model)


def profile_ops(path: Path | str, *, threads: int = 1, batch: int = 1, warmup: int = 20, runs: int = 100,
                input_shape: tuple[int, ...] | None = None, seed: int = 0) -> OpProfile:
    """Where the time of one run goes, per operator type (see :func:`node_times`)."""
    nt = node_times(path, threads=threads, batch=batch, warmup=warmup, runs=runs, input_shape=input_shape, seed=seed)
    per_op: dict[str, float] = {}
    count: dict[str, int] = {}
    for node, ms in nt.ms.items():
        per_op[nt.op[node]] = per_op.get(nt.op[node], 0.0) + ms
        count[nt.op[node]] = count.get(nt.op[node], 0) + 1
    total = sum(per_op.values())
    ops = sorted((OpTime(op, count[op], ms, ms / total if total else 0.0) for op, ms in per_op.items()),
                 key=lambda o: -o.ms_per_run)
    return OpProfile(nt.runs, total, ops)


def layer_times(path: Path, keys: dict[str, str], *, threads: int, batch: int, runs: int = 200,
                input_shape: tuple[int, ...] | None = None) -> dict[str, float]:
    """Kernel ms per run of each compute node of ``path``, named by ``keys`` (:func:`origin_keys` of the
    graph the names refer to, e.g. the pre-processed graph that ``quantize_static`` sees)."""
    nt = node_times(path, threads=threads, batch=batch, runs=runs, input_shape=input_shape)
    out: dict[str, float] = {}
    for n in nt.model.graph.node:
        if n.op_type in INT8_COMPUTE or n.op_type in FLOAT_COMPUTE:
            origin = origin_node(n, keys)
            if origin is not None and n.name in nt.ms:
                out[origin] = out.get(origin, 0.0) + nt.ms[n.name]
    return out
