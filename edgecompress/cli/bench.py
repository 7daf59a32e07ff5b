"""``edgecompress bench MODEL.onnx [...]``: latency/size table or JSON for any ONNX file, or several
side by side, here or on a device over ssh (``--remote``). Loads only the torch-free runtime layer,
so it runs on an edge board."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgecompress.cli.common import ints, shape
from edgecompress.errors import BadInput
from edgecompress.runtime.latency import PROTOCOL, bench_file, compare_files
from edgecompress.runtime.meter import LOCAL
from edgecompress.runtime.remote import Device
from edgecompress.runtime.session import check_model_file


def add_arguments(sub, name: str, help_: str) -> None:
    b = sub.add_parser(name, help=help_, description="Latency (p50/p90) and size of ONNX files with onnxruntime. "
                       "With several files, they are timed side by side in shuffled rounds and compared as ratios "
                       "to the first (e.g. original.onnx int8.onnx).")
    b.add_argument("onnx", nargs="+", help="model.onnx [other.onnx ...]; with several, ratios to the first")
    b.add_argument("--threads", type=ints, default=[PROTOCOL.threads], help="comma-separated, e.g. 1,2 "
                   f"(default {PROTOCOL.threads})")
    b.add_argument("--batch", type=ints, default=[PROTOCOL.batch], help=f"comma-separated, e.g. 1,8 (default {PROTOCOL.batch})")
    b.add_argument("--warmup", type=int, default=PROTOCOL.warmup, help=f"untimed runs first (default {PROTOCOL.warmup})")
    b.add_argument("--runs", type=int, default=PROTOCOL.runs, help="timed runs per file and threads x batch "
                   f"(default {PROTOCOL.runs})")
    b.add_argument("--rounds", type=int, default=PROTOCOL.rounds, help="with several files: rounds of --runs/ROUNDS "
                   f"runs of every file, in a shuffled order (default {PROTOCOL.rounds})")
    b.add_argument("--input-shape", type=shape, help="N,C,H,W when the model's input has symbolic dims")
    b.add_argument("--profile", action="store_true", help="also show where the time goes per operator type "
                   "(onnxruntime's profiler; depthwise convs apart), for every threads x batch")
    b.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall: elapsed time (default); cpu: the "
                   "process's CPU time, which leaves out the waits for a core on a loaded, shared machine (with "
                   "--threads 1 only; sharing caches and cores still counts)")
    b.add_argument("--remote", metavar="DEST", help="measure on this device over ssh (user@host, "
                   "ssh://user@host:port or a Host alias of ~/.ssh/config): the files are copied to a temporary "
                   "directory there and timed by the device's python and onnxruntime with the same protocol")
    b.add_argument("--remote-python", default="python3", metavar="PATH", help="the python on the device that has "
                   "numpy, onnx and onnxruntime (default python3)")
    b.add_argument("--ssh-config", metavar="FILE", help="ssh client configuration file for --remote (ssh -F); "
                   "default: ssh's own (~/.ssh/config)")
    b.add_argument("--json", action="store_true", help="print only JSON on stdout")


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.onnx]
    for path in paths:
        check_model_file(path)
    if args.runs < 1 or args.warmup < 0 or min(args.threads) < 1 or min(args.batch) < 1:
        raise BadInput("--runs, --threads and --batch must be >= 1 and --warmup >= 0")
    if args.rounds < 1:
        raise BadInput(f"--rounds {args.rounds}: must be >= 1")
    if args.clock == "cpu" and max(args.threads) > 1:
        raise BadInput("--clock cpu counts the CPU time of all threads: use it with --threads 1")
    kw: dict[str, Any] = {"threads": args.threads, "batch": args.batch, "warmup": args.warmup, "runs": args.runs,
                          "input_shape": tuple(args.input_shape) if args.input_shape else None,
                          "profile": args.profile, "clock": args.clock}
    if len(paths) > 1:
        kw["rounds"] = args.rounds
    if args.remote:
        with Device(args.remote, python=args.remote_python, ssh_config=args.ssh_config) as dev:
            out = dev.bench(paths, **kw) | {"device": dev.info}
    else:
        if args.ssh_config or args.remote_python != "python3":
            raise BadInput("--ssh-config and --remote-python go with --remote DEST")
        out = (compare_files(paths, **kw) if len(paths) > 1 else bench_file(paths[0], **kw)) | \
            {"device": LOCAL.info}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(format_compare(out, paths, args.rounds) if len(paths) > 1 else format_one(out))
    return 0


def format_one(out: dict[str, Any]) -> str:
    rows = out["results"]
    lines = [f"{out['model']}  {out['bytes']:,} bytes  on {out['device']['key']}",
             f"{'threads':>7} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'mean ms':>9} {'samples/s':>10}"]
    for r in rows:
        lines.append(f"{r['threads']:>7} {r['batch']:>5} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['mean_ms']:>9.3f} "
                     f"{r['throughput_per_s']:>10.1f}")
    for r in (r for r in rows if "profile" in r):
        lines += format_profile(r["profile"], f"threads {r['threads']} batch {r['batch']}")
    return "\n".join(lines)


def format_compare(out: dict[str, Any], paths: list[Path], rounds: int) -> str:
    per_visit = out["results"][0]["runs_per_round"] if out["results"] else 0
    clock = out["results"][0].get("clock", "wall") if out["results"] else "wall"
    lines = [f"{len(paths)} files side by side on {out['device']['key']}: {rounds} round(s) of {per_visit} runs each, "
             f"in a shuffled order, {clock} clock; ratios to {paths[0]}"]
    width = max(len(str(p)) for p in paths)
    for r in out["results"]:
        lines += ["", f"threads {r['threads']}, batch {r['batch']}",
                  f"{'file':<{width}} {'bytes':>12} {'smaller':>8} {'p50 ms':>9} {'p90 ms':>9} {'speed-up':>9}"]
        for f, m in zip(r["files"], out["models"], strict=True):
            lines.append(f"{f['model']:<{width}} {m['bytes']:>12,} {m['smaller']:>7.2f}x {f['p50_ms']:>9.3f} "
                         f"{f['p90_ms']:>9.3f} {f['speedup']:>8.2f}x")
        for f in (f for f in r["files"] if "profile" in f):
            lines += format_profile(f["profile"], f"{f['model']}, threads {r['threads']} batch {r['batch']}")
    return "\n".join(lines)


def format_profile(pr: dict[str, Any], what: str) -> list[str]:
    lines = ["", f"where the time goes, {what} (onnxruntime profiler, {pr['runs']} runs; "
             f"kernels {pr['kernel_ms_per_run']:.3f} ms per run with the profiler's overhead)",
             f"{'operator':<28} {'nodes':>5} {'ms/run':>9} {'share':>7}"]
    lines += [f"{o['op']:<28} {o['nodes']:>5} {o['ms_per_run']:>9.4f} {o['share']:>7.1%}" for o in pr["ops"]]
    return lines
