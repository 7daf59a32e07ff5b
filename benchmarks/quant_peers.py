"""INT8 quantizers side by side, per model, all run by onnxruntime on this CPU:

  fp32         the FP32 original (torch.onnx dynamo export)
  ort_default  onnxruntime quantize_static with ITS defaults (QDQ, per-tensor, MinMax, int8
               activations and weights) after quant_pre_process, same calibration samples
  ec_ptq       edgecompress PTQ (quantize_ptq, QuantConfig() defaults)
  ec_acc       edgecompress accuracy-aware PTQ (max_drop points on the validation split)   [labels only]
  inc          Intel Neural Compressor 3.x PT2E static INT8 exported to ONNX (quantize_inc)
  inc_tuned    INC 3.x autotune with the same max_drop on the validation split            [labels only]

Models: resnet18 and mobilenet_v2 at 224x224 with random weights (latency, size, kernels;
random calibration data) and the shipped Fashion-MNIST resnet20 teacher (edgecompress/models/weights/resnet20.pt),
which adds top-1 on the 10k test split: calibration on 256 training images, accuracy-aware
variants validated on the validation part of the training split (as the pipeline splits it),
never on the test split.

Latency: edgecompress.runtime.measure_latency, 1 thread, batch 1. Because the machine is shared,
the variants of a model are measured interleaved: ``--rounds`` rounds, each measuring every
variant with runs/rounds timed runs; a variant's p50 is the median of its per-round p50s.
Variants whose files are byte-identical (e.g. accuracy-aware PTQ that kept nothing in FP32)
are measured once and share the numbers.
Quantized files and measured cells are cached under benchmarks/cache/, so a killed run resumes.

    python benchmarks/quant_peers.py                       # all three models, 100 runs
    python benchmarks/quant_peers.py --models resnet20 --runs 50
    python benchmarks/quant_peers.py --quick               # 20 runs, 2 rounds, 2000 test / 1000 val samples
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import CACHE, RESULTS, WEIGHTS_DIR, cached, table

LABELS = {
    "fp32": "FP32 original",
    "ort_default": "onnxruntime quantize_static defaults",
    "ec_ptq": "edgecompress PTQ",
    "ec_acc": "edgecompress accuracy-aware PTQ",
    "inc": "INC 3.x PT2E INT8 -> ONNX",
    "inc_tuned": "INC 3.x autotune -> ONNX",
}
IMAGENET_LIKE = ("resnet18", "mobilenet_v2")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for d in ("torch", "onnx", "onnxruntime", "neural_compressor_pt", "torchao", "onnxscript"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "absent"
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


class Setup:
    """One model: the torch module, its example input, calibration / validation / test data."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        import numpy as np
        import torch

        from edgecompress.models.zoo import create_model

        self.name = name
        rng = np.random.default_rng(0)
        if name in IMAGENET_LIKE:
            torch.manual_seed(0)
            self.model = create_model(name, num_classes=1000, in_chans=3).eval()
            self.x = torch.zeros(1, 3, args.size, args.size)
            self.calib = rng.random((args.calib_random, 3, args.size, args.size), dtype=np.float32)
            self.val = self.test = None
            self.key = {"model": name, "weights": "random (torch.manual_seed(0))", "input": [1, 3, args.size, args.size],
                        "calib": f"{args.calib_random} uniform random samples"}  # fmt: skip
        elif name == "resnet20":
            from edgecompress.config import ModelConfig
            from edgecompress.data import load_splits
            from edgecompress.files import sha256_file
            from edgecompress.models import load_model

            weights = WEIGHTS_DIR / "resnet20.pt"
            if not weights.exists():
                raise SystemExit(f"{weights} is missing: the Fashion-MNIST teacher is needed for resnet20")
            lm = load_model(ModelConfig(name="resnet20", weights=str(weights)))
            self.model = lm.model.eval()
            self.x = torch.zeros(*lm.input_shape)
            splits = load_splits(None, None, input_shape=tuple(lm.input_shape[1:]))  # the pipeline's split, seed 0
            idx = np.sort(rng.choice(len(splits.train), args.calib_fmnist, replace=False))
            self.calib = splits.train.x[idx]
            nv, nt = (1000, 2000) if args.quick else (len(splits.val), len(splits.eval))
            self.val = (splits.val.x[:nv], splits.val.y[:nv])
            self.test = (splits.eval.x[:nt], splits.eval.y[:nt])
            self.key = {"model": name, "weights": f"weights/resnet20.pt sha256 {sha256_file(weights)[:16]}",
                        "input": list(lm.input_shape), "calib": f"{len(idx)} training images (seed 0)",
                        "val": f"{nv} of the validation split", "test": f"{nt} of the 10k test split"}  # fmt: skip
        else:
            raise SystemExit(f"unknown model {name!r}: choose from resnet18, mobilenet_v2, resnet20")
        self.has_labels = self.val is not None


