"""Reproduce and beat the reference result (Bao et al. 2019: pruning + quantization + distillation
removed 80% of FLOPs for ~1% accuracy loss), with every peer measured in the same run.

Accuracy track, for each trained teacher in models/ (Fashion-MNIST, top-1 on the 10k test split):
  MACs removed in {50, 70, 80, 90}% x {prune only, prune + INT8, prune + KD (+ INT8),
  prune + QAT + KD}, plus peers on the same teacher: onnxruntime quantize_static with its
  defaults, Torch-Pruning alone (same MACs ratio and fine-tuning budget, cross-entropy, no KD)
  and Intel Neural Compressor 3.x INT8. ``--long-epochs`` adds prune + KD + INT8 cells with a
  longer distillation at ``--long-ratios``.
Latency track: ResNet-18 and MobileNetV2 at 224x224 (random weights: latency and size only),
  80% of MACs removed + INT8, against their FP32 original.

All latencies: onnxruntime, 1 thread, batch 1, measured round-robin over every file of a model
in one sitting, ratios to that model's FP32 original from the same sitting. Each cell is cached
(benchmarks/cache/), so a killed run resumes; progress is printed per cell.

Writes benchmarks/results/paper.json (list of rows: model, method, macs_removed, quant, kd, top1,
teacher_top1, latency_speedup, size_ratio, bytes, latency_ms_p50, ...), benchmarks/RESULTS.md
and one accuracy-vs-latency Pareto plot per model (benchmarks/results/pareto-MODEL.png).

    python benchmarks/reproduce_paper.py                                # everything
    python benchmarks/reproduce_paper.py --epochs 1 --long-epochs 6     # what RESULTS.md shows
    python benchmarks/reproduce_paper.py --tracks latency               # 224 px latency track only
    python benchmarks/reproduce_paper.py --report-only                  # re-render from paper.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from typing import Any

from _common import (
    RESULTS,
    ROOT,
    WEIGHTS_DIR,
    Files,
    cached,
    cached_files,
    export_fp32,
    latency_round_robin,
    onnx_metrics,
    ptq_int8,
    ptq_int8_latency_aware,
    shipped_sizes,
)

# edgecompress's channel + depth plan per MACs-removed ratio for the 28 px teachers: on small
# inputs latency follows the operator count, so the deeper ratios also remove residual blocks.
DEFAULT_DEPTH = "0.5:0,0.7:2,0.8:3,0.9:5"
METHODS = {
    "original": "FP32 original",
    "ort-ptq": "onnxruntime quantize_static (its defaults)",
    "inc-int8": "Intel Neural Compressor 3.x static INT8 (pt2e -> ONNX)",
    "torch-pruning+ft": "Torch-Pruning alone + cross-entropy fine-tuning",
    "edgecompress-ptq": "edgecompress PTQ (no pruning)",
    "edgecompress-ptq-la": "edgecompress PTQ, --latency-aware-int8 (no pruning)",
    "prune": "edgecompress prune",
    "prune+int8": "edgecompress prune + INT8 PTQ",
    "prune+kd": "edgecompress prune + KD",
    "prune+kd+int8": "edgecompress prune + KD + INT8 PTQ",
    "prune+kd+int8-la": "edgecompress prune + KD + INT8 PTQ, --latency-aware-int8",
    "prune+int8-la": "edgecompress prune + INT8 PTQ, --latency-aware-int8",
    "prune+qat+kd": "edgecompress prune + QAT with KD",
}
PEERS = ("ort-ptq", "inc-int8", "torch-pruning+ft")


# every -la cell's key carries this: since session 6 their FP32 layers store int8 weights (new files,
# so new keys); both tracks add it
LA_KEY = {"la_weights": "int8"}
SENS75 = (0.25, 0.5, 0.75)  # the table of ~sens75 cells (session 7), in sensitivity.json


def _long_cell(v: str) -> tuple[str | None, float, int | None, float | None, int | None, float | None,
                                dict[str, Any]]:
    """[MODEL=]RATIO[:BLOCKS][@EPOCHS][/ROUND][+PARAMS][~OPTION...] -> (model, ratio, blocks, epochs,
    round-to, params removed target, recipe options); None = the defaults (every --long-models
    teacher, the depth plan, --long-epochs, --round-to, no params target). E.g. 0.8:3@16/4+0.83:
    80% of MACs and 83% of params removed, 3 blocks dropped, round-to 4, 16 epochs of KD;
    vgg7-small=0.8@48: that teacher only. Options (as edgecompress export's flags): ``sens``
    (--allocation sensitivity, the table measured on the validation split up to the pruner's
    90% cap, as export measures it; ``sens75``: session 7's table, to 75%), an importance
    (``taylor``, ``l1``, ...: --importance), ``T2`` (--temperature 2), ``noaug`` (--kd-augment-shift 0
    --no-kd-augment-flip: KD on the training images as they are)."""
    from edgecompress.config import Importance, PruneConfig
    from edgecompress.prune.sensitivity import ratios_up_to

    IMPORTANCES = [i.value for i in Importance]  # noqa: N806

    v, *options = v.split("~")
    opts: dict[str, Any] = {}
    for o in options:
        if o == "sens":  # the table the pipeline measures: up to the pruner's per-layer cap
            opts["allocation"] = "sensitivity"
            opts["sens_ratios"] = ",".join(f"{r:g}" for r in ratios_up_to(PruneConfig().max_layer_ratio))
        elif o == "sens75":  # session 7's table, which stopped at 75% (its cells keep their keys)
            opts["allocation"] = "sensitivity"
        elif o in IMPORTANCES:
            opts["importance"] = o
        elif o.startswith("T"):
            opts["temperature"] = float(o[1:])
        elif o == "noaug":  # KD on the training images as they are: no random shift or flip
            opts["augment"] = "off"
        else:
            raise SystemExit(f"--long-ratios: unknown cell option ~{o} in {v}; use sens, sens75, an importance "
                             f"({', '.join(IMPORTANCES)}), T<temperature> or noaug")
    model, _, v = v.rpartition("=")
    v, _, tp = v.partition("+")
    v, _, rt = v.partition("/")
    v, _, e = v.partition("@")
    r, _, k = v.partition(":")
    return (model or None, float(r), int(k) if k else None, float(e) if e else None, int(rt) if rt else None,
            float(tp) if tp else None, opts)


def _recipe(key: dict[str, Any]) -> str:
    """The cell's recipe options (those different from the defaults), as a table shows them."""
    parts = []
    if key.get("allocation"):
        top = float(key.get("sens_ratios", "0.75").split(",")[-1]) if key["allocation"] == "sensitivity" else None
        parts.append(f"{key['allocation']} allocation" + (f" (table to {top:.0%})" if top else ""))
    if key.get("importance"):
        parts.append(f"{key['importance']} importance")
    if key.get("temperature") is not None:
        parts.append(f"T={key['temperature']:g}")
    if key.get("augment") == "off":
        parts.append("no augmentation")
    return ", ".join(parts)


def _parse_depth(s: str) -> dict[float, int]:
    return {float(k): int(v) for k, v in (p.split(":") for p in s.split(",") if p)}


def _tp_alone(teacher, x, ratio: float):
    """Torch-Pruning by itself: L2 group magnitude, uniform channel ratio, no rounding, no depth,
    its progressive schedule stepped until the MACs target is met (as a user would do by hand)."""
    import torch
    import torch_pruning as tp

    m = copy.deepcopy(teacher).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    macs0 = tp.utils.count_ops_and_params(m, x)[0]
    classifier = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]  # its outputs are the classes
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.95, iterative_steps=100, ignored_layers=[classifier])
    for _ in range(100):
        pruner.step()
        if tp.utils.count_ops_and_params(m, x)[0] <= macs0 * (1 - ratio):
            break
    return m


