"""Does pruning make a model faster on this CPU, and by how much, per criterion?

ResNet-18 and MobileNetV2 at 224x224 (random weights: latency and size only), MACs removed
in {30, 50, 70, 80}% and the latency-target mode, each for every importance criterion with and
without channel rounding (criteria x rounding x {ratios, latency targets}). For each cell: MACs
ratio vs the measured onnxruntime latency ratio (1 thread, batch 1) of FP32 and edgecompress
INT8, all against the FP32 original; a side-by-side table per model (rows criterion x round-to,
columns the targets) follows the full one.

Each cell keeps its FP32 and INT8 ONNX files under benchmarks/cache/prunelat/MODEL-SIZE/ and
caches its structural numbers (benchmarks/cache/), so a killed run resumes. Latency is measured
at the end, per model, round-robin over all of that model's files (the FP32 original and the
unpruned INT8 included): --rounds rounds, each visiting every file once in a shuffled order
with a fresh session, --runs // --rounds timed runs per visit, p50 = median over the rounds
(as reproduce_paper.py does). A latency-target cell prunes against lat_frac x the FP32
original's p50 measured when the cell is computed (the pruner measures latency itself during
its search); it reports the delivered p50 from the round-robin sitting and counts as met when
that INT8 p50 is <= 1.1 x the target.

    python benchmarks/prune_latency.py                 # the default grid
    python benchmarks/prune_latency.py --quick         # l2 only, 50/80%, round-to 8
    python benchmarks/prune_latency.py --models resnet18 --ratios 0.5 --criteria l2,taylor
    python benchmarks/prune_latency.py --remeasure     # re-time the cached files only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

from _common import (
    RESULTS,
    ROOT,
    Files,
    cache_path,
    cached_files,
    export_fp32,
    latency_round_robin,
    onnx_metrics,
    ptq_int8,
    table,
)


def _fp32_and_int8(model, x, calib, files: Files, key: dict[str, Any]) -> dict[str, Any]:
    """Exports ``model`` and quantizes it with edgecompress PTQ into ``files``; the INT8 file's
    metrics plus the FP32 one's prefixed with fp32_ (file, bytes, sha256, int8_op_fraction)."""
    f = export_fp32(model, x, files.path(key, "fp32"))
    q = ptq_int8(f, files.path(key, "int8"), calib)
    m32, m8 = onnx_metrics(f), onnx_metrics(q)
    return m8 | {"fp32_" + k: v for k, v in m32.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--ratios", default="0.3,0.5,0.7,0.8")
    ap.add_argument("--criteria", default="l2,l1,bn,taylor,random")
    ap.add_argument("--round-to", default="8,1", help="rounding variants to compare")
    ap.add_argument("--latency-targets", default="0.25", help="target p50 as a fraction of the FP32 original's")
    ap.add_argument("--latency-criteria", default="", help="criteria crossed with the latency targets (default: "
                    "--criteria); each target cell runs a measured search, minutes at 224 px")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50,
                    help="timed runs per file, spread over the rounds (also the FP32 original's measurement "
                         "that sets a latency target)")
    ap.add_argument("--rounds", type=int, default=9, help="round-robin rounds; p50 = median over the rounds")
    ap.add_argument("--quick", action="store_true", help="l2 only, ratios 0.5,0.8, round-to 8")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cells")
    ap.add_argument("--cached-only", action="store_true", help="tabulate the cells computed so far, compute none "
                    "(e.g. to merge runs made per model)")
    ap.add_argument("--remeasure", action="store_true", help="re-measure latency only (cells stay cached)")
    args = ap.parse_args()
    if args.quick:
        args.criteria, args.ratios, args.round_to = "l2", "0.5,0.8", "8"

    import numpy as np
    import torch

    from edgecompress.config import PruneConfig
    from edgecompress.models.zoo import create_model
    from edgecompress.prune import count_macs_params, prune
    from edgecompress.runtime import measure_latency

    torch.set_num_threads(2)
    rows, originals = [], {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000, in_chans=3).eval()
        x = torch.zeros(1, 3, args.size, args.size)
        rng = np.random.default_rng(0)  # per model, so a resumed run draws the same calibration data
        calib = rng.random((16, 3, args.size, args.size), dtype=np.float32)
        calib_y = rng.integers(0, 1000, len(calib))
        macs0, params0 = count_macs_params(model, x)
        files = Files(f"prunelat/{name}-{args.size}")
        key0 = {"model": name, "size": args.size}

        base = cached_files("prunelat2-base", key0,
                            lambda m=model, xx=x, c=calib, fs=files, k=key0: _fp32_and_int8(m, xx, c, fs, k),
                            fresh=args.fresh)
        print(f"{name}: FP32 original {base['fp32_bytes']:,} B, INT8 (unpruned) {base['bytes']:,} B", flush=True)
        cells = [(c, float(r), int(rt), None) for c in args.criteria.split(",") for r in args.ratios.split(",")
                 for rt in args.round_to.split(",")]
        cells += [(c, None, int(rt), float(f)) for c in (args.latency_criteria or args.criteria).split(",")
                  for rt in args.round_to.split(",") for f in args.latency_targets.split(",") if f]
        done = []
        for crit, ratio, rt, lat_frac in cells:
            key = key0 | {"criterion": crit, "ratio": ratio, "round_to": rt, "latency_target": lat_frac}

            def compute(crit=crit, ratio=ratio, rt=rt, lat_frac=lat_frac, model=model, x=x, calib=calib,
                        calib_y=calib_y, base=base, files=files, key=key, macs0=macs0, params0=params0):
                extra: dict[str, Any] = {}
                target = None
                if lat_frac is not None:
                    # the target the pruner searches against: the INT8 p50 (as delivered) at a fraction
                    # of the FP32 original's, measured now, under the load the search will see
                    p50 = measure_latency(ROOT / base["fp32_file"], threads=1, batch=1, warmup=10,
                                          runs=args.runs).p50_ms
                    target = lat_frac * p50
                    extra = {"fp32_original_p50_ms_at_cell": p50, "target_ms": target}
                torch.manual_seed(0)  # the random criterion draws from torch's RNG: same cell, same channels
                t0 = time.time()
                cfg = PruneConfig(ratio=ratio or 0.0, importance=crit, round_to=rt, target_latency_ms=target)
                res = prune(model, x, cfg, calib_x=calib, calib_y=calib_y)
                extra["prune_seconds"] = round(time.time() - t0, 1)
                if res.latency_history:
                    extra["pruner_p50_ms"] = res.latency_history[-1]["p50_ms"]  # the search's own last measurement
                return _fp32_and_int8(res.model, x, calib, files, key) | extra | {
                    "macs_removed": 1 - res.macs_after / macs0, "params_removed": 1 - res.params_after / params0}

            if args.cached_only and not cache_path("prunelat2", key).exists():
                print(f"  {crit:6s} ratio={ratio} round={rt} target={lat_frac}: not computed yet, skipped", flush=True)
                continue
            c = cached_files("prunelat2", key, compute, fresh=args.fresh)
            done.append((key, c))
            print(f"  {crit:6s} ratio={ratio} round={rt} target={lat_frac}: MACs -{c['macs_removed']:.0%} "
                  f"({1 / (1 - c['macs_removed']):.2f}x) size {base['fp32_bytes'] / c['bytes']:.1f}x "
                  f"int8_op_fraction {c['int8_op_fraction']:.2f}"
                  + (f", target {c['target_ms']:.2f} ms (pruner's p50 {c.get('pruner_p50_ms', float('nan')):.2f} ms)"
                     if lat_frac is not None else "") + f" [{c['prune_seconds']} s]", flush=True)

        paths = {base["file"], base["fp32_file"]} | {c[k] for _, c in done for k in ("file", "fp32_file")}
        lat = latency_round_robin(paths, runs=args.runs, rounds=args.rounds, kind="prunelat2-lat",
                                  key_extra={"model": name, "size": args.size}, fresh=args.fresh or args.remeasure,
                                  label=f"{name}@{args.size}")
        f0 = lat[base["fp32_file"]]
        originals[name] = {"size": args.size, "fp32_p50_ms": f0, "int8_p50_ms": lat[base["file"]],
                           "fp32_bytes": base["fp32_bytes"], "int8_bytes": base["bytes"],
                           "int8_op_fraction": base["int8_op_fraction"], "fp32_file": base["fp32_file"],
                           "int8_file": base["file"]}
        print(f"{name}: FP32 original {f0:.2f} ms, INT8 (unpruned) {lat[base['file']]:.2f} ms "
              f"({f0 / lat[base['file']]:.2f}x)", flush=True)
        for key, c in done:
            r = key | {
                "runs": args.runs, "rounds": args.rounds, "fp32_p50_ms": lat[c["fp32_file"]],
                "int8_p50_ms": lat[c["file"]], "fp32_bytes": c["fp32_bytes"], "int8_bytes": c["bytes"],
                "int8_op_fraction": c["int8_op_fraction"], "macs_removed": c["macs_removed"],
                "params_removed": c["params_removed"], "prune_seconds": c["prune_seconds"],
                "target_ms": c.get("target_ms"), "fp32_original_p50_ms_at_cell": c.get("fp32_original_p50_ms_at_cell"),
                "pruner_p50_ms": c.get("pruner_p50_ms"), "fp32_original_p50_ms": f0,
                "fp32_file": c["fp32_file"], "int8_file": c["file"],
            }  # fmt: skip
            r |= {
                "macs_x": 1 / (1 - r["macs_removed"]),
                "fp32_speedup": f0 / r["fp32_p50_ms"],
                "int8_speedup": f0 / r["int8_p50_ms"],
                "size_x": base["fp32_bytes"] / r["int8_bytes"],
                "target_met": None if r["target_ms"] is None else r["int8_p50_ms"] <= r["target_ms"] * 1.1,
            }
            rows.append(r)
            print(f"  {r['criterion']:6s} ratio={r['ratio']} round={r['round_to']} target={r['latency_target']}: "
                  f"MACs -{r['macs_removed']:.0%} ({r['macs_x']:.2f}x) FP32 {r['fp32_speedup']:.2f}x "
                  f"INT8 {r['int8_speedup']:.2f}x size {r['size_x']:.1f}x"
                  + ("" if r["target_met"] is None else
                     f", INT8 {r['int8_p50_ms']:.2f} ms vs target {r['target_ms']:.2f} ms "
                     f"({'met' if r['target_met'] else 'missed'})"), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"cpu": platform.processor(), "torch": torch.__version__, "runs": args.runs, "rounds": args.rounds,
           "originals": originals, "rows": rows}
    (RESULTS / "prune_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    md = (f"p50: onnxruntime 1 thread, batch 1, round-robin per model over all its files, {args.rounds} rounds x "
          f"{max(1, args.runs // args.rounds)} runs, median over the rounds.\n\n")
    md += table(rows, [("model", "model", ""), ("criterion", "criterion", ""), ("target ratio", "ratio", ""),
                       ("latency target", "latency_target", ""), ("target ms", "target_ms", ".2f"),
                       ("round-to", "round_to", ""), ("MACs removed", "macs_removed", ".1%"),
                       ("MACs ×", "macs_x", ".2f"), ("FP32 p50 ms (original)", "fp32_original_p50_ms", ".2f"),
                       ("FP32 p50 ms", "fp32_p50_ms", ".2f"), ("FP32 speed-up", "fp32_speedup", ".2f"),
                       ("INT8 p50 ms", "int8_p50_ms", ".2f"), ("INT8 speed-up vs FP32 original", "int8_speedup", ".2f"),
                       ("target met", "target_met", ""), ("size ×", "size_x", ".1f"),
                       ("int8_op_fraction", "int8_op_fraction", ".2f")])
    md += "\n\n" + side_by_side(rows, originals)
    (RESULTS / "prune_latency.md").write_text(md + "\n")
    print(md)


def side_by_side(rows: list[dict], originals: dict[str, dict]) -> str:
    """Per model: one row per (criterion, round-to), one column per target; cells are the INT8 speed-up
    vs the FP32 original, with the MACs removed for latency targets (where the pruner stopped)."""
    targets = sorted({("ratio", r["ratio"]) for r in rows if r["ratio"] is not None}) + \
        sorted({("latency", r["latency_target"]) for r in rows if r["latency_target"] is not None})
    head = [f"-{v:.0%} MACs" if k == "ratio" else f"p50 <= {v:g}x FP32" for k, v in targets]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        o = originals[model]
        out += [f"{model}: FP32 p50 ms (original) {o['fp32_p50_ms']:.2f}, INT8 p50 ms (unpruned) "
                f"{o['int8_p50_ms']:.2f}", "", f"INT8 speed-up vs FP32 original, {model}:", "",
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
