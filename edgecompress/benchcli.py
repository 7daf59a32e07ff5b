"""``edgecompress bench MODEL.onnx``: latency/size table or JSON for any ONNX file.
numpy + onnxruntime only (no torch), so it runs on an edge board."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecompress.errors import BadInput


def check_model_file(path: Path) -> None:
    import onnx

    if path.is_dir():
        raise BadInput(f"{path}: is a directory; pass the .onnx file inside it")
    if not path.is_file():
        raise BadInput(f"{path}: no such file; check the path")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise BadInput(f"{path}: not a valid ONNX model ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                       "pass a .onnx file (e.g. one written by edgecompress export)") from None


def run_bench(args: argparse.Namespace) -> int:
    from edgecompress.bench import cpu_info, file_bytes, measure_latency, profile_ops

    path = Path(args.onnx)
    check_model_file(path)
    if args.runs < 1 or args.warmup < 0 or min(args.threads) < 1 or min(args.batch) < 1:
        raise BadInput("--runs, --threads and --batch must be >= 1 and --warmup >= 0")
    rows = []
    for t in args.threads:
        for b in args.batch:
            kw = {"threads": t, "batch": b, "warmup": args.warmup, "runs": args.runs,
                  "input_shape": tuple(args.input_shape) if args.input_shape else None}
            try:
                row = measure_latency(path, **kw).to_dict()
                if args.profile:  # a separate session: the profiler slows every run
                    row["profile"] = profile_ops(path, **kw).to_dict()
            except ValueError as e:
                raise BadInput(f"{path}: {e}") from None
            except Exception as e:  # onnxruntime's own errors (Fail, InvalidArgument, ...) subclass Exception
                if not type(e).__module__.startswith("onnxruntime"):
                    raise
                msg = " ".join(str(e).split())[:240]
                raise BadInput(f"{path}: onnxruntime cannot run it ({type(e).__name__}: {msg}); check "
                               "--input-shape (N,C,H,W of the model input) and that the ops are standard ONNX") from None
            rows.append(row)
    out = {"model": str(path), "bytes": file_bytes(path), "cpu": cpu_info(), "results": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{path}  {out['bytes']:,} bytes  on {out['cpu']['model']}")
    print(f"{'threads':>7} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'mean ms':>9} {'samples/s':>10}")
    for r in rows:
        print(f"{r['threads']:>7} {r['batch']:>5} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['mean_ms']:>9.3f} "
              f"{r['throughput_per_s']:>10.1f}")
    for r in (r for r in rows if "profile" in r):
        pr = r["profile"]
        print(f"\nwhere the time goes, threads {r['threads']} batch {r['batch']} (onnxruntime profiler, {pr['runs']} runs; "
              f"kernels {pr['kernel_ms_per_run']:.3f} ms per run with the profiler's overhead)")
        print(f"{'operator':<28} {'nodes':>5} {'ms/run':>9} {'share':>7}")
        for o in pr["ops"]:
            print(f"{o['op']:<28} {o['nodes']:>5} {o['ms_per_run']:>9.4f} {o['share']:>7.1%}")
    return 0
