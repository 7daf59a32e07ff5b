"""Latency of ONNX files with onnxruntime: one file, or several side by side in shuffled rounds
(numpy + onnxruntime only)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.runtime.cpu import cpu_info
from edgecompress.runtime.kernels import profile_ops
from edgecompress.runtime.session import file_bytes, make_session, ort_errors, random_feed


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
    clock: str = "wall"  # "wall": elapsed time; "cpu": the process's CPU time (see CLOCKS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# "cpu" leaves out the time the process waits for a core, which on a loaded, shared machine is most
# of a long run's wall time; it measures the same work only with 1 intra-op thread (the run
# executes on the calling thread) and still includes what sharing caches and cores costs
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure_latency(path: Path | str, *, threads: int = 1, batch: int = 1, warmup: int = 20, runs: int = 200,
                    input_shape: tuple[int, ...] | None = None, seed: int = 0, clock: str = "wall") -> Latency:
    tick = CLOCKS[clock]
    sess = make_session(path, threads)
    feed = random_feed(sess, batch, input_shape, seed)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = tick()
        sess.run(None, feed)
        times.append((tick() - t0) * 1e3)
    p50 = float(np.percentile(times, 50))
    return Latency(threads, batch, runs, p50, float(np.percentile(times, 90)), statistics.fmean(times),
                   min(times), batch * 1e3 / p50 if p50 > 0 else float("inf"), clock)


def round_robin(paths: list[Path | str], *, threads: int = 1, batch: int = 1, rounds: int = 5,
                runs: int = 100, warmup: int = 10, seed: int = 0,
                input_shape: tuple[int, ...] | None = None, clock: str = "wall") -> list[list[Latency]]:
    """Every file's latency in ``rounds`` rounds that each visit every file once, in a shuffled
    order, with ``runs`` timed runs: drifts and periodic noise of a shared machine then hit all
    files alike, so the ratios between them hold. Returns the rounds' measurements per file."""
    order = list(range(len(paths)))
    out: list[list[Latency]] = [[] for _ in paths]
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            out[i].append(measure_latency(paths[i], threads=threads, batch=batch, warmup=warmup, runs=runs,
                                          input_shape=input_shape, seed=seed, clock=clock))
    return out


def over_rounds(rounds: list[Latency]) -> tuple[float, float]:
    """(p50, p90) in ms of one file over the rounds of :func:`round_robin`: the medians of its
    rounds' p50s and p90s (one round's hiccup moves neither)."""
    return statistics.median(lat.p50_ms for lat in rounds), statistics.median(lat.p90_ms for lat in rounds)


def round_robin_p50(paths: list[Path | str], **kw: Any) -> list[float]:
    """p50 latency (ms) per file over the rounds of :func:`round_robin` (see :func:`over_rounds`)."""
    return [over_rounds(rounds)[0] for rounds in round_robin(paths, **kw)]



def bench_file(path: Path, *, threads: list[int], batch: list[int], warmup: int, runs: int,
               input_shape: tuple[int, ...] | None = None, profile: bool = False, clock: str = "wall") -> dict[str, Any]:
    """``edgecompress bench FILE``: latency for every threads x batch (and, with ``profile``, the time
    per operator type from a separate profiled session, since the profiler slows every run)."""
    rows = []
    for t in threads:
        for b in batch:
            kw = {"threads": t, "batch": b, "warmup": warmup, "runs": runs, "input_shape": input_shape}
            with ort_errors(path):
                row = measure_latency(path, **kw, clock=clock).to_dict()
                if profile:
                    row["profile"] = profile_ops(path, **kw).to_dict()
            rows.append(row)
    return {"model": str(path), "bytes": file_bytes(path), "cpu": cpu_info(), "results": rows}


def compare_files(paths: list[Path], *, threads: list[int], batch: list[int], warmup: int, runs: int, rounds: int,
                  input_shape: tuple[int, ...] | None = None, profile: bool = False,
                  clock: str = "wall") -> dict[str, Any]:
    """Several files side by side: for each threads x batch, ``rounds`` rounds that each time every
    file (``runs`` / rounds runs) in a shuffled order, so that the machine's drift hits all files
    alike; each file's p50/p90 is the median over the rounds, and speed-up and size are ratios to
    the first file."""
    sizes = [file_bytes(p) for p in paths]
    for p in paths:  # one quick run each first: a file onnxruntime cannot run is named before any timing
        with ort_errors(p):
            measure_latency(p, threads=1, batch=min(batch), warmup=0, runs=1, input_shape=input_shape)
    per_visit = max(1, runs // rounds)
    results = []
    for t in threads:
        for b in batch:
            lat = round_robin(paths, threads=t, batch=b, rounds=rounds, runs=per_visit, warmup=warmup,
                              input_shape=input_shape, clock=clock)
            p50, p90 = zip(*(over_rounds(r) for r in lat), strict=True)
            fastest = [min(x.min_ms for x in r) for r in lat]  # what a loaded, shared machine disturbs least
            files = [{"model": str(p), "p50_ms": p50[i], "p90_ms": p90[i], "min_ms": fastest[i],
                      "speedup": p50[0] / p50[i] if p50[i] > 0 else float("inf"),
                      "speedup_min": fastest[0] / fastest[i] if fastest[i] > 0 else float("inf"),
                      "throughput_per_s": b * 1e3 / p50[i] if p50[i] > 0 else float("inf")}
                     for i, p in enumerate(paths)]  # fmt: skip
            if profile:
                for f, p in zip(files, paths, strict=True):
                    f["profile"] = profile_ops(p, threads=t, batch=b, warmup=warmup, runs=runs,
                                               input_shape=input_shape).to_dict()
            results.append({"threads": t, "batch": b, "rounds": rounds, "runs_per_round": per_visit, "clock": clock,
                            "files": files})
    return {"models": [{"model": str(p), "bytes": n, "smaller": sizes[0] / n} for p, n in zip(paths, sizes, strict=True)],
            "cpu": cpu_info(), "baseline": str(paths[0]), "results": results}


@dataclass(frozen=True)
class Protocol:
    """The default measurement protocol, shared by ``edgecompress bench`` and the run's benchmark
    (``config.BenchConfig``): 1 intra-op thread, batch 1, 20 warm-up runs, 200 timed runs."""

    threads: int = 1
    batch: int = 1
    warmup: int = 20
    runs: int = 200
    rounds: int = 5  # side by side: rounds of runs/rounds runs of every file


PROTOCOL = Protocol()
