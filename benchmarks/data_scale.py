"""Peak memory and throughput of the data path on image folders of two sizes (issue #21).

    python benchmarks/data_scale.py [--sizes 20000,200000] [--images 3072] [--workers 0,1,2]

1. Generates image folders of 3x128x128 JPEGs (10 class subfolders) under benchmarks/cache/data_scale/
   (once; the files cycle through 256 distinct encoded images, so writing 200k files is fast while
   every file is decoded for real).
2. For each size, in a fresh process (its own peak RSS): the run's data setup (scan, seeded
   train/val/eval split, file-list hashes), then the training feed (``data.loader.batches`` over the
   seeded permutation, batch 128), calibration (``quantize.ptq.ArrayReader`` over 512 lazily
   subset samples, batch 32) and evaluation (``data.loader.array_batches``, batch 256), each over a
   fixed number of images (``--images``), the same at both sizes: what could grow with the data
   set is what the run holds for all of it (file list, labels, permutation, split indices).
   Peak RSS = ru_maxrss of the process (and of its largest loader worker).
3. Distillation throughput of a ResNet-18 student/teacher at 128 px (``train.distill.distill``,
   a few steps) with 0, 1 and 2 loader workers, on the smaller folder.

Writes benchmarks/results/data_scale.json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import CACHE, RESULTS, ROOT

DATA = CACHE / "data_scale"


def make_folder(n: int) -> Path:
    from PIL import Image

    root = DATA / f"jpeg128-{n}"
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(256):  # smooth random images: realistic JPEG sizes (a few kB)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((128, 128), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"c{i % 10}" / f"{i:07d}.jpg").write_bytes(blobs[i % 256])
    done.write_text(str(n))
    return root


def _rss_mb() -> dict[str, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(me, 1), "peak_rss_worker_mb": round(kids, 1)}


def measure(root: Path, images: int, workers: int) -> dict:
    """One size, in this process: setup, training feed, calibration reader, evaluation batches."""
    from edgecompress.config import DataConfig
    from edgecompress.data import load_splits
    from edgecompress.data.dataset import subset
    from edgecompress.data.folders import load_image_folder
    from edgecompress.data.loader import array_batches, batches
    from edgecompress.data.preprocess import image_prep_for
    from edgecompress.quantize.ptq import ArrayReader

    row: dict = {"folder": root.name, "workers": workers}
    t = time.perf_counter()
    cfg = DataConfig(data=str(root))

    def images_of(path, prep):
        return load_image_folder(path, prep, image_prep_for(cfg, None), bad_files="error")

    sp = load_splits(str(root), None, input_shape=None, seed=0, images=images_of)
    row |= {"files": len(sp.train) + len(sp.val) + len(sp.eval), "train": len(sp.train), "eval": len(sp.eval),
            "setup_s": round(time.perf_counter() - t, 2), "rss_after_setup_mb": _rss_mb()["peak_rss_mb"]}
    import torch

    perm = torch.randperm(len(sp.train), generator=torch.Generator().manual_seed(0))
    bs = 128
    t, seen = time.perf_counter(), 0
    for xb, _ in batches(sp.train.x, sp.train.y, [perm[p : p + bs] for p in range(0, len(perm), bs)],
                         workers=workers):
        seen += len(xb)
        if seen >= images:
            break
    row["train_images_per_s"] = round(seen / (time.perf_counter() - t), 1)
    calib = subset(sp.train.x, np.sort(np.random.default_rng(0).choice(len(sp.train), min(512, len(sp.train)), replace=False)))
    reader, t, seen = ArrayReader("input", calib), time.perf_counter(), 0
    while (b := reader.get_next()) is not None:
        seen += len(b["input"])
    row["calib_images_per_s"] = round(seen / (time.perf_counter() - t), 1)
    ev = sp.eval.x.take(np.arange(min(images, len(sp.eval))))
    t, seen = time.perf_counter(), 0
    for xb in array_batches(ev, 256, workers=workers):
        seen += len(xb)
    row["eval_images_per_s"] = round(seen / (time.perf_counter() - t), 1)
    return row | _rss_mb()


def distill_rate(root: Path, workers: int, steps: int) -> dict:
    """Images/s of ResNet-18 KD steps at 128 px (batch 32) with ``workers`` loader processes."""
    import torch

    from edgecompress.config import DataConfig, DistillConfig
    from edgecompress.data.folders import load_image_folder
    from edgecompress.data.preprocess import image_prep_for
    from edgecompress.models.zoo import create_model
    from edgecompress.train.distill import distill

    ds, _ = load_image_folder(root, None, image_prep_for(DataConfig(), None))
    bs = 32
    train = ds.take(np.arange(bs * steps), ds.source)
    teacher = create_model("resnet18", num_classes=10, in_chans=3)
    student = create_model("resnet18", num_classes=10, in_chans=3)
    torch.manual_seed(0)
    cfg = DistillConfig(epochs=1, batch_size=bs)
    t = time.perf_counter()
    r = distill(student, teacher, train, cfg, workers=workers)
    dt = time.perf_counter() - t
    return {"workers": workers, "steps": r.steps, "images_per_s": round(r.steps * bs / dt, 2),
            "seconds": round(dt, 1), "threads": torch.get_num_threads()}


def _child(args: list[str]) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--images", type=int, default=3072, help="images per phase, the same at every size")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--loader-workers", type=int, default=0, help="workers of the memory runs")
    ap.add_argument("--distill-steps", type=int, default=6)
    ap.add_argument("--name", default="data_scale", help="results file name (benchmarks/results/NAME.json|md)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, path, n = a.child.split(":", 2)
        row = measure(Path(path), a.images, int(n)) if kind == "mem" else distill_rate(Path(path), int(n), a.distill_steps)
        print(json.dumps(row))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    roots = {}
    for n in sizes:
        t = time.perf_counter()
        roots[n] = make_folder(n)
        print(f"folder of {n} JPEGs ready ({time.perf_counter() - t:.0f} s)", flush=True)
    mem = [_child(["--child", f"mem:{roots[n]}:{a.loader_workers}", "--images", str(a.images)]) for n in sizes]
    kd = [_child(["--child", f"kd:{roots[sizes[0]]}:{w}", "--distill-steps", str(a.distill_steps)])
          for w in ints(a.workers)]
    ratio = mem[-1]["peak_rss_mb"] / mem[0]["peak_rss_mb"]
    res = {"images_per_phase": a.images, "loader_workers": a.loader_workers,
           "load_average_at_end": [round(v, 1) for v in os.getloadavg()], "cpus": os.cpu_count(), "memory": mem, "distill": kd, "rss_ratio": round(ratio, 3),
           "target": "peak RSS at the largest size <= 1.2x the smallest", "target_met": ratio <= 1.2}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"{a.images} images per phase, {a.loader_workers} loader worker(s); load average at the end "
             f"{res['load_average_at_end']} on {res['cpus']} CPUs", "", "| files | setup s | RSS after setup MB | peak RSS MB | worker peak MB | train img/s | calib img/s | "
             "eval img/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['files']:,} | {r['setup_s']} | {r['rss_after_setup_mb']} | {r['peak_rss_mb']} | "
              f"{r['peak_rss_worker_mb']} | {r['train_images_per_s']} | {r['calib_images_per_s']} | "
              f"{r['eval_images_per_s']} |" for r in mem]
    lines += ["", f"peak RSS ratio {ratio:.3f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})", "",
              "| loader workers | KD steps (ResNet-18, 128 px, batch 32) | images/s | s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['steps']} | {r['images_per_s']} | {r['seconds']} |" for r in kd]
    (RESULTS / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
