"""The headline figures side by side in one sitting: ResNet-18 and MobileNetV2 at 224 px, random
weights, ``--prune-ratio 0.8 --target-params 0.8`` with defaults otherwise (for these >= 200M-MAC
models the default ``--structure auto`` searches the structure by measured latency and
``--latency-aware-int8 auto`` makes the per-layer INT8/FP32 choice), with ``--latency-aware-int8
off`` (every layer INT8), with ``--structure fixed`` (the default before the search), and, in
VARIANTS, the levers set by hand (``--drop-blocks``, ``--round-to``); every INT8 file (and the FP32
pruned parent of each) against the FP32 original, 1 thread, batch 1.

    python benchmarks/headline.py [--runs-dir DIR] [--rounds 9] [--runs 30] [--remote DEST ...]

Exports each variant once with ``edgecompress export`` into ``--runs-dir`` (kept, so a re-run only
re-times), then times all files of a model in one sitting: ``rounds`` rounds that each visit every
file once in a shuffled order, ``runs`` timed runs per visit (a fresh session each visit). Per
file: the median of the rounds' p50s, and the fastest single run (``min``), which a shared,
loaded machine disturbs least. With ``--remote DEST`` the sitting runs on that device
(edgecompress.runtime.remote). Writes benchmarks/results/headline.json and .md."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT

from edgecompress.files import atomic_write_text
from edgecompress.runtime import file_bytes
from edgecompress.runtime.latency import round_robin
from edgecompress.runtime.meter import LOCAL

COMMON = ["--input-shape", "1,3,224,224", "--data", "random", "--prune-ratio", "0.8", "--target-params", "0.8",
          "--calib-samples", "64", "--distill-epochs", "0"]
VARIANTS: dict[str, list[str]] = {  # name -> extra flags
    "default": [],  # --structure auto: the measured structure search for these >= 200M-MAC models
    "fixed": ["--structure", "fixed"],  # the default before the search: round-to 8, no block dropped
    "default+latency-aware": ["--latency-aware-int8"],  # the structure search, then the per-layer INT8 choice
    # every layer INT8 (the default runs the per-layer choice for these >= 200M-MAC models)
    "default+latency-aware-off": ["--latency-aware-int8", "off"],
    "drop2": ["--drop-blocks", "2"],
    "latency-aware": ["--latency-aware-int8"],
    "drop2+latency-aware": ["--drop-blocks", "2", "--latency-aware-int8"],
    "round-to-16": ["--round-to", "16"],
    "drop2+round-to-16": ["--drop-blocks", "2", "--round-to", "16"],
    "drop2+round-to-32": ["--drop-blocks", "2", "--round-to", "32"],
    "drop3": ["--drop-blocks", "3"],
    "drop4": ["--drop-blocks", "4"],
}
MODELS = {"resnet18": ["default", "default+latency-aware-off", "fixed"],
          "mobilenet_v2": ["default", "default+latency-aware-off", "fixed"]}


def export(model: str, variant: str, runs_dir: Path) -> Path:
    out = runs_dir / f"{model}-{variant}"
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "edgecompress", "export", model, *COMMON, *VARIANTS[variant], "--out", str(out),
               "--overwrite", "--runs", "20"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def sitting(files: list[Path], rounds: int, runs: int, device: Any, clock: str) -> list[dict[str, float]]:
    if device is None:
        per_file = round_robin(files, rounds=rounds, runs=runs, warmup=10, clock=clock)
        return [{"p50_ms": statistics.median(r.p50_ms for r in rs), "min_ms": min(r.min_ms for r in rs)}
                for rs in per_file]
    res = device.bench(files, threads=[1], batch=[1], warmup=10, runs=rounds * runs, rounds=rounds, clock=clock)
    return [{"p50_ms": f["p50_ms"], "min_ms": f["min_ms"]} for f in res["results"][0]["files"]]


def measure_model(model: str, runs_dir: Path, rounds: int, runs: int, device: Any, *,
                  no_export: bool = False, clock: str = "wall") -> dict[str, Any]:
    done = [v for v in MODELS[model] if (runs_dir / f"{model}-{v}" / "manifest.json").exists()]
    dirs = {v: export(model, v, runs_dir) for v in (done if no_export else MODELS[model])}
    files = [dirs["default"] / "original.onnx"]
    names = ["original (FP32)"]
    for v, d in dirs.items():
        files += [d / "pruned.onnx", d / "int8.onnx"]
        names += [f"{v} pruned (FP32)", f"{v} INT8"]
    print(f"{model}: timing {len(files)} files side by side ({rounds} rounds x {runs} runs)", flush=True)
    times = sitting(files, rounds, runs, device, clock)
    base_b, base = file_bytes(files[0]), times[0]
    rows = []
    for name, f, t in zip(names, files, times, strict=True):
        m = json.loads((f.parent / "manifest.json").read_text())
        art = m["artifacts"]["pruned" if "pruned" in f.name else "int8" if "int8" in f.name else "original"]
        rows.append({"file": name, "path": str(f.relative_to(runs_dir)), "bytes": file_bytes(f), "macs": art["macs"],
                     "p50_ms": t["p50_ms"], "min_ms": t["min_ms"], "speedup_p50": base["p50_ms"] / t["p50_ms"],
                     "speedup_min": base["min_ms"] / t["min_ms"], "smaller": base_b / file_bytes(f),
                     "macs_removed": 1 - art["macs"] / m["artifacts"]["original"]["macs"]})  # fmt: skip
    return {"model": model, "rows": rows}


def table(res: dict[str, Any]) -> str:
    lines = [f"### {res['model']}", "", "| file | MACs removed | bytes | smaller | p50 ms | speed-up (p50) | "
             "min ms | speed-up (min) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['file']} | {r['macs_removed']:.1%} | {r['bytes']:,} | {r['smaller']:.1f}× | "
                     f"{r['p50_ms']:.3f} | {r['speedup_p50']:.2f}× | {r['min_ms']:.3f} | {r['speedup_min']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "benchmarks" / "cache" / "headline")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--remote", help="time on this ssh destination (edgecompress bench --remote)")
    ap.add_argument("--no-export", action="store_true", help="time only the variants already exported")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: the process's CPU time, which "
                    "leaves out the waits for a core on a loaded, shared machine (edgecompress bench --clock)")
    args = ap.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    device = None
    if args.remote:
        from edgecompress.runtime.remote import Device

        device = Device(args.remote).open()
    try:
        where = (device or LOCAL).info
        results = [measure_model(m, args.runs_dir, args.rounds, args.runs, device, no_export=args.no_export,
                                 clock=args.clock) for m in args.models.split(",")]
    finally:
        if device is not None:
            device.close()
    out = {"device": where, "rounds": args.rounds, "runs": args.runs, "clock": args.clock, "flags": COMMON, "variants": VARIANTS,
           "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "headline" + ("" if args.models == ",".join(MODELS) else "-" + args.models.replace(",", "-"))
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(out, indent=2) + "\n")
    md = "\n\n".join([f"Measured on {where['key']}: 1 thread, batch 1, {args.rounds} shuffled rounds of "
                      f"{args.runs} runs per file, {args.clock} clock.", *(table(r) for r in results)])
    atomic_write_text(RESULTS / f"{name}.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
