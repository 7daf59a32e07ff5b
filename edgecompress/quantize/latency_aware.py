"""Latency-aware mixed precision: leave in FP32 the layers whose INT8 kernel is slower than their
FP32 kernel on this CPU, and keep that choice only if the whole model gets faster.

INT8 does not pay off everywhere. On x86, onnxruntime runs small convolutions (few channels at a
high resolution) faster as NCHWc float ``Conv`` than as ``QLinearConv``: on a pruned 28-px
ResNet-20 the first conv took 15 µs as INT8 and 3 µs as FP32, and the INT8 file was slower than
its own FP32 parent. The pass:

1. profiles the FP32 parent and the all-INT8 file with onnxruntime's profiler (optimised graphs,
   the threads and batch of the deployment; the median of ``profile_rounds`` alternating
   profiles of each) and maps every compute kernel back to its node in
   the pre-processed graph that ``quantize_static`` sees: INT8 kernels by their quantized weight
   (``<weight>_quantized``), float kernels by name or output tensor;
2. candidates = the nodes whose INT8 kernel is slower than their FP32 kernel by more than
   ``min_gain`` (the ``max_candidates`` with the largest gains: each costs a trial);
3. re-quantizes with every candidate excluded, then offers each candidate back to INT8, smallest
   per-layer gain first, timing each new file against the last one end to end (round-robin), and
   keeps each return that is not slower (a tie goes to INT8: one float island fewer, and 4x smaller
   weights when the FP32 layers keep float ones).
   Per-layer times do not see what a float island costs at its borders (a QuantizeLinear out, a
   DequantizeLinear in), the end-to-end time does;
4. keeps the final set only if the model is faster than all-INT8 by more than ``min_gain``,
   timed side by side once more;
5. never slower than the FP32 parent: the result is timed against its FP32 parent side by side;
   when it is not faster, the file shipped runs every layer in FP32 (the parent, with its weights
   stored as int8 as below: the parent's speed at the INT8 file's size), if that is the faster one.

The layers left in FP32 compute in float but, by default (``QuantConfig.latency_aware_weights =
"int8"``), store their weights as per-channel int8 behind ``Cast -> Mul`` (see
:func:`edgecompress.quantize.graph.store_weights_int8`): onnxruntime folds that back to a float weight
when the session starts, so they keep the FP32 kernel's speed at the INT8 file's size. (A
``DequantizeLinear`` would not do: onnxruntime keeps it unfolded for its QDQ fusions, and the float
conv behind it ran 23% slower.) An FP32 layer between two INT8 layers reads its own per-channel
``DequantizeLinear`` (:func:`edgecompress.quantize.graph.keep_float`, applied by ``quantize_ptq``), since
onnxruntime would otherwise re-quantize it when the session is created.

Every measurement is recorded, for the manifest. The decisions are measured by ``meter``: this
machine, or with ``export --bench-on DEST`` the device itself over ssh
(:mod:`edgecompress.runtime.remote`; the build host's end-to-end figures are then recorded beside
the device's), so the pass is for the machine the file will run on (or one of its CPU class).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import QuantConfig, WeightStorage
from edgecompress.files import atomic_write
from edgecompress.quantize.graph import store_weights_int8
from edgecompress.quantize.ptq import QuantResult, preprocessed_model, quantize_ptq
from edgecompress.runtime.kernels import COMPUTE_OPS, origin_keys
from edgecompress.runtime.meter import LOCAL, Meter, is_local

MAX_CANDIDATES = 8  # layers searched (one end-to-end trial each); the whole file is still checked against its parent
LayerTimes = Callable[[Path], dict[str, float]]  # file -> compute node (pre-processed graph) -> ms per run
Compare = Callable[[list[Path]], list[float]]  # files -> p50 ms each, measured side by side


def _median(rounds: list[dict[str, float]]) -> dict[str, float]:
    import statistics

    return {n: statistics.median(r[n] for r in rounds if n in r) for n in set().union(*rounds)}


def latency_aware_ptq(
    fp32: Path,
    out: Path,
    calib_x: np.ndarray,
    cfg: QuantConfig,
    *,
    threads: int = 1,
    batch: int = 1,
    min_gain: float = 0.03,
    max_candidates: int = MAX_CANDIDATES,
    rounds: int = 7,
    profile_rounds: int = 3,
    input_shape: tuple[int, ...] | None = None,
    log: Callable[[str], None] = lambda m: None,
    times: LayerTimes | None = None,
    compare: Compare | None = None,
    meter: Meter = LOCAL,
    start: QuantResult | None = None,
) -> tuple[QuantResult, dict[str, Any]]:
    """INT8 PTQ of ``fp32`` to ``out`` with the layers that are faster in FP32 left in FP32 (see
    the module doc). ``cfg.exclude_nodes`` stay FP32 whatever is measured. Every time is measured
    by ``meter`` (here, or the device over ssh: ``--bench-on``); ``times`` and ``compare`` replace
    the measurements (tests); ``start`` is the all-INT8 file of ``cfg`` when it is already made
    (its calibration is not run again)."""
    import onnx

    keys = origin_keys(preprocessed_model(fp32))
    if times is None:

        def times(p: Path) -> dict[str, float]:
            return meter.layer_times(p, keys, threads=threads, batch=batch, runs=100, input_shape=input_shape)

    # enough timed runs per visit for ~50 ms of work, so a 0.1 ms model is not timed 20 times
    per_visit = 0
    if compare is None:
        est = meter.measure_latency(fp32, threads=threads, batch=batch, warmup=5, runs=20,
                                    input_shape=input_shape).p50_ms
        per_visit = int(min(500, max(20, 50.0 / max(est, 1e-3))))

        def compare(paths: list[Path]) -> list[float]:
            return meter.round_robin_p50(paths, threads=threads, batch=batch, rounds=rounds, runs=per_visit,
                                         input_shape=input_shape)

    record: dict[str, Any] = {"threads": threads, "batch": batch, "min_gain": min_gain, "rounds": rounds,
                              "measured_on": meter.info["key"],
                              "fp32_node_weights": cfg.latency_aware_weights,
                              "profile_rounds": profile_rounds, "candidates": {},
                              "trials": [], "fp32_nodes": [], "kept": False}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgecompress-ls-") as d:
        tmp = Path(d)

        def quantize(excluded: list[str], name: str) -> tuple[QuantResult, Path]:
            c = dataclasses.replace(cfg, exclude_nodes=tuple(cfg.exclude_nodes) + tuple(excluded))
            path = tmp / f"{name}.onnx"
            res = quantize_ptq(fp32, path, calib_x, c, quiet=True)
            if excluded and cfg.latency_aware_weights == WeightStorage.INT8:  # the files timed are the files shipped
                m = onnx.load(str(path))
                store_weights_int8(m, excluded)
                onnx.save(m, str(path))
            return res, path

        if start is None:
            best_res, best = quantize([], "all-int8")
        else:
            best_res, best = start, tmp / "all-int8.onnx"
            shutil.copyfile(start.path, best)
        # per-layer times: median of rounds that alternate the two files, so a drift in the
        # machine's load shifts both alike (one profile each read the same convs as "INT8
        # slower" when idle and "INT8 faster" while another process shared the CPU)
        rounds_32: list[dict[str, float]] = []
        rounds_8: list[dict[str, float]] = []
        for _ in range(profile_rounds):
            rounds_32.append(times(fp32))
            rounds_8.append(times(best))
        t_fp32, t_int8 = _median(rounds_32), _median(rounds_8)
        gain = {n: t_int8[n] - t_fp32[n] for n in t_int8
                if n in t_fp32 and n not in cfg.exclude_nodes and t_int8[n] > t_fp32[n] * (1 + min_gain)}  # fmt: skip
        record["layer_ms"] = {n: {"int8": t_int8.get(n), "fp32": t_fp32.get(n)} for n in sorted(set(t_int8) | set(t_fp32))}
        ranked = sorted(gain, key=gain.get, reverse=True)
        if len(ranked) > max_candidates:  # each candidate costs a trial: the largest gains are searched
            record["candidates_left_int8"] = {n: gain.pop(n) for n in ranked[max_candidates:]}
            log(f"{len(ranked)} layer(s) run slower as INT8 than as FP32 here; the {max_candidates} with the largest "
                "gains are searched, the others stay INT8")
        record["candidates"] = {n: gain[n] for n in ranked[:max_candidates]}
        chosen: list[str] = []
        if gain:
            log(f"{len(gain)} layer(s) run slower as INT8 than as FP32 here: "
                + ", ".join(f"{n} ({t_int8[n] * 1e3:.1f} vs {t_fp32[n] * 1e3:.1f} µs)" for n in record["candidates"]))
            found = _Search(quantize, compare, record, min_gain, log).run(gain, best)
            if found is not None:
                chosen, best_res, best = found
        whole = _not_slower_than_parent(fp32, best, tmp / "all-fp32.onnx", cfg, compare, record, log)
        if whole is not None:
            chosen, best = whole, tmp / "all-fp32.onnx"
            best_res = QuantResult(best, best_res.calib_samples, best_res.settings | {"exclude_nodes": whole})
            record["p50_ms_final"] = record["parent"]["p50_ms_all_fp32"]
        record["fp32_nodes"] = chosen
        record["kept"] = bool(chosen)
        if chosen and not is_local(meter) and per_visit:  # the build host's figures beside the device's
            p_int8, p_final = LOCAL.round_robin_p50([tmp / "all-int8.onnx", best], threads=threads, batch=batch,
                                                    rounds=rounds, runs=per_visit, input_shape=input_shape)
            record["build_host"] = {"key": LOCAL.info["key"], "p50_ms_all_int8": p_int8, "p50_ms_final": p_final}
        atomic_write(out, lambda t: shutil.copyfile(best, t))
    settings = best_res.settings | {"latency_aware": {"fp32_nodes": chosen, "fp32_node_weights": cfg.latency_aware_weights,
                                                      "all_fp32": record["parent"]["all_fp32"]}}
    return QuantResult(out, best_res.calib_samples, settings), record


class _Search:
    """Every candidate in FP32, then each offered back to INT8, smallest per-layer gain first, and
    taken back when not slower (an isolated FP32 layer pays a Q/DQ pair at its borders); the final
    set is kept only if the model is ``min_gain`` faster than all-INT8, timed side by side."""

    def __init__(self, quantize: Callable[[list[str], str], tuple[QuantResult, Path]], compare: Compare,
                 record: dict[str, Any], min_gain: float, log: Callable[[str], None]) -> None:
        self.quantize, self.compare, self.record, self.min_gain, self.log = quantize, compare, record, min_gain, log

    def trial(self, nodes: list[str], against: Path, what: str) -> tuple[QuantResult, Path, float, float]:
        res, path = self.quantize(nodes, f"trial{len(self.record['trials'])}")
        p_against, p_new = self.compare([against, path])
        self.record["trials"].append({"fp32_nodes": list(nodes), "against": what, "p50_ms": p_new,
                                      "against_p50_ms": p_against})  # fmt: skip
        return res, path, p_new, p_against

    def run(self, gain: dict[str, float], all_int8: Path) -> tuple[list[str], QuantResult, Path] | None:
        record, log, min_gain = self.record, self.log, self.min_gain
        cur = list(record["candidates"])  # largest per-layer gain first
        cur_res, cur_path, p_cur, p_int8 = self.trial(cur, all_int8, "all-int8")
        record["trials"][-1]["kept"] = None  # the starting point; the last trial decides
        log(f"  all {len(cur)} in FP32: p50 {p_cur:.4f} ms against {p_int8:.4f} ms all-INT8")
        for n in sorted(gain, key=gain.get):
            if len(cur) == 1:
                break
            fewer = [c for c in cur if c != n]
            res, path, p_new, p_prev = self.trial(fewer, cur_path, "previous")
            back = p_new <= p_prev * (1 + min_gain / 3)  # a tie goes to INT8 (see the module doc)
            record["trials"][-1]["kept"] = back
            log(f"  {n} back to INT8: p50 {p_new:.4f} ms against {p_prev:.4f} ms: "
                + ("back in INT8" if back else "stays FP32"))
            if back:
                cur, cur_res, cur_path = fewer, res, path
        if len(record["trials"]) > 1:  # the final set against all-INT8, side by side
            p_int8, p_cur = self.compare([all_int8, cur_path])
            record["trials"].append({"fp32_nodes": list(cur), "against": "all-int8", "p50_ms": p_cur,
                                     "against_p50_ms": p_int8})  # fmt: skip
        faster = p_cur < p_int8 * (1 - min_gain)
        record["trials"][-1]["kept"] = faster
        record["p50_ms_all_int8"] = p_int8
        record["p50_ms_final"] = p_cur if faster else p_int8
        log(f"  {', '.join(cur)} in FP32: p50 {p_cur:.4f} ms against {p_int8:.4f} ms all-INT8: "
            + ("kept" if faster else f"not {min_gain:.0%} faster, all stay INT8"))
        return (cur, cur_res, cur_path) if faster else None


def _not_slower_than_parent(fp32: Path, best: Path, out: Path, cfg: QuantConfig, compare: Compare,
                            record: dict[str, Any], log: Callable[[str], None]) -> list[str] | None:
    """Step 5 of the module doc: ``best`` against its FP32 parent, side by side; when it is not
    faster, the parent with every layer's weights stored as int8 (``out``) is timed beside them,
    and its compute layers' names are returned when it is the faster file. With ``--latency-aware-weights
    float`` that file is the parent itself."""
    import onnx

    p_parent, p_best = compare([fp32, best])
    rec = record["parent"] = {"p50_ms_parent": p_parent, "p50_ms_int8": p_best, "all_fp32": False}
    if p_best < p_parent:
        log(f"  against its FP32 parent: p50 {p_best:.4f} ms against {p_parent:.4f} ms, faster")
        return None
    m = onnx.load(str(fp32))
    names = [n.name for n in m.graph.node if n.op_type in COMPUTE_OPS]
    if cfg.latency_aware_weights == WeightStorage.INT8:
        store_weights_int8(m, names)
    onnx.save(m, str(out))
    p_parent, p_best, p_whole = compare([fp32, best, out])
    rec |= {"p50_ms_parent_again": p_parent, "p50_ms_int8_again": p_best, "p50_ms_all_fp32": p_whole}
    if p_best < p_parent or p_whole >= p_best:
        log(f"  INT8 p50 {p_best:.4f} ms against its FP32 parent's {p_parent:.4f} ms: kept")
        return None
    rec["all_fp32"] = True
    log(f"  INT8 p50 {p_best:.4f} ms is not below its FP32 parent's {p_parent:.4f} ms: every layer stays FP32 "
        f"({p_whole:.4f} ms)" + (", weights stored as int8" if cfg.latency_aware_weights == WeightStorage.INT8 else ""))
    return names
