"""Does distillation recover more than plain fine-tuning, at equal epochs? And what do INT8
PTQ and QAT+KD cost on top?

On the shipped Fashion-MNIST teacher (edgecompress/models/weights/resnet20.pt), at each MACs-removed ratio:
  pruned (no fine-tuning) | pruned + cross-entropy fine-tuning | pruned + KD |
  pruned + KD + PTQ (onnxruntime) | pruned + QAT with KD
all with the same number of epochs, top-1 on the official 10k test split (under onnxruntime
for the ONNX artifacts), p50 latency (1 thread, batch 1) and file size. Cells are cached.

    python benchmarks/distill_ablation.py --ratios 0.5,0.8 --epochs 1
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from _common import RESULTS, WEIGHTS_DIR, cached, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.5,0.8")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--round-to", type=int, default=4)
    ap.add_argument("--drop-blocks", default="", help="ratio:blocks depth plan, e.g. 0.8:3 (as reproduce_paper.py)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--variants", default="none,ce,kd,kd+ptq,qat+kd")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from edgecompress.config import DistillConfig, ExportOnnxConfig, ModelConfig, PruneConfig, QuantConfig
    from edgecompress.data import DEBIAN_FASHION_MNIST, load_fashion_mnist
    from edgecompress.export import export_onnx
    from edgecompress.models import load_model
    from edgecompress.prune import prune
    from edgecompress.quantize import quantize_ptq
    from edgecompress.runtime import file_bytes, make_session, measure_latency, run_batched
    from edgecompress.train.distill import distill

    torch.set_num_threads(2)
    train = load_fashion_mnist(DEBIAN_FASHION_MNIST, "train")
    test = load_fashion_mnist(DEBIAN_FASHION_MNIST, "test")
    teacher = load_model(ModelConfig(name="resnet20")).model
    x1 = torch.zeros(1, 1, 28, 28)
    rng = np.random.default_rng(0)
    calib = train.x[np.sort(rng.choice(len(train), 512, replace=False))]

    def onnx_metrics(path: Path) -> dict:
        pred = run_batched(make_session(path, threads=2), test.x).argmax(1)
        lat = measure_latency(path, threads=1, batch=1, warmup=20, runs=args.runs)
        return {"top1": float((pred == test.y).mean()), "p50_ms": lat.p50_ms, "bytes": file_bytes(path)}

    def fp32_metrics(model) -> dict:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.onnx"
            export_onnx(model, x1, p, ExportOnnxConfig())
            return onnx_metrics(p)

    base = cached("ablation-teacher", {"runs": args.runs}, lambda: fp32_metrics(teacher), fresh=args.fresh)
    rows = [{"ratio": 0.0, "variant": "teacher (FP32)", "quant": "fp32", "kd": False} | base]
    depth = {float(k): int(v) for k, v in (p.split(":") for p in args.drop_blocks.split(",") if p)}
    for ratio in (float(r) for r in args.ratios.split(",")):
        drops = depth.get(ratio, 0)
        pr = prune(teacher, x1, PruneConfig(ratio=ratio, round_to=args.round_to, drop_blocks=drops), calib_x=calib[:256])
        for variant in args.variants.split(","):
            key = {"ratio": ratio, "variant": variant, "epochs": args.epochs, "round_to": args.round_to,
                   "runs": args.runs} | ({"drop_blocks": drops} if drops else {})

            def compute(variant=variant, pr=pr):
                t0 = time.time()
                student = copy.deepcopy(pr.model)
                if variant in ("ce", "kd", "kd+ptq"):
                    alpha = 0.0 if variant == "ce" else 0.9
                    distill(student, teacher, train, DistillConfig(epochs=args.epochs, alpha=alpha), seed=0)
                if variant == "qat+kd":
                    from edgecompress.config import QatConfig
                    from edgecompress.quantize.qat import export_qat_onnx, qat

                    res = qat(student, teacher, train, x1, QatConfig(epochs=args.epochs), seed=0)
                    with tempfile.TemporaryDirectory() as d:
                        m = onnx_metrics(export_qat_onnx(res.model, x1, Path(d) / "q.onnx"))
                elif variant == "kd+ptq":
                    with tempfile.TemporaryDirectory() as d:
                        f = Path(d) / "f.onnx"
                        export_onnx(student, x1, f, ExportOnnxConfig())
                        m = onnx_metrics(quantize_ptq(f, Path(d) / "q.onnx", calib, QuantConfig()).path)
                else:
                    m = fp32_metrics(student)
                return m | {"macs_removed": 1 - pr.macs_after / pr.macs_before, "seconds": round(time.time() - t0)}

            r = cached("ablation", key, compute, fresh=args.fresh)
            r |= {"drop_blocks": drops, "quant": "int8" if variant in ("kd+ptq", "qat+kd") else "fp32", "kd": "kd" in variant,
                  "drop_points": 100 * (base["top1"] - r["top1"]), "speedup": base["p50_ms"] / r["p50_ms"],
                  "size_x": base["bytes"] / r["bytes"]}
            rows.append(r)
            print(f"ratio {ratio:.2f} {variant:8s}: top-1 {r['top1']:.4f} ({r['drop_points']:+.2f} pts) "
                  f"p50 {r['p50_ms']:.3f} ms ({r['speedup']:.2f}x) size {r['size_x']:.1f}x", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill_ablation.json").write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    md = table(rows, [("MACs removed (target)", "ratio", ".0%"), ("blocks dropped", "drop_blocks", ""), ("variant", "variant", ""),
                      ("top-1", "top1", ".4f"), ("drop (points)", "drop_points", "+.2f"),
                      ("p50 ms", "p50_ms", ".3f"), ("speed-up", "speedup", ".2f"), ("size ×", "size_x", ".1f")])
    (RESULTS / "distill_ablation.md").write_text(md + "\n")
    print(md)
    assert (WEIGHTS_DIR / "resnet20.pt").exists()


if __name__ == "__main__":
    main()
