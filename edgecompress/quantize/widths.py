"""Latency against channel count on the measuring device: the width table of ``--structure``.

INT8 kernels are fastest at some channel counts: on this project's AVX512-VNNI machines a 3x3
INT8 convolution with 104 or 120 channels costs about what 112 or 128 cost (26% and 8% fewer MACs
per ms: benchmarks/results/conv_width-28.json), so a fixed ``--round-to 8`` leaves channels that
cost time and do nothing. A table times one convolution of a kind (C -> C channels, + ReLU, 28x28)
for C = 8, 16, ..., 128, as the run ships it (INT8 static QDQ, or FP32 for a run without INT8),
on the device that measures the run (this CPU, or ``export --bench-on DEST``), and
:meth:`WidthTable.granularity` picks the channel multiple whose widths run the most MACs per ms.
The kinds (``LayerKind``): a dense 3x3 conv, a pointwise 1x1 conv and a depthwise 3x3 conv, since
their kernels block channels differently (MobileNetV2 ran 31% faster in INT8 at multiples of 16
where the dense table said 8).

A table is measured once per device, onnxruntime version, thread count, precision and kind and
cached as JSON in ``$EDGECOMPRESS_CACHE`` (default ``$XDG_CACHE_HOME/edgecompress``, else
``~/.cache/edgecompress``). ``benchmarks/conv_width.py`` prints the same measurement side by side.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import LayerKind, QuantConfig
from edgecompress.files import atomic_write_text
from edgecompress.quantize.ptq import quantize_ptq
from edgecompress.runtime.meter import Meter, is_local

WIDTHS = tuple(range(8, 129, 8))  # channel counts timed
HW = 28  # feature-map side: the middle stages of an ImageNet-size CNN
CHOICES = (8, 16, 32)  # the channel multiples --structure chooses from
MIN_WIDTH = 32  # narrower layers are overhead-bound: they do not decide the multiple
TOLERANCE = 0.03  # a coarser multiple must run >3% more MACs per ms than a finer one to be chosen
PASSES = 3  # shuffled passes over the widths; a width's figure is its fastest pass's p50
SCHEMA = 1


def cache_dir() -> Path:
    env = os.environ.get("EDGECOMPRESS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecompress"


def macs(kind: LayerKind, c: int, hw: int = HW) -> int:
    """MACs of the table's convolution of ``kind`` with C channels."""
    per_pixel = {LayerKind.DENSE: c * c * 9, LayerKind.POINTWISE: c * c, LayerKind.DEPTHWISE: c * 9}[LayerKind(kind)]
    return per_pixel * hw * hw


