"""Issue 22's figures: the in-repo detector, segmentation UNet and multi-label stand-ins
(tests/_task_models.py), trained here on synthetic images, compressed by the CLI with their own
metric. Prints a table and writes benchmarks/results/task_models.json.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/task_models.py [WORKDIR]

Rows: detector INT8 only without and with the mixed-range guard; detector, UNet and multi-label at
50% of MACs removed + KD + INT8 (guard on). The commands are the ones tests/test_task_models.py runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _task_models as tm  # noqa: E402

RUNS = {  # row: (task, extra flags)
    "detector int8, no guard": ("tiny_detector", ["--stages", "ptq", "--no-range-guard"]),
    "detector int8, guard": ("tiny_detector", ["--stages", "ptq"]),
    "detector 50% + KD + int8": ("tiny_detector", ["--prune-ratio", "0.5", "--distill-epochs", "20", "--lr", "0.002"]),
    "unet 50% + KD + int8": ("tiny_unet", ["--prune-ratio", "0.5", "--distill-epochs", "20", "--lr", "0.05",
                                           "--temperature", "1"]),
    "multilabel 50% + KD + int8": ("multilabel_grid", ["--prune-ratio", "0.5", "--round-to", "4",
                                                       "--distill-epochs", "15", "--lr", "0.01"]),
}


def main() -> None:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="edgecompress-tasks-"))
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "_task_models.py", d / "tm.py")
    (d / "kd.toml").write_text("[distill]\nbatch_size = 32\naugment_shift = 0\naugment_flip = false\n")
    for name in {t for t, _ in RUNS.values()}:
        if not (d / f"{name}.pt").exists():
            tm.make_task(name, d)
    rows = {}
    for row, (name, extra) in RUNS.items():
        out = d / row.replace(" ", "_").replace("%", "").replace(",", "").replace("+", "")
        cmd = [sys.executable, "-m", "edgecompress", "export", f"tm.py:{name}", "--weights", f"{name}.pt",
               "--data", f"{name}-train.npz", "--eval-data", f"{name}-eval.npz",
               "--metric", f"tm.py:{tm.TASKS[name][3].__name__}", "--recipe", "kd.toml", "--exporter", "torchscript",
               "--calib-samples", "128", "--runs", "50", "--out", str(out), "--overwrite", *extra]
        subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        m = json.loads((out / "manifest.json").read_text())
        a = m["artifacts"]
        rows[row] = {"status": m["status"], "macs_removed": 1 - a["int8"]["macs"] / a["original"]["macs"],
                     **{f"{k}_metric": v.get("metric") for k, v in a.items()},
                     **{f"{k}_p50_ms": v.get("latency_ms_p50") for k, v in a.items()},
                     "guarded_nodes": len(m["stage_results"]["quantize"].get("mixed_range_guard", {}).get("nodes", []))}
    print(f"{'run':30s} {'MACs -':>7s} {'FP32 orig':>9s} {'pruned':>7s} {'INT8':>7s} {'p50 orig':>9s} {'p50 INT8':>9s}")
    for row, r in rows.items():
        pr = r.get("pruned_metric")
        print(f"{row:30s} {r['macs_removed']:7.1%} {100 * r['original_metric']:9.2f} "
              f"{'-' if pr is None else f'{100 * pr:.2f}':>7s} {100 * r['int8_metric']:7.2f} "
              f"{r['original_p50_ms']:9.3f} {r['int8_p50_ms']:9.3f}")
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / "task_models.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
