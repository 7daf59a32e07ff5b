"""Peak memory of `edgecompress export` on a large uint8 .npz (issue 24: a 0.98 GB uint8 npz
peaked at 8.6 GB).

Writes a ~1 GB uncompressed npz of uint8 images (default 80,000 x 3 x 64 x 64 with labels) into a
temporary directory, then runs `edgecompress export` on it with a tiny conv net, few training and
evaluation samples (--max-train/--max-eval) and a short distillation, so what is measured is the
data path: load, split, limit, calibration, distillation batches, evaluation. The peak resident
memory of the export process is read with getrusage(RUSAGE_CHILDREN) (ru_maxrss). Sizes are GiB (2**30 bytes): 0.92 GiB of uint8 is 0.98 GB.

    python benchmarks/npz_memory.py                       # this checkout
    python benchmarks/npz_memory.py --src /path/to/other  # another checkout (e.g. the base commit)
    python benchmarks/npz_memory.py --label before --src DIR --label after

Writes benchmarks/results/npz_memory.json (one row per label, merged with earlier rows) and
npz_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

NET = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
'''


def write_npz(path: Path, n: int, shape: tuple[int, int, int]) -> int:
    rng = np.random.default_rng(0)
    x = np.empty((n, *shape), np.uint8)
    for i in range(0, n, 4096):  # in chunks: the generator's own peak stays small
        x[i : i + 4096] = rng.integers(0, 256, (min(4096, n - i), *shape), dtype=np.uint8)
    np.savez(path, x=x, y=rng.integers(0, 10, n))
    return int(x.nbytes)


def measure(src: Path, npz: Path, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", HOME=str(work))
    (work / "net.py").write_text(NET)
    cmd = [sys.executable, "-m", "edgecompress", "export", "net.py:build", "--data", str(npz), "--max-train", "2048",
           "--max-eval", "1024", "--distill-epochs", "0.5", "--calib-samples", "64", "--exporter", "torchscript",
           "--runs", "3", "--out", str(work / "out"), "--overwrite"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise SystemExit("this child's peak is hidden by an earlier, larger child; run one label per process")
    return {"exit_code": p.returncode, "peak_rss_gb": round(peak_kb / 2**20, 3), "seconds": round(time.time() - t0, 1),
            "stderr_tail": p.stderr.strip().splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT, help="checkout whose edgecompress runs")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--samples", type=int, default=80_000)
    ap.add_argument("--table-only", action="store_true", help="rewrite npz_memory.md from the results file")
    args = ap.parse_args()
    out = RESULTS / "npz_memory.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    if not args.table_only:
        rows = [r for r in rows if r["label"] != args.label] + [run(args)]
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| run | x (uint8) | float32 copy | peak RSS | exit | s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['x_gb']:.2f} GiB | {r['float32_copy_gb']:.2f} GiB | **{r['peak_rss_gb']:.2f} GiB** | "
              f"{r['exit_code']} | {r['seconds']:.0f} |" for r in rows]
    (RESULTS / "npz_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(args: argparse.Namespace) -> dict:
    shape = (3, 64, 64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        npz = work / "big.npz"
        nbytes = write_npz(npz, args.samples, shape)
        return {"label": args.label, "src": "this checkout" if args.src == ROOT else str(args.src), "samples": args.samples, "shape": list(shape),
                "x_gb": round(nbytes / 2**30, 3), "npz_gb": round(npz.stat().st_size / 2**30, 3),
                "float32_copy_gb": round(4 * nbytes / 2**30, 3)} | measure(args.src, npz, work)


if __name__ == "__main__":
    main()
