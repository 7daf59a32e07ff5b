"""``edgecompress bench MODEL.onnx``: latency/size table or JSON for any ONNX file.
numpy + onnxruntime only (no torch), so it runs on an edge board."""

from __future__ import annotations

import argparse
import contextlib
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


@contextlib.contextmanager
def _ort_errors(path: Path):
    """onnxruntime's own errors while running ``path`` -> one-line BadInput."""
    try:
        yield
    except ValueError as e:
        raise BadInput(f"{path}: {e}") from None
    except Exception as e:  # onnxruntime's own errors (Fail, InvalidArgument, ...) subclass Exception
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        msg = " ".join(str(e).split())[:240]
        raise BadInput(f"{path}: onnxruntime cannot run it ({type(e).__name__}: {msg}); check "
                       "--input-shape (N,C,H,W of the model input) and that the ops are standard ONNX") from None


def run_bench(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.onnx]
    for path in paths:
        check_model_file(path)
    if args.runs < 1 or args.warmup < 0 or min(args.threads) < 1 or min(args.batch) < 1:
        raise BadInput("--runs, --threads and --batch must be >= 1 and --warmup >= 0")
    if args.rounds < 1:
        raise BadInput(f"--rounds {args.rounds}: must be >= 1")
    if len(paths) > 1:
        return _compare(paths, args)
    return _one(paths[0], args)


def _one(path: Path, args: argparse.Namespace) -> int:
    from edgecompress.bench import cpu_info, file_bytes, measure_latency, profile_ops

    rows = []
    for t in args.threads:
        for b in args.batch:
            kw = {"threads": t, "batch": b, "warmup": args.warmup, "runs": args.runs,
                  "input_shape": tuple(args.input_shape) if args.input_shape else None}
            with _ort_errors(path):
                row = measure_latency(path, **kw).to_dict()
                if args.profile:  # a separate session: the profiler slows every run
                    row["profile"] = profile_ops(path, **kw).to_dict()
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
        _print_profile(r["profile"], f"threads {r['threads']} batch {r['batch']}")
    return 0


def _compare(paths: list[Path], args: argparse.Namespace) -> int:
    """Several files side by side: for each threads x batch, ``--rounds`` rounds that each time
    every file (``--runs`` / rounds runs) in a shuffled order, so that the machine's drift hits
    all files alike; each file's p50/p90 is the median over the rounds, and speed-up and size are
    ratios to the first file."""
    from edgecompress.bench import cpu_info, file_bytes, measure_latency, over_rounds, profile_ops, round_robin

    sizes = [file_bytes(p) for p in paths]
    shape = tuple(args.input_shape) if args.input_shape else None
    for p in paths:  # one quick run each first: a file onnxruntime cannot run is named before any timing
        with _ort_errors(p):
            measure_latency(p, threads=1, batch=min(args.batch), warmup=0, runs=1, input_shape=shape)
    per_visit = max(1, args.runs // args.rounds)
    results = []
    for t in args.threads:
        for b in args.batch:
            lat = round_robin(paths, threads=t, batch=b, rounds=args.rounds, runs=per_visit, warmup=args.warmup,
                              input_shape=shape)
            p50, p90 = zip(*(over_rounds(rounds) for rounds in lat), strict=True)
            files = [{"model": str(p), "p50_ms": p50[i], "p90_ms": p90[i],
                      "speedup": p50[0] / p50[i] if p50[i] > 0 else float("inf"),
                      "throughput_per_s": b * 1e3 / p50[i] if p50[i] > 0 else float("inf")}
                     for i, p in enumerate(paths)]  # fmt: skip
            if args.profile:
                for f, p in zip(files, paths, strict=True):
                    f["profile"] = profile_ops(p, threads=t, batch=b, warmup=args.warmup, runs=args.runs,
                                               input_shape=shape).to_dict()
            results.append({"threads": t, "batch": b, "rounds": args.rounds, "runs_per_round": per_visit,
                            "files": files})
    out = {"models": [{"model": str(p), "bytes": n, "smaller": sizes[0] / n} for p, n in zip(paths, sizes, strict=True)],
           "cpu": cpu_info(), "baseline": str(paths[0]), "results": results}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{len(paths)} files side by side on {out['cpu']['model']}: {args.rounds} round(s) of {per_visit} runs each, "
          f"in a shuffled order; ratios to {paths[0]}")
    width = max(len(str(p)) for p in paths)
    for r in results:
        print(f"\nthreads {r['threads']}, batch {r['batch']}")
        print(f"{'file':<{width}} {'bytes':>12} {'smaller':>8} {'p50 ms':>9} {'p90 ms':>9} {'speed-up':>9}")
        for f, m in zip(r["files"], out["models"], strict=True):
            print(f"{f['model']:<{width}} {m['bytes']:>12,} {m['smaller']:>7.2f}x {f['p50_ms']:>9.3f} "
                  f"{f['p90_ms']:>9.3f} {f['speedup']:>8.2f}x")
        for f in (f for f in r["files"] if "profile" in f):
            _print_profile(f["profile"], f"{f['model']}, threads {r['threads']} batch {r['batch']}")
    return 0


def _print_profile(pr: dict, what: str) -> None:
    print(f"\nwhere the time goes, {what} (onnxruntime profiler, {pr['runs']} runs; "
          f"kernels {pr['kernel_ms_per_run']:.3f} ms per run with the profiler's overhead)")
    print(f"{'operator':<28} {'nodes':>5} {'ms/run':>9} {'share':>7}")
    for o in pr["ops"]:
        print(f"{o['op']:<28} {o['nodes']:>5} {o['ms_per_run']:>9.4f} {o['share']:>7.1%}")
