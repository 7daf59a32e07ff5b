"""Does pruning make a model faster on this CPU, and by how much, per criterion?

ResNet-18 and MobileNetV2 at 224x224 (random weights: latency and size only), MACs removed
in {30, 50, 70, 80}% and the latency-target mode, each for every importance criterion with and
without channel rounding (criteria x rounding x {ratios, latency targets}). For each cell: MACs
ratio vs the measured onnxruntime latency ratio (1 thread, batch 1) of FP32 and edgecompress
INT8, all against the FP32 original measured in the same run; a side-by-side table per model
(rows criterion x round-to, columns the targets) follows the full one. Cells are cached
(benchmarks/cache/), so a killed run resumes.

    python benchmarks/prune_latency.py                 # the default grid
    python benchmarks/prune_latency.py --quick         # l2 only, 50/80%, fewer runs
    python benchmarks/prune_latency.py --models resnet18 --ratios 0.5 --criteria l2,taylor
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from _common import RESULTS, cached, fp32_and_int8, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--ratios", default="0.3,0.5,0.7,0.8")
    ap.add_argument("--criteria", default="l2,l1,bn,taylor,random")
    ap.add_argument("--round-to", default="8,1", help="rounding variants to compare")
    ap.add_argument("--latency-targets", default="0.25", help="target p50 as a fraction of the FP32 original's")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="l2 only, ratios 0.5,0.8, round-to 8")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cells")
    args = ap.parse_args()
    if args.quick:
        args.criteria, args.ratios, args.round_to = "l2", "0.5,0.8", "8"

    import numpy as np
    import torch

    from edgecompress.config import PruneConfig
    from edgecompress.prune import count_macs_params, prune
    from edgecompress.zoo import create_model

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000, in_chans=3).eval()
        x = torch.zeros(1, 3, args.size, args.size)
        calib = rng.random((16, 3, args.size, args.size), dtype=np.float32)
        macs0, params0 = count_macs_params(model, x)
        key0 = {"model": name, "size": args.size, "runs": args.runs}
        base = cached("prunelat-base", key0, lambda m=model, xx=x, c=calib: fp32_and_int8(m, xx, c, runs=args.runs), fresh=args.fresh)
        print(f"{name}: FP32 {base['fp32_p50_ms']:.2f} ms, INT8 (unpruned) {base['int8_p50_ms']:.2f} ms", flush=True)
        cells = [(c, float(r), int(rt), None) for c in args.criteria.split(",") for r in args.ratios.split(",")
                 for rt in args.round_to.split(",")]
        cells += [(c, None, int(rt), float(f)) for c in args.criteria.split(",") for rt in args.round_to.split(",")
                  for f in args.latency_targets.split(",") if f]
        for crit, ratio, rt, lat_frac in cells:
            key = key0 | {"criterion": crit, "ratio": ratio, "round_to": rt, "latency_target": lat_frac}

            def compute(crit=crit, ratio=ratio, rt=rt, lat_frac=lat_frac, model=model, x=x, calib=calib, base=base,
                        macs0=macs0, params0=params0):
                t0 = time.time()
                # latency target: the INT8 p50 (as delivered) at a fraction of the FP32 original's
                target = None if lat_frac is None else lat_frac * base["fp32_p50_ms"]
                cfg = PruneConfig(ratio=ratio or 0.0, importance=crit, round_to=rt, target_latency_ms=target)
                res = prune(model, x, cfg, calib_x=calib, calib_y=rng.integers(0, 1000, len(calib)))
                m = fp32_and_int8(res.model, x, calib, runs=args.runs)
                return m | {"macs_removed": 1 - res.macs_after / macs0, "params_removed": 1 - res.params_after / params0,
                            "prune_seconds": round(time.time() - t0, 1)}

            r = cached("prunelat", key, compute, fresh=args.fresh)
            r |= {
                "macs_x": 1 / (1 - r["macs_removed"]),
                "fp32_speedup": base["fp32_p50_ms"] / r["fp32_p50_ms"],
                "int8_speedup": base["fp32_p50_ms"] / r["int8_p50_ms"],
                "size_x": base["fp32_bytes"] / r["int8_bytes"],
                "target_met": None if lat_frac is None else r["int8_p50_ms"] <= lat_frac * base["fp32_p50_ms"] * 1.1,
            }
            rows.append(r)
            print(f"  {crit:6s} ratio={ratio} round={rt} target={lat_frac}: MACs -{r['macs_removed']:.0%} "
                  f"({r['macs_x']:.2f}x) FP32 {r['fp32_speedup']:.2f}x INT8 {r['int8_speedup']:.2f}x "
                  f"size {r['size_x']:.1f}x", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"cpu": platform.processor(), "torch": torch.__version__, "rows": rows}
    (RESULTS / "prune_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    md = table(rows, [("model", "model", ""), ("criterion", "criterion", ""), ("target ratio", "ratio", ""),
                      ("latency target", "latency_target", ""), ("round-to", "round_to", ""),
                      ("MACs removed", "macs_removed", ".1%"), ("MACs ×", "macs_x", ".2f"),
                      ("FP32 p50 ms", "fp32_p50_ms", ".2f"), ("FP32 speed-up", "fp32_speedup", ".2f"),
                      ("INT8 p50 ms", "int8_p50_ms", ".2f"), ("INT8 speed-up vs FP32 original", "int8_speedup", ".2f"),
                      ("size ×", "size_x", ".1f"), ("int8_op_fraction", "int8_op_fraction", ".2f")])
    md += "\n\n" + side_by_side(rows)
    (RESULTS / "prune_latency.md").write_text(md + "\n")
    print(md)


def side_by_side(rows: list[dict]) -> str:
    """Per model: one row per (criterion, round-to), one column per target; cells are the INT8 speed-up
    vs the FP32 original, with the MACs removed for latency targets (where the pruner stopped)."""
    targets = sorted({("ratio", r["ratio"]) for r in rows if r["ratio"] is not None}) + \
        sorted({("latency", r["latency_target"]) for r in rows if r["latency_target"] is not None})
    head = [f"-{v:.0%} MACs" if k == "ratio" else f"p50 <= {v:g}x FP32" for k, v in targets]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [f"INT8 speed-up vs FP32 original, {model}:", "",
                "| criterion | round-to | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(head)]
        for crit, rt in dict.fromkeys((r["criterion"], r["round_to"]) for r in rows if r["model"] == model):
            cells = []
            for k, v in targets:
                hit = [r for r in rows if r["model"] == model and r["criterion"] == crit and r["round_to"] == rt
                       and r["ratio" if k == "ratio" else "latency_target"] == v]
                if not hit:
                    cells.append("–")
                elif k == "ratio":
                    cells.append(f"{hit[0]['int8_speedup']:.2f}x")
                else:
                    cells.append(f"{hit[0]['int8_speedup']:.2f}x (-{hit[0]['macs_removed']:.0%}"
                                 f"{'' if hit[0]['target_met'] else ', missed'})")
            out.append(f"| {crit} | {rt} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
