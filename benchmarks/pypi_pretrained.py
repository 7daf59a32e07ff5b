"""Two digit classifiers whose trained weights ship inside PyPI wheels (ccexam 1.0.0 and
digit-recognizer-py 0.1.0; tests/pypi_digit_models.py), compressed with the CLI's defaults on
printed digits made by tests/_digits.py (MNIST-style, rendered from the machine's fonts):

    python benchmarks/pypi_pretrained.py [--samples 10000]

Per model: top-1 of original / pruned / INT8 under onnxruntime on the held-out 20%, MACs, bytes,
p50 latency (1 thread, batch 1). Writes benchmarks/results/pypi_pretrained.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
import pypi_digit_models as pdm  # noqa: E402
from _digits import write_npz  # noqa: E402


def run(factory: str, samples: int, work: Path) -> dict:
    w = pdm.weights(factory)
    if w is None:
        raise SystemExit(f"{factory} is not installed: bash tools/setup.sh (pip install --no-deps)")
    shutil.copy(ROOT / "tests" / "pypi_digit_models.py", work / "digits_models.py")
    data = work / "digits.npz"
    if not data.exists():
        write_npz(data, samples)
    out = work / f"out-{factory}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "edgecompress", "export", f"digits_models.py:{factory}", "--weights", str(w),
           "--data", "digits.npz", "--out", str(out), "--overwrite"]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{factory}: exit {p.returncode}: {p.stderr[-1500:]}")
    m = json.loads((out / "manifest.json").read_text())
    a = m["artifacts"]
    row = {"model": factory, "weights": f"{w.parent.parent.name}/{w.parent.name}/{w.name}",
           "eval": m["data"]["eval"], "command": " ".join(["edgecompress", *cmd[3:]]),
           "fastest": m["fastest_artifact"], "delivered": m["delivered_artifact"]}
    for k in ("original", "pruned", "int8"):
        row |= {f"{k}_top1": 100 * a[k]["top1"], f"{k}_macs": a[k]["macs"], f"{k}_bytes": a[k]["bytes"],
                f"{k}_p50": a[k]["latency_ms_p50"]}
    row["drop_int8"] = row["original_top1"] - row["int8_top1"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(f, args.samples, Path(tmp)) for f in ("ccexam", "digit_recognizer")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pypi_pretrained.json").write_text(json.dumps({"samples": args.samples, "rows": rows}, indent=2) + "\n")
    print(table(rows, [("model", "model", ""), ("eval", "eval", ""), ("original top-1", "original_top1", ".2f"),
                       ("pruned top-1", "pruned_top1", ".2f"), ("INT8 top-1", "int8_top1", ".2f"),
                       ("drop (pts)", "drop_int8", "+.2f"), ("MACs orig", "original_macs", ","),
                       ("MACs pruned", "pruned_macs", ","), ("bytes orig", "original_bytes", ","),
                       ("bytes INT8", "int8_bytes", ","), ("p50 orig ms", "original_p50", ".3f"),
                       ("p50 pruned ms", "pruned_p50", ".3f"), ("p50 INT8 ms", "int8_p50", ".3f"),
                       ("fastest", "fastest", "")]))


if __name__ == "__main__":
    main()