def _top1(path: Path, data) -> float:
    from edgecompress.runtime import make_session, run_batched

    x, y = data
    return float((run_batched(make_session(path, threads=1), x).argmax(1) == y).mean())


def _ort_defaults(fp32: Path, out: Path, calib) -> dict[str, Any]:
    """onnxruntime's own defaults: quant_pre_process(), then quantize_static() with no options."""
    import contextlib
    import io
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecompress.files import atomic_write
    from edgecompress.quantize import ArrayReader

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    notes = []
    with tempfile.TemporaryDirectory(prefix="qpeers-") as d:
        pre = Path(d) / "pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                quant_pre_process(str(fp32), str(pre))
            except Exception as e:  # symbolic shape inference can fail on dynamo exports
                notes.append(f"quant_pre_process defaults failed ({_one_line(e)[:120]}); used skip_symbolic_shape=True")
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

        def write(tmp: Path) -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(tmp), ArrayReader(name, calib))

        atomic_write(out, write)
    return {"settings": "QDQ, per-tensor, MinMax, int8 activations + weights (quantize_static defaults)",
            "notes": "; ".join(notes) or None}  # fmt: skip


def _torch_top1(data):
    import numpy as np
    import torch

    x, y = data
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def evaluate(m) -> float:
        hits = 0
        with torch.no_grad():
            for i in range(0, len(xt), 500):
                hits += int((m(xt[i : i + 500]).argmax(1) == yt[i : i + 500]).sum())
        return hits / len(xt)

    return evaluate


def build_variant(s: Setup, v: str, fp32: Path, out: Path, args) -> dict[str, Any]:
    """Writes ``out`` for variant ``v``; returns what the quantizer reported."""
    from edgecompress.config import ExportOnnxConfig, QuantConfig

    if v == "fp32":
        from edgecompress.export import export_onnx

        export_onnx(s.model, s.x, out, ExportOnnxConfig())
        return {"settings": "torch.onnx dynamo, opset 18"}
    if v == "ort_default":
        return _ort_defaults(fp32, out, s.calib)
    if v == "ec_ptq":
        from edgecompress.quantize import quantize_ptq

        r = quantize_ptq(fp32, out, s.calib, QuantConfig())
        st = r.settings
        return {"settings": f"QDQ, per-channel={st['per_channel']}, {st['method']}, act {st['activation_type']}, "
                            f"w {st['weight_type']}, reduce_range={st['reduce_range']} (target {st['target']})"}
    if v == "ec_acc":
        from edgecompress.quantize import accuracy_aware_ptq

        _, rec = accuracy_aware_ptq(fp32, out, s.calib, *s.val, QuantConfig(), args.max_drop)
        return {"settings": f"max_drop {args.max_drop} pts on {len(s.val[0])} validation images",
                "val_drop": rec["steps"][-1]["val_drop"], "met": rec["met"], "fp32_nodes": len(rec["fp32_nodes"]),
                "notes": f"{len(rec['fp32_nodes'])} compute nodes kept FP32; validation drop "
                         f"{rec['steps'][-1]['val_drop']:.2f} pts"}  # fmt: skip
    if v in ("inc", "inc_tuned"):
        from edgecompress.quantize.inc import quantize_inc

        kw = {"autotune_eval": _torch_top1(s.val), "max_drop": args.max_drop} if v == "inc_tuned" else {}
        r = quantize_inc(s.model, s.x, s.calib, out, **kw)
        c = r["config"]
        res = {"settings": f"W8 {c['w_granularity']} sym, A8 {c['act_dtype']} {'sym' if c['act_sym'] else 'asym'} "
                           f"{c['act_algo']}, {r['calib_batches']} calib batch(es)",
               "raw_export_bytes": r["raw_export_bytes"], "fp32_after_opt": r["fp32_ops_after_optimisation"]}  # fmt: skip
        notes = [f"raw export {r['raw_export_bytes'] / 1e6:.2f} MB (FP32 weights + Q/Clip/DQ), "
                 f"{r['weight_nodes_folded']} weight Q/Clip nodes folded to int8"]  # fmt: skip
        fo = r["fp32_ops_after_optimisation"]
        if fo:
            notes.append("FP32 after ORT optimisation: " + ", ".join(f"{k} x{n}" for k, n in fo.items()))
        if r["weights_dequantized_per_inference"]:
            notes.append(f"{r['weights_dequantized_per_inference']} weight DequantizeLinear run per inference")
        if "autotune" in r:
            t = r["autotune"]
            res |= {"val_drop": t["val_drop"], "met": t["met"], "trials": len(t["trials"])}
            notes.append(f"{len(t['trials'])} trial(s), chose act {'sym' if t['chosen']['act_sym'] else 'asym'} "
                         f"{t['chosen']['act_algo']}; validation drop {t['val_drop']:.2f} pts (PyTorch fake-quant)")
        return res | {"notes": "; ".join(notes)}
    raise ValueError(v)


