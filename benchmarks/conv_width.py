"""Latency of one 3x3 convolution (C -> C channels, + ReLU) against its channel count, INT8 (onnxruntime
static QDQ) and FP32, timed side by side: the per-device table that a width choice by measured
latency would read (issue #20, item 3).

    python benchmarks/conv_width.py --hw 28 --channels 48,56,64,104,112,120,128

Prints p50 (median of the rounds' p50s), the fastest run (min) and MACs per ms at the fastest run,
and writes benchmarks/results/conv_width-<hw>.json."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
from _common import RESULTS
from onnx import TensorProto, helper, numpy_helper

from edgecompress.config import QuantConfig
from edgecompress.files import atomic_write_text
from edgecompress.quantize import quantize_ptq
from edgecompress.runtime.latency import round_robin
from edgecompress.runtime.meter import LOCAL


def conv_files(c: int, hw: int, d: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (c, c, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, hw, hw])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    fp32, int8 = d / f"c{c}.onnx", d / f"c{c}.int8.onnx"
    onnx.save(m, str(fp32))
    quantize_ptq(fp32, int8, np.random.default_rng(1).random((8, c, hw, hw), dtype=np.float32), QuantConfig())
    return fp32, int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hw", type=int, default=28)
    ap.add_argument("--channels", default="48,56,64,104,112,120,128")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    cs = [int(c) for c in args.channels.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        pairs = [conv_files(c, args.hw, Path(d)) for c in cs]
        files = [f for pair in pairs for f in pair]
        res = round_robin(files, rounds=args.rounds, runs=args.runs, warmup=5)
    for i, c in enumerate(cs):
        macs = c * c * 9 * args.hw * args.hw
        row: dict = {"channels": c, "hw": args.hw, "macs": macs}
        for kind, r in (("fp32", res[2 * i]), ("int8", res[2 * i + 1])):
            fastest = min(x.min_ms for x in r)
            row[kind] = {"p50_ms": statistics.median(x.p50_ms for x in r), "min_ms": fastest,
                         "mmac_per_ms": macs / fastest / 1e6}
        rows.append(row)
        print(f"C={c:4d} {args.hw}x{args.hw}  INT8 p50 {row['int8']['p50_ms']:.4f} min {row['int8']['min_ms']:.4f} ms "
              f"({row['int8']['mmac_per_ms']:.0f} MMAC/ms)  FP32 p50 {row['fp32']['p50_ms']:.4f} min "
              f"{row['fp32']['min_ms']:.4f} ms ({row['fp32']['mmac_per_ms']:.0f} MMAC/ms)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"conv_width-{args.hw}.json", json.dumps(
        {"device": LOCAL.info, "rounds": args.rounds, "runs": args.runs, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
