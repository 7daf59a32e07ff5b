"""Latency of one 3x3 convolution (C -> C channels, + ReLU) against its channel count, INT8 (onnxruntime
static QDQ) and FP32, timed side by side: the measurement behind ``--structure``'s width table
(edgecompress/quantize/widths.py, which times the INT8 column on the run's device and caches it).

    python benchmarks/conv_width.py --hw 28 --channels 48,56,64,104,112,120,128

Prints p50 (median of the rounds' p50s), the fastest run (min) and MACs per ms at the fastest run,
and writes benchmarks/results/conv_width-<hw>.json."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import RESULTS

from edgecompress.files import atomic_write_text
from edgecompress.quantize.widths import conv_file
from edgecompress.runtime.latency import round_robin
from edgecompress.runtime.meter import LOCAL


def conv_files(c: int, hw: int, d: Path) -> tuple[Path, Path]:
    """The FP32 and INT8 files of ``--structure``'s width table (quantize.widths.conv_file)."""
    return conv_file(c, d, int8=False, hw=hw), conv_file(c, d, int8=True, hw=hw)


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
