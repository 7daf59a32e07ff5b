"""Helpers shared by the benchmark scripts: one cell = one measured configuration, cached as
JSON under benchmarks/cache/ so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"


def cached(kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]], *, fresh: bool = False) -> dict[str, Any]:
    from edgecompress.io import atomic_write_text

    CACHE.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    p = CACHE / f"{kind}-{h}.json"
    if p.exists() and not fresh:
        return json.loads(p.read_text())
    row = key | compute()
    atomic_write_text(p, json.dumps(row, indent=2))
    return row


def fp32_and_int8(model, example, calib, *, runs: int, exporter: str = "dynamo") -> dict[str, Any]:
    """Exports ``model``, quantizes it with edgecompress PTQ, measures both (1 thread, batch 1)."""
    from edgecompress.bench import file_bytes, kernel_report, measure_latency
    from edgecompress.config import ExportOnnxConfig, QuantConfig
    from edgecompress.export import export_onnx
    from edgecompress.quantize import quantize_ptq

    with tempfile.TemporaryDirectory(prefix="ecbench-") as d:
        f32 = Path(d) / "fp32.onnx"
        export_onnx(model, example, f32, ExportOnnxConfig(exporter=exporter))
        q = quantize_ptq(f32, Path(d) / "int8.onnx", calib, QuantConfig()).path
        lat32 = measure_latency(f32, threads=1, batch=1, warmup=10, runs=runs)
        lat8 = measure_latency(q, threads=1, batch=1, warmup=10, runs=runs)
        return {"fp32_p50_ms": lat32.p50_ms, "int8_p50_ms": lat8.p50_ms, "fp32_bytes": file_bytes(f32),
                "int8_bytes": file_bytes(q), "int8_op_fraction": kernel_report(q).int8_op_fraction}


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