class Teacher:
    def __init__(self, name: str, args) -> None:
        import numpy as np
        import torch

        from edgecompress.config import ModelConfig
        from edgecompress.data import load_splits
        from edgecompress.files import sha256_file
        from edgecompress.models import load_model

        w = WEIGHTS_DIR / f"{name}.pt"
        lm = load_model(ModelConfig(name=name, weights=str(w)))
        self.name, self.model, self.x = name, lm.model.eval(), torch.zeros(*lm.input_shape)
        self.splits = load_splits(None, None, input_shape=tuple(lm.input_shape[1:]))
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(self.splits.train), 512, replace=False))
        self.calib, self.calib_y = self.splits.train.x[idx], self.splits.train.y[idx]
        self.test = self.splits.eval
        if args.max_test:
            self.test = self.test.take(np.arange(args.max_test), f"first {args.max_test} of the test split")
        self.key = {"teacher": name, "sha256": sha256_file(w)[:16], "test": len(self.test), "calib": 512}


def accuracy_track(name: str, args) -> list[dict[str, Any]]:
    import torch

    from edgecompress.config import DistillConfig, PruneConfig
    from edgecompress.prune import count_macs_params, prune
    from edgecompress.train.distill import distill

    t = Teacher(name, args)
    files = Files(f"paper/{name}")
    from edgecompress.prune.depth import residual_blocks

    # the depth plan where the model has residual blocks to drop (a plain VGG chain has none)
    n_blocks = len(residual_blocks(t.model, t.x))
    depth = {r: min(k, n_blocks) for r, k in _parse_depth(args.drop_blocks).items()}
    macs0, params0 = count_macs_params(t.model, t.x)
    pruned_cache: dict[tuple, Any] = {}

    def sensitivity_table(ratios: tuple[float, ...] | None) -> str:
        """The pruning sensitivity of this teacher on (up to 2000 samples of) the validation split,
        as the pipeline measures it for --allocation sensitivity; computed once per set of ratios,
        cached (None: session 7's table, to 75%, in sensitivity.json)."""
        import numpy as np

        from edgecompress.files import atomic_write_text
        from edgecompress.prune.sensitivity import SensitivityConfig, sensitivity

        ratios = ratios or SENS75
        path = files.dir / ("sensitivity.json" if ratios == SENS75 else
                            f"sensitivity-{','.join(f'{r:g}' for r in ratios)}.json")
        if not path.exists():
            val = t.splits.val.take(np.arange(min(2000, len(t.splits.val))), t.splits.val.source)
            res = sensitivity(t.model, t.x, val, SensitivityConfig(importance="l2", ratios=ratios), progress=print)
            atomic_write_text(path, json.dumps(res, indent=2) + "\n")
        return str(path)

    def pruned(key: dict[str, Any]):
        sens = tuple(float(r) for r in key["sens_ratios"].split(",")) if "sens_ratios" in key else None
        pk = (key["ratio"], key["drop_blocks"], key["round_to"], key.get("target_params"), key.get("allocation"),
              key.get("importance"), sens)
        if pk not in pruned_cache:
            alloc = key.get("allocation") or "uniform"
            cfg = PruneConfig(ratio=pk[0], drop_blocks=pk[1], round_to=pk[2], target_params=pk[3], allocation=alloc,
                              importance=key.get("importance") or "l2",
                              sensitivity=sensitivity_table(sens) if alloc == "sensitivity" else None)
            pruned_cache[pk] = prune(t.model, t.x, cfg, calib_x=t.calib[:256], calib_y=t.calib_y[:256])
        return pruned_cache[pk]

    def cell(method: str, ratio: float, epochs: float, compute, drops: int | None = None,
             round_to: int | None = None, target_params: float | None = None,
             opts: dict[str, Any] | None = None) -> dict[str, Any]:
        drops = depth.get(ratio, 0) if drops is None else drops
        key = t.key | {"method": method, "ratio": ratio, "epochs": epochs, "round_to": round_to or args.round_to,
                       "drop_blocks": drops if method.startswith("prune") else 0}
        if target_params is not None:  # only then: the cells cached before this option keep their keys
            key["target_params"] = target_params
        key |= opts or {}  # recipe options, only when set: the other cells keep their keys
        if method.endswith("-la"):
            key |= LA_KEY
        t0 = time.time()
        print(f"[{name}] {method} @ {ratio:.0%} ({epochs:g} epochs) ...", flush=True)
        row = cached_files("paper", key, lambda: compute(key) | {"seconds": round(time.time() - t0)}, fresh=args.fresh)
        print(f"[{name}] {method} @ {ratio:.0%}: top-1 {row.get('top1', float('nan')):.4f}, "
              f"{row['bytes']:,} B ({row['seconds']} s)", flush=True)
        return row

    def struct(m) -> dict[str, Any]:
        macs, params = count_macs_params(m, t.x)
        return {"macs": macs, "params": params}

    def original(key):
        return onnx_metrics(export_fp32(t.model, t.x, files.path(key, "fp32")), t.test) | struct(t.model)

    def ort_ptq(key):
        from quant_peers import _ort_defaults

        out = files.path(key, "int8")
        _ort_defaults(ROOT / rows_by["original"]["file"], out, t.calib)
        return onnx_metrics(out, t.test) | struct(t.model)

    def inc(key):
        from edgecompress.quantize.inc import quantize_inc

        out = files.path(key, "int8")
        quantize_inc(t.model, t.x, t.calib, out)
        return onnx_metrics(out, t.test) | struct(t.model)

    def ec_ptq(key):
        return onnx_metrics(ptq_int8(ROOT / rows_by["original"]["file"], files.path(key, "int8"), t.calib),
                            t.test) | struct(t.model)

    def latency_aware(parent: dict[str, Any]):
        """The same FP32 file as ``parent``'s, quantized with --latency-aware-int8 (decided here)."""

        def compute(key):
            out = files.path(key, "int8")
            rec = ptq_int8_latency_aware(ROOT / parent.get("fp32_file", parent["file"]), out, t.calib)
            same = {k: parent[k] for k in ("macs", "params", "dropped_blocks", "kd_steps") if k in parent}
            return onnx_metrics(out, t.test) | same | rec

        return compute

    def prune_only(key):
        pr = pruned(key)
        f = export_fp32(pr.model, t.x, files.path(key, "fp32"))
        q = ptq_int8(f, files.path(key, "int8"), t.calib)
        base = struct(pr.model) | {"dropped_blocks": [b["name"] for b in pr.dropped_blocks]}
        m32, m8 = onnx_metrics(f, t.test), onnx_metrics(q, t.test)
        return m8 | base | {"fp32_" + k: v for k, v in m32.items()}

    def kd(key):
        pr = pruned(key)
        s = copy.deepcopy(pr.model)
        aug = {"augment_shift": 0, "augment_flip": False} if key.get("augment") == "off" else {}
        dcfg = DistillConfig(epochs=key["epochs"], temperature=key.get("temperature", 4.0), **aug)
        dr = distill(s, t.model, t.splits.train, dcfg, seed=0, desc=f"kd {key['ratio']:.0%}")
        f = export_fp32(s, t.x, files.path(key, "fp32"))
        q = ptq_int8(f, files.path(key, "int8"), t.calib)
        m32, m8 = onnx_metrics(f, t.test), onnx_metrics(q, t.test)
        return m8 | struct(s) | {"fp32_" + k: v for k, v in m32.items()} | {
            "kd_steps": dr.steps, "dropped_blocks": [b["name"] for b in pr.dropped_blocks]}

    def qat_kd(key):
        from edgecompress.config import QatConfig
        from edgecompress.quantize.qat import export_qat_onnx, qat

        pr = pruned(key)
        res = qat(pr.model, t.model, t.splits.train, t.x, QatConfig(epochs=key["epochs"]), seed=0,
                  desc=f"qat {key['ratio']:.0%}")
        return onnx_metrics(export_qat_onnx(res.model, t.x, files.path(key, "int8")), t.test) | struct(pr.model) | {
            "dropped_blocks": [b["name"] for b in pr.dropped_blocks]}

    def tp_ft(key):
        m = _tp_alone(t.model, t.x, key["ratio"])
        distill(m, t.model, t.splits.train, DistillConfig(epochs=key["epochs"], alpha=0.0), seed=0,
                desc=f"tp+ce {key['ratio']:.0%}")  # alpha 0: cross-entropy only
        return onnx_metrics(export_fp32(m, t.x, files.path(key, "fp32")), t.test) | struct(m)

    torch.set_num_threads(args.threads)
    rows_by: dict[str, dict[str, Any]] = {}
    cells: list[tuple[str, float, str, bool, dict[str, Any]]] = []  # method, ratio, quant, kd, row
    rows_by["original"] = cell("original", 0.0, 0, original)
    cells.append(("original", 0.0, "fp32", False, rows_by["original"]))
    for method, fn in (("edgecompress-ptq", ec_ptq), ("ort-ptq", ort_ptq), ("inc-int8", inc)):
        if method in args.methods:
            try:
                cells.append((method, 0.0, "int8", False, cell(method, 0.0, 0, fn)))
            except Exception as e:  # one failing peer must not hide the others
                print(f"[{name}] {method}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    if "edgecompress-ptq-la" in args.methods:
        la = cell("edgecompress-ptq-la", 0.0, 0, latency_aware(rows_by["original"]))
        if la["fp32_nodes"]:
            cells.append(("edgecompress-ptq-la", 0.0, "int8", False, la))

    def kd_cells(r: float, epochs: float, **kw) -> None:
        row = cell("prune+kd+int8", r, epochs, kd, **kw)
        cells.append(("prune+kd", r, "fp32", True, _fp32_view(row)))
        cells.append(("prune+kd+int8", r, "int8", True, row))
        if "prune+kd+int8-la" in args.methods:
            la = cell("prune+kd+int8-la", r, epochs, latency_aware(row), **kw)
            if la["fp32_nodes"]:  # else its file is the parent's, already a row
                cells.append(("prune+kd+int8-la", r, "int8", True, la))
    for r in args.ratios:
        if "prune" in args.methods or "prune+int8" in args.methods:
            row = cell("prune", r, 0, prune_only)
            cells.append(("prune", r, "fp32", False, _fp32_view(row)))
            cells.append(("prune+int8", r, "int8", False, row))
        if "prune+kd+int8" in args.methods and args.epochs > 0:
            kd_cells(r, args.epochs)
        if "prune+qat+kd" in args.methods and args.epochs > 0:
            cells.append(("prune+qat+kd", r, "int8", True, cell("prune+qat+kd", r, args.epochs, qat_kd)))
        if "torch-pruning+ft" in args.methods and args.epochs > 0:
            cells.append(("torch-pruning+ft", r, "fp32", False, cell("torch-pruning+ft", r, args.epochs, tp_ft)))
    seen = set()
    for model, r, k, e, rt, tp, opts in args.long_ratios:  # None: the defaults
        if model != name and (model is not None or name not in (args.long_models or [name])):
            continue
        k = depth.get(r, 0) if k is None else min(k, n_blocks)
        e = e or args.long_epochs
        same = (r, k, e, rt or args.round_to, tp, tuple(sorted(opts.items())))
        if not e or same in seen:  # e.g. 0.8 and 0.8:0 on a chain without blocks
            continue
        seen.add(same)
        kd_cells(r, e, drops=k, round_to=rt, target_params=tp, opts=opts)

    if args.cells_only:
        return []
    sizes = {f: shipped_sizes(f) for f in {c[4]["file"] for c in cells}}
    lat = _latency({c[4]["file"] for c in cells}, args, name)
    base = rows_by["original"]
    teacher_top1 = base.get("top1")
    out = []
    for method, r, quant, kd_, c in cells:
        p50 = lat[c["file"]]
        out.append({
            "model": name, "track": "accuracy", "method": method, "label": METHODS[method],
            "macs_removed": 1 - c["macs"] / macs0, "target_macs_removed": r, "quant": quant, "kd": kd_,
            "epochs": c.get("epochs", 0), "top1": c.get("top1"), "teacher_top1": teacher_top1,
            "latency_speedup": lat[base["file"]] / p50, **_size_fields(sizes, base["file"], c["file"]),
            "target_params_removed": c.get("target_params"),
            "latency_ms_p50": p50, "params": c["params"], "macs": c["macs"],
            "int8_op_fraction": c["int8_op_fraction"], "dropped_blocks": c.get("dropped_blocks", []),
            "peer": method in PEERS, "file": c["file"],
            "round_to": c.get("round_to") if method.startswith("prune") else None,
            "fp32_nodes": c.get("fp32_nodes"), "recipe": _recipe(c),
        })  # fmt: skip
    return out


def _size_fields(sizes: dict[str, dict[str, int]], base: str, f: str) -> dict[str, Any]:
    """bytes and the size ratio to the FP32 original, as shipped and with --compact-names (the
    original compacted too, so the ratio compares like with like)."""
    return {"bytes": sizes[f]["bytes"], "size_ratio": sizes[base]["bytes"] / sizes[f]["bytes"],
            "bytes_compact": sizes[f]["bytes_compact"],
            "size_ratio_compact": sizes[base]["bytes_compact"] / sizes[f]["bytes_compact"]}


def _fp32_view(row: dict[str, Any]) -> dict[str, Any]:
    """The FP32 parent recorded inside an INT8 cell, as a cell of its own."""
    v = {k[5:]: val for k, val in row.items() if k.startswith("fp32_")}
    return row | v


def _latency(files: set[str], args, model: str) -> dict[str, float]:
    """p50 per file, measured round-robin over all of ``files`` (see latency_round_robin)."""
    return latency_round_robin(files, runs=args.runs, rounds=args.rounds, kind="paper-lat", key_extra={"model": model},
                               fresh=args.fresh or args.remeasure, label=model)


def latency_track(name: str, args) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from edgecompress.config import PruneConfig
    from edgecompress.models.zoo import create_model
    from edgecompress.prune import count_macs_params, prune

    torch.manual_seed(0)
    model = create_model(name, num_classes=1000, in_chans=3).eval()
    x = torch.zeros(1, 3, args.size, args.size)
    calib = np.random.default_rng(0).random((16, 3, args.size, args.size), dtype=np.float32)
    files = Files(f"paper/{name}-{args.size}")
    macs0 = count_macs_params(model, x)[0]
    variants = [("original", 0.0, 0, None), ("edgecompress-ptq", 0.0, 0, None), ("ort-ptq", 0.0, 0, None)]
    variants += [("prune+int8", r, 0, None) for r in args.latency_ratios]
    variants += [("prune+int8", r, k, None) for r in args.latency_ratios for k in args.latency_drop_blocks if k]
    variants += [("prune+int8", r, k, tp) for r in args.latency_ratios if r >= 0.79 for tp in args.latency_params
                 for k in dict.fromkeys([0, *args.latency_drop_blocks])]
    cells = []
    la_key = {"method": "prune+int8-la"} | LA_KEY
    for method, r, k, tp in variants:
        key = {"model": name, "size": args.size, "method": method, "ratio": r, "drop_blocks": k,
               "weights": "random (torch.manual_seed(0))", "round_to": 8}
        if tp is not None:  # only then: the cells cached before this option keep their keys
            key["target_params"] = tp

        def compute(method=method, r=r, k=k, tp=tp, key=key):
            f32 = files.path({"model": name, "size": args.size, "method": "original"}, "fp32")
            if method == "original":
                return onnx_metrics(export_fp32(model, x, f32), None) | {"macs": macs0}
            if method == "ort-ptq":
                from quant_peers import _ort_defaults

                _ort_defaults(f32, files.path(key, "int8"), calib)
                return onnx_metrics(files.path(key, "int8"), None) | {"macs": macs0}
            if method == "edgecompress-ptq":
                return onnx_metrics(ptq_int8(f32, files.path(key, "int8"), calib), None) | {"macs": macs0}
            pr = prune(model, x, PruneConfig(ratio=r, drop_blocks=k, target_params=tp), calib_x=calib)
            f = export_fp32(pr.model, x, files.path(key, "fp32"))
            return onnx_metrics(ptq_int8(f, files.path(key, "int8"), calib), None) | {
                "macs": pr.macs_after, "dropped_blocks": [b["name"] for b in pr.dropped_blocks]}

        what = f"{r:.0%}{f' (drop {k})' if k else ''}{f' (params -{tp:.0%})' if tp else ''}"
        print(f"[{name}@{args.size}] {method} @ {what} ...", flush=True)
        row = cached("paper-lat-track", key, compute, fresh=args.fresh) | {"target_params": tp}
        cells.append((method, r, k, row))
        if method == "prune+int8" and r >= 0.79 and "prune+int8-la" in args.methods:

            def derived(parent=key, row=row):
                out = files.path(parent | la_key, "int8")
                rec = ptq_int8_latency_aware(files.path(parent, "fp32"), out, calib)
                return onnx_metrics(out, None) | {"macs": row["macs"], "dropped_blocks": row.get("dropped_blocks", [])} | rec

            print(f"[{name}@{args.size}] prune+int8-la @ {what} ...", flush=True)
            la = cached("paper-lat-track", key | la_key, derived, fresh=args.fresh) | {"target_params": tp}
            if la["fp32_nodes"]:
                cells.append(("prune+int8-la", r, k, la))
    if args.cells_only:
        return []
    sizes = {f: shipped_sizes(f) for f in {c[3]["file"] for c in cells}}
    lat = _latency({c[3]["file"] for c in cells}, args, f"{name}@{args.size}")
    base = cells[0][3]
    return [{
        "model": f"{name}@{args.size}", "track": "latency", "method": m, "label": METHODS[m]
        + (f" ({k} blocks dropped)" if k else "")
        + (f" (+ {c['target_params']:.0%} of params removed)" if c["target_params"] else ""), "macs_removed": 1 - c["macs"] / macs0, "target_macs_removed": r,
        "quant": "fp32" if m == "original" else "int8", "kd": False, "epochs": 0, "top1": None, "teacher_top1": None,
        "latency_speedup": lat[base["file"]] / lat[c["file"]], **_size_fields(sizes, base["file"], c["file"]),
        "latency_ms_p50": lat[c["file"]], "int8_op_fraction": c["int8_op_fraction"],
        "dropped_blocks": c.get("dropped_blocks", []), "peer": m in PEERS, "file": c["file"],
        "target_params_removed": c["target_params"], "fp32_nodes": c.get("fp32_nodes"),
    } for m, r, k, c in cells]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20", help="teachers in models/ for the accuracy track")
    ap.add_argument("--tracks", default="accuracy,latency")
    ap.add_argument("--ratios", default="0.5,0.7,0.8,0.9")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m not in ("prune+kd",)))
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning budget of every trained cell")
    ap.add_argument("--long-epochs", type=float, default=0.0, help="extra prune+KD+INT8 cells with this budget")
    ap.add_argument("--long-ratios", default="0.8,0.9,0.8:0",
                    help="long cells, [MODEL=]RATIO[:K][@EPOCHS][/ROUND][+PARAMS]: that teacher only, K blocks "
                         "dropped instead of the depth plan's, EPOCHS instead of --long-epochs, round-to ROUND "
                         "instead of --round-to, and PARAMS of the parameters removed too")
    ap.add_argument("--long-models", default="", help="teachers that get the long cells (default: all of --models)")
    ap.add_argument("--drop-blocks", default=DEFAULT_DEPTH, help="ratio:blocks plan of depth pruning")
    ap.add_argument("--round-to", type=int, default=2, help="coarser rounding overshoots the MACs target at 80-90%%")
    ap.add_argument("--latency-models", default="resnet18,mobilenet_v2")
    ap.add_argument("--latency-ratios", default="0.5,0.8")
    ap.add_argument("--latency-drop-blocks", default="0,2,4", help="depth variants (blocks dropped) of the latency track")
    ap.add_argument("--latency-params", default="", help="latency track: extra 80%% cells that also remove this "
                    "fraction of params (--target-params), e.g. 0.8, with each --latency-drop-blocks")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=1000, help="timed runs per file (accuracy track)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--max-test", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    ap.add_argument("--fresh", action="store_true", help="recompute every cell")
    ap.add_argument("--remeasure", action="store_true", help="re-measure latency only (cells stay cached)")
    ap.add_argument("--cells-only", action="store_true", help="compute and cache the cells, nothing else: no "
                    "latency sitting, paper.json and RESULTS.md untouched (for training while the machine is busy)")
    ap.add_argument("--report-only", action="store_true", help="re-render RESULTS.md and plots from paper.json")
    args = ap.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",") if r]
    args.long_ratios = [_long_cell(v) for v in args.long_ratios.split(",") if v]
    args.latency_ratios = [float(r) for r in args.latency_ratios.split(",") if r]
    args.latency_drop_blocks = [int(k) for k in args.latency_drop_blocks.split(",") if k]
    args.latency_params = [float(v) for v in args.latency_params.split(",") if v]
    args.methods = args.methods.split(",")
    args.long_models = [m for m in args.long_models.split(",") if m]

    from edgecompress.files import atomic_write_text

    out = RESULTS / "paper.json"
    if args.report_only:
        rows = json.loads(out.read_text())
    else:
        rows = []
        tracks = args.tracks.split(",")
        if "accuracy" in tracks:
            for m in args.models.split(","):
                if not (WEIGHTS_DIR / f"{m}.pt").exists():
                    print(f"skipping {m}: no teacher models/{m}.pt (train it with tools/train_teacher.py {m})")
                    continue
                rows += accuracy_track(m, args)
        if "latency" in tracks:
            saved_runs = args.runs
            args.runs = min(args.runs, 300)  # 224 px files take milliseconds per run
            for m in args.latency_models.split(","):
                rows += latency_track(m, args)
            args.runs = saved_runs
        if args.cells_only:
            print("cells computed and cached; paper.json and RESULTS.md left as they were")
            return
        old = json.loads(out.read_text()) if out.exists() else []
        done = {r["model"] for r in rows}
        rows = [r for r in old if r["model"] not in done] + rows  # other models' rows stay
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
    from paper_report import render

    meta_path = RESULTS / "paper-run.json"  # the command behind paper.json, kept for --report-only
    if args.report_only and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        meta = {"machine": f"{platform.processor() or platform.machine()}, onnxruntime 1 thread, batch 1",
                "command": "python benchmarks/reproduce_paper.py " + " ".join(__import__("sys").argv[1:])}
        if not args.report_only:
            atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    render(rows, ROOT / "benchmarks" / "RESULTS.md", RESULTS, meta, notes=ROOT / "benchmarks" / "paper_notes.md")
    print(f"wrote {out.relative_to(ROOT)}, benchmarks/RESULTS.md and the Pareto plots")


if __name__ == "__main__":
    main()