def latency_interleaved(files: dict[str, Path], shas: dict[str, str], runs: int, rounds: int) -> dict[str, Any]:
    """Round-robin over the distinct files (a variant whose file is byte-identical to an earlier
    one shares its measurement)."""
    from edgecompress.runtime import measure_latency

    per = max(1, runs // rounds)
    first = {}
    for v in files:
        first.setdefault(shas[v], v)
    p50s: dict[str, list[float]] = {v: [] for v in first.values()}
    for _ in range(rounds):
        for v in p50s:
            p50s[v].append(measure_latency(files[v], threads=1, batch=1, warmup=10, runs=per).p50_ms)
    out = {}
    for v in files:
        m = first[shas[v]]
        out[v] = {"p50_ms": statistics.median(p50s[m]), "round_p50_ms": p50s[m], "timed_runs": per * rounds,
                  "same_file_as": None if m == v else m}  # fmt: skip
    return out


def run_model(name: str, wanted: list[str], versions: dict[str, str], args) -> list[dict[str, Any]]:
    from edgecompress.files import sha256_file
    from edgecompress.runtime import file_bytes, kernel_report

    rows: list[dict[str, Any]] = []
    s = Setup(name, args)
    key0 = s.key | {"versions": versions, "max_drop": args.max_drop}
    fdir = CACHE / "quant_peers" / f"{name}-{hashlib.sha256(json.dumps(key0, sort_keys=True).encode()).hexdigest()[:12]}"
    fdir.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for v in wanted:
        if v in ("ec_acc", "inc_tuned") and not s.has_labels:
            continue
        out = fdir / f"{v}.onnx"

        def compute(v=v, out=out) -> dict[str, Any]:
            t0 = time.time()
            rec = build_variant(s, v, files.get("fp32", fdir / "fp32.onnx"), out, args)
            kr = kernel_report(out)
            row = rec | {"seconds": round(time.time() - t0, 1), "bytes": file_bytes(out),
                         "int8_op_fraction": kr.int8_op_fraction, "float_compute": kr.float_ops,
                         "int8_compute": kr.int8_ops, "sha256": sha256_file(out)}  # fmt: skip
            if s.test is not None:
                row["top1"] = _top1(out, s.test)
            return row

        key = key0 | {"variant": v}
        if v != "fp32" and "fp32" not in cells:
            break  # nothing to quantize without the FP32 export (its error is in the rows)
        if v != "fp32":  # a re-exported FP32 file invalidates what was made from it
            key["fp32_sha256"] = cells["fp32"]["sha256"]
        try:
            cell = cached("quantpeers", key, compute, fresh=args.fresh)
            if not out.exists() or sha256_file(out) != cell["sha256"]:  # cache kept, file lost: redo
                cell = cached("quantpeers", key, compute, fresh=True)
        except Exception as e:  # one failing quantizer must not hide the others
            print(f"  {name} {v}: FAILED {_one_line(e)}", flush=True)
            rows.append({"model": name, "variant": v, "label": LABELS[v], "error": _one_line(e)})
            continue
        cells[v], files[v] = cell, out
        print(f"  {name} {v}: {cell['bytes'] / 1e6:.2f} MB, int8_op_fraction {cell['int8_op_fraction']:.2f}"
              + (f", top-1 {cell['top1']:.4f}" if "top1" in cell else "") + f" ({cell['seconds']} s)", flush=True)
    if "fp32" not in cells:
        return rows
    shas = {v: c["sha256"] for v, c in cells.items()}
    lat_key = key0 | {"runs": args.runs, "rounds": args.rounds, "files": shas}
    lat = cached("quantpeers-lat", lat_key, lambda: {"latency": latency_interleaved(files, shas, args.runs, args.rounds)},
                 fresh=args.fresh)["latency"]  # fmt: skip
    base = cells["fp32"] | lat["fp32"]
    for v, c in cells.items():
        r = {"model": name, "variant": v, "label": LABELS[v]} | c | lat[v]
        r |= {"speedup": base["p50_ms"] / r["p50_ms"], "size_ratio": r["bytes"] / base["bytes"],
              "mb": r["bytes"] / 1e6}  # fmt: skip
        if "top1" in r:
            r["top1_drop"] = 100 * (base["top1"] - r["top1"])
        if r["same_file_as"]:
            same = f"byte-identical to the {LABELS[r['same_file_as']]} file (latency shared)"
            r["notes"] = f"{same}; {r['notes']}" if r.get("notes") else same
        rows.append(r)
        print(f"{name:12s} {LABELS[v]:38s} p50 {r['p50_ms']:8.2f} ms  x{r['speedup']:.2f}  "
              f"size x{r['size_ratio']:.2f}  int8 {r['int8_op_fraction']:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2,resnet20")
    ap.add_argument("--variants", default=",".join(LABELS), help="subset of " + ",".join(LABELS))
    ap.add_argument("--runs", type=int, default=100, help="timed runs per variant (split over --rounds)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib-random", type=int, default=16, help="random calibration samples (224x224 models)")
    ap.add_argument("--calib-fmnist", type=int, default=256, help="calibration images from the training split")
    ap.add_argument("--max-drop", type=float, default=0.5, help="points of top-1 for the accuracy-aware variants")
    ap.add_argument("--quick", action="store_true", help="20 runs in 2 rounds; 2000 test / 1000 val images")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cells")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.rounds = 20, 2
    os.environ.setdefault("HABANA_LOGS", str(CACHE / "inc-logs"))

    from edgecompress.runtime import cpu_info

    wanted = [v for v in args.variants.split(",") if v]
    unknown = set(wanted) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(LABELS)}")
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")
    versions = _versions()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += run_model(name, wanted, versions, args)

    ci = cpu_info()
    meta = {"date": datetime.date.today().isoformat(), "cpu": ci["model"], "cores": ci["cores"], "threads": 1,
            "batch": 1, "runs": args.runs, "rounds": args.rounds, "versions": versions,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant_peers.json").write_text(json.dumps(meta | {"rows": rows}, indent=2) + "\n")
    cols = [("model", "model", ""), ("variant", "label", ""), ("p50 ms", "p50_ms", ".2f"),
            ("speed-up vs FP32", "speedup", ".2f"), ("size MB", "mb", ".2f"),
            ("size ratio vs FP32", "size_ratio", ".2f"), ("int8_op_fraction", "int8_op_fraction", ".2f"),
            ("top-1 (test)", "top1", ".4f"), ("top-1 drop vs FP32, pts", "top1_drop", ".2f"),
            ("settings", "settings", ""), ("notes", "notes", "")]  # fmt: skip
    if any("error" in r for r in rows):
        cols.append(("error", "error", ""))
    md = table(rows, cols)
    head = (f"{meta['cpu']} ({meta['cores']} cores, shared), onnxruntime {versions['onnxruntime']}, 1 thread, "
            f"batch 1, {args.runs} timed runs per variant in {args.rounds} interleaved rounds (p50 = median of "
            f"round p50s), {meta['date']}")  # fmt: skip
    (RESULTS / "quant_peers.md").write_text(head + "\n\n" + md + "\n")
    print(head)
    print(md)


if __name__ == "__main__":
    main()