def conv_file(c: int, d: Path, *, int8: bool, hw: int = HW, kind: LayerKind = LayerKind.DENSE) -> Path:
    """One convolution of ``kind`` (dense 3x3, pointwise 1x1, depthwise 3x3), C -> C (+ ReLU) at
    ``hw`` x ``hw``, random weights; INT8 static QDQ (onnxruntime, the run's defaults) when ``int8``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind = LayerKind(kind)
    rng = np.random.default_rng(0)
    k, cin, group = (1, c, 1) if kind == LayerKind.POINTWISE else (3, 1, c) if kind == LayerKind.DEPTHWISE else (3, c, 1)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (c, cin, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[k // 2] * 4, group=group, name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, hw, hw])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    tag = "" if kind == LayerKind.DENSE else f"{kind}-"
    fp32 = d / f"{tag}c{c}.onnx"
    onnx.save(m, str(fp32))
    if not int8:
        return fp32
    q = d / f"{tag}c{c}.int8.onnx"
    quantize_ptq(fp32, q, np.random.default_rng(1).random((8, c, hw, hw), dtype=np.float32), QuantConfig(), quiet=True)
    return q


@dataclass
class WidthTable:
    device: str
    precision: str  # int8 | fp32
    threads: int
    onnxruntime: str
    ms: dict[int, float]  # channel count -> p50 ms of the conv (fastest pass)
    cached: bool = False
    path: str | None = field(default=None, compare=False)
    kind: LayerKind = LayerKind.DENSE

    def mmac_per_ms(self) -> dict[int, float]:
        return {c: macs(self.kind, c) / 1e6 / t for c, t in self.ms.items() if t > 0}

    def efficiency(self) -> dict[int, float]:
        """Per choice of channel multiple: the mean MMAC/ms over the table's widths (>= MIN_WIDTH)
        that are multiples of it."""
        rate = self.mmac_per_ms()
        return {g: statistics.fmean([r for c, r in rate.items() if c % g == 0 and c >= MIN_WIDTH])
                for g in CHOICES if any(c % g == 0 and c >= MIN_WIDTH for c in rate)}

    def granularity(self) -> int:
        """The channel multiple to round to: the finest whose widths run within TOLERANCE of the
        best MACs per ms (a finer multiple keeps more of the accuracy the budget allows)."""
        eff = self.efficiency()
        best = max(eff.values())
        return min(g for g, e in eff.items() if e >= (1 - TOLERANCE) * best)

    def to_dict(self) -> dict[str, Any]:
        eff = self.efficiency()
        return {"kind": str(self.kind), "device": self.device, "precision": self.precision, "threads": self.threads,
                "onnxruntime": self.onnxruntime, "hw": HW, "p50_ms": {str(c): round(t, 5) for c, t in self.ms.items()},
                "mmac_per_ms_by_multiple": {str(g): round(e, 1) for g, e in eff.items()},
                "round_to": self.granularity(), "cached": self.cached, "file": self.path}


def table_file(cache: Path, device: str, onnxruntime: str, precision: str, threads: int, kind: LayerKind) -> Path:
    """Where the table of (device, onnxruntime version, precision, threads, kind) is cached."""
    tag = "" if kind == LayerKind.DENSE else f"-{kind}"  # the dense table keeps its first file name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{device}-ort{onnxruntime}-{precision}-t{threads}{tag}")
    return cache / f"widths-{slug}.json"


def width_table(meter: Meter, *, threads: int = 1, int8: bool = True, cache: Path | None = None,
                log: Callable[[str], None] = lambda m: None, kind: LayerKind = LayerKind.DENSE) -> WidthTable:
    """The table of ``kind`` for ``meter``'s device: from the cache, else measured (~10-30 s) and cached."""
    import onnxruntime as ort

    kind = LayerKind(kind)
    device, version, precision = meter.info["key"], ort.__version__, "int8" if int8 else "fp32"
    path = table_file(cache or cache_dir(), device, version, precision, threads, kind)
    if path.exists():
        try:
            d = json.loads(path.read_text())
            if d.get("schema") == SCHEMA and d.get("device") == device and d.get("kind", "dense") == kind:
                return WidthTable(device, precision, threads, version, {int(c): float(t) for c, t in d["ms"].items()},
                                  cached=True, path=str(path), kind=kind)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is measured again
    where = "" if is_local(meter) else f" on {device}"
    what = {LayerKind.DENSE: "3x3", LayerKind.POINTWISE: "1x1", LayerKind.DEPTHWISE: "3x3 depthwise"}[kind]
    log(f"measuring the width table{where}: a {what} {precision.upper()} conv at {len(WIDTHS)} channel counts "
        f"({threads} thread(s); cached in {path.parent})")
    ms: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompress-widths-") as d:
        files = {c: conv_file(c, Path(d), int8=int8, kind=kind) for c in WIDTHS}
        order = list(WIDTHS)
        rng = random.Random(0)
        for _ in range(PASSES):  # shuffled passes: drifts of a shared machine hit all widths alike
            rng.shuffle(order)
            for c in order:
                p50 = meter.measure_latency(files[c], threads=threads, batch=1, warmup=5, runs=30).p50_ms
                ms[c] = min(ms.get(c, p50), p50)
    table = WidthTable(device, precision, threads, version, dict(sorted(ms.items())), path=str(path), kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"schema": SCHEMA, "kind": str(kind), "device": device, "precision": precision,
                                        "threads": threads, "onnxruntime": version,
                                        "ms": {str(c): t for c, t in table.ms.items()}}, indent=1) + "\n")
    return table
