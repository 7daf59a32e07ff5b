"""Helpers shared by the benchmark scripts: one cell = one measured configuration, cached as
JSON under benchmarks/cache/ so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "edgecompress" / "models" / "weights"  # the shipped teachers (package data)
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"


def cache_path(kind: str, key: dict[str, Any]) -> Path:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / f"{kind}-{h}.json"


def cached(kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]], *, fresh: bool = False) -> dict[str, Any]:
    from edgecompress.files import atomic_write_text

    CACHE.mkdir(parents=True, exist_ok=True)
    p = cache_path(kind, key)
    if p.exists() and not fresh:
        return json.loads(p.read_text())
    row = key | compute()
    atomic_write_text(p, json.dumps(row, indent=2))
    return row


def cached_files(kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]], *,
                 fresh: bool = False) -> dict[str, Any]:
    """``cached``, recomputed when a file the row records (``file``, ``fp32_file``) is gone."""
    row = cached(kind, key, compute, fresh=fresh)
    if any(not (ROOT / row[k]).exists() for k in ("file", "fp32_file") if k in row):
        row = cached(kind, key, compute, fresh=True)
    return row


class Files:
    """ONNX files of one model's cells under benchmarks/cache/<subdir>/, kept next to the cache so
    latency can be re-measured; a file's name is a hash of its cell's key."""

    def __init__(self, subdir: str) -> None:
        self.dir = CACHE / subdir
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: dict[str, Any], suffix: str) -> Path:
        h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.dir / f"{h}-{suffix}.onnx"


def onnx_metrics(path: Path, test=None) -> dict[str, Any]:
    """Finalizes ``path`` (as the pipeline does for what it ships) and returns what a cell records
    about it: file (relative to the repo), bytes, sha256, int8_op_fraction, and top1 on ``test``."""
    from edgecompress.export import finalize_onnx
    from edgecompress.files import sha256_file
    from edgecompress.runtime import file_bytes, kernel_report, make_session, run_batched

    finalize_onnx(path, {})  # strip debug info as the pipeline does for what it ships
    row = {"file": str(path.relative_to(ROOT)), "bytes": file_bytes(path), "sha256": sha256_file(path),
           "int8_op_fraction": kernel_report(path).int8_op_fraction}
    if test is not None:
        pred = run_batched(make_session(path, threads=1), test.x).argmax(1)
        row["top1"] = float((pred == test.y).mean())
    return row


def shipped_sizes(rel: str) -> dict[str, int]:
    """Bytes of a cell's file as edgecompress ships it today (re-finalized in place, so a file
    cached before a change to finalize_onnx gets it too) and as ``--compact-names`` ships it
    (computed in memory; names do not change what onnxruntime runs)."""
    import onnx

    from edgecompress.export import compact_graph_names, finalize_onnx
    from edgecompress.runtime import file_bytes

    path = ROOT / rel
    finalize_onnx(path, {})
    m = onnx.load(str(path))
    compact_graph_names(m.graph)
    return {"bytes": file_bytes(path), "bytes_compact": len(m.SerializeToString())}


def export_fp32(model, x, path: Path) -> Path:
    """torch -> ONNX with edgecompress's default exporter settings."""
    from edgecompress.config import ExportOnnxConfig
    from edgecompress.export import export_onnx

    export_onnx(model, x, path, ExportOnnxConfig())
    return path


def ptq_int8(fp32: Path, out: Path, calib) -> Path:
    """edgecompress PTQ with its defaults; returns the INT8 file."""
    from edgecompress.config import QuantConfig
    from edgecompress.quantize import quantize_ptq

    return quantize_ptq(fp32, out, calib, QuantConfig()).path


def ptq_int8_latency_aware(fp32: Path, out: Path, calib) -> dict[str, Any]:
    """edgecompress PTQ with --latency-aware-int8 (decided on this machine, 1 thread, batch 1; its
    FP32 layers store int8 weights, the default); returns what a cell records of the decision."""
    from edgecompress.config import QuantConfig
    from edgecompress.quantize import latency_aware_ptq

    cfg = QuantConfig(latency_aware="on")
    _, rec = latency_aware_ptq(fp32, out, calib, cfg, log=lambda m: print(f"    {m}", flush=True))
    return {"fp32_nodes": rec["fp32_nodes"], "latency_aware": {k: rec[k] for k in (
        "candidates", "p50_ms_all_int8", "p50_ms_final", "fp32_node_weights") if k in rec}}


def latency_round_robin(files: Iterable[str], *, runs: int, rounds: int, kind: str, key_extra: dict[str, Any],
                        fresh: bool = False, label: str = "") -> dict[str, float]:
    """p50 in ms per file (paths relative to the repo): the median over ``rounds`` rounds, each
    visiting every file once in a shuffled order (a fresh onnxruntime session per visit, 1 thread,
    batch 1, ``runs // rounds`` timed runs), so drifts and periodic noise hit files alike. Cached
    as ``kind`` keyed by the files' sha256s, runs, rounds and ``key_extra``; ``fresh`` re-measures."""
    from edgecompress.files import sha256_file
    from edgecompress.runtime import round_robin_p50

    shas = sorted((sha256_file(ROOT / f), f) for f in set(files))
    key = {"files": [s for s, _ in shas], "runs": runs, "rounds": rounds} | key_extra

    def compute():
        per = max(1, runs // rounds)
        print(f"[{label}] measuring {len(shas)} files round-robin ({rounds} x {per} runs)", flush=True)
        p50s = round_robin_p50([ROOT / f for _, f in shas], rounds=rounds, runs=per, warmup=10)
        return {"by_sha": {s: p for (s, _), p in zip(shas, p50s, strict=True)}}

    by_sha = cached(kind, key, compute, fresh=fresh)["by_sha"]
    return {f: by_sha[s] for s, f in shas}


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """Markdown table; cols = (header, key, format)."""
    out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, k, f in cols:
            v = r.get(k)
            cells.append("–" if v is None else format(v, f) if f else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
