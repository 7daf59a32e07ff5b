"""Latency, size and kernel analysis of ONNX files with onnxruntime — numpy + onnxruntime only.

This module must not import torch: ``edgecompress bench`` and ``predict`` run on an edge
board with just numpy and onnxruntime installed (tested with torch made unimportable).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
              "asimd", "asimddp", "i8mm")  # fmt: skip
# Compute ops: int8 kernels vs float kernels, as they appear after onnxruntime's optimiser.
INT8_COMPUTE = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
                "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM"}
FLOAT_COMPUTE = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "ConvTranspose"}


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and model in ("", platform.machine(), platform.processor()):
                model = val.strip()
            elif key in ("flags", "Features"):
                flags |= set(val.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "isa": {f: f in flags for f in INT8_FLAGS},
    }


def make_session(path: Path | str, threads: int = 1, optimized_out: Path | None = None,
                 profile_prefix: Path | None = None):
    """An onnxruntime CPU session with graph optimisation ALL (QDQ fusion needs >= EXTENDED);
    ``profile_prefix`` turns onnxruntime's profiler on (``end_profiling()`` returns its file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_batched(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def input_shape_of(sess, batch: int) -> tuple[int, ...]:
    shape = []
    for i, d in enumerate(sess.get_inputs()[0].shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise ValueError(f"input dimension {i} is symbolic ({d!r}); pass --input-shape")
    if shape[0] != batch and not isinstance(sess.get_inputs()[0].shape[0], int):
        shape[0] = batch
    return tuple(shape)


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}  # fmt: skip


@dataclass(frozen=True)
class Latency:
    threads: int
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float  # samples per second at p50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_feed(sess, batch: int, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform random input of ``sess`` at ``batch`` (``input_shape`` for symbolic dims)."""
    inp = sess.get_inputs()[0]
    shape = tuple(input_shape) if input_shape else input_shape_of(sess, batch)
    x = np.random.default_rng(seed).random((batch, *shape[1:])).astype(_NP_TYPES.get(inp.type, np.float32))
    return {inp.name: x}


def measure_latency(path: Path | str, *, threads: int = 1, batch: int = 1, warmup: int = 20, runs: int = 200,
                    input_shape: tuple[int, ...] | None = None, seed: int = 0) -> Latency:
    sess = make_session(path, threads)
    feed = random_feed(sess, batch, input_shape, seed)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    p50 = float(np.percentile(times, 50))
    return Latency(threads, batch, runs, p50, float(np.percentile(times, 90)), statistics.fmean(times),
                   min(times), batch * 1e3 / p50 if p50 > 0 else float("inf"))


def file_bytes(path: Path | str) -> int:
    """Size of an ONNX model including any external-data files it references."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for init in m.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                f = path.parent / entry.value
                if f.exists():
                    total += f.stat().st_size
    return total


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

    from edgecompress.quant_speed import origin_keys, origin_node

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
    import json

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


def round_robin(paths: list[Path | str], *, threads: int = 1, batch: int = 1, rounds: int = 5,
                runs: int = 100, warmup: int = 10, seed: int = 0,
                input_shape: tuple[int, ...] | None = None) -> list[list[Latency]]:
    """Every file's latency in ``rounds`` rounds that each visit every file once, in a shuffled
    order, with ``runs`` timed runs: drifts and periodic noise of a shared machine then hit all
    files alike, so the ratios between them hold. Returns the rounds' measurements per file."""
    import random

    order = list(range(len(paths)))
    out: list[list[Latency]] = [[] for _ in paths]
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            out[i].append(measure_latency(paths[i], threads=threads, batch=batch, warmup=warmup, runs=runs,
                                          input_shape=input_shape, seed=seed))
    return out


def over_rounds(rounds: list[Latency]) -> tuple[float, float]:
    """(p50, p90) in ms of one file over the rounds of :func:`round_robin`: the medians of its
    rounds' p50s and p90s (one round's hiccup moves neither)."""
    return statistics.median(lat.p50_ms for lat in rounds), statistics.median(lat.p90_ms for lat in rounds)


def round_robin_p50(paths: list[Path | str], **kw: Any) -> list[float]:
    """p50 latency (ms) per file over the rounds of :func:`round_robin` (see :func:`over_rounds`)."""
    return [over_rounds(rounds)[0] for rounds in round_robin(paths, **kw)]
