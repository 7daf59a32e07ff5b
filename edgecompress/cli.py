"""Command line: builds configs from flags (over an optional TOML recipe) and calls the
pipeline. No logic of its own. Exit codes: 0 ok, 1 a verification gate failed, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from edgecompress.errors import BadInput, ConfigError, EdgeCompressError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _shape(s: str) -> list[int]:
    try:
        dims = [int(v) for v in s.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not N,C,H,W (e.g. 1,1,28,28)") from None
    return dims


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None


# flag dest -> (recipe section, key)
_EXPORT_FLAGS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"), "weights": ("model", "weights"), "input_shape": ("model", "input_shape"),
    "trust_checkpoint": ("model", "trust_checkpoint"),
    "data": ("data", "data"), "eval_data": ("data", "eval_data"), "max_train": ("data", "max_train"),
    "max_eval": ("data", "max_eval"),
    "prune_ratio": ("prune", "ratio"), "importance": ("prune", "importance"),
    "allocation": ("prune", "allocation"), "round_to": ("prune", "round_to"), "ignore": ("prune", "ignore"),
    "sensitivity": ("prune", "sensitivity"),
    "target_params": ("prune", "target_params"), "target_latency_ms": ("prune", "target_latency_ms"),
    "prune_steps": ("prune", "steps"), "drop_blocks": ("prune", "drop_blocks"),
    "distill_epochs": ("distill", "epochs"), "lr": ("distill", "lr"), "alpha": ("distill", "alpha"),
    "temperature": ("distill", "temperature"), "qat_epochs": ("qat", "epochs"),
    "kd_patience": ("distill", "patience"), "val_fraction": ("data", "val_fraction"),
    "kd_features": ("distill", "features"), "kd_feature_weight": ("distill", "feature_weight"),
    "kd_cache_teacher": ("distill", "cache_teacher"), "kd_augment_shift": ("distill", "augment_shift"),
    "kd_augment_flip": ("distill", "augment_flip"), "kd_mixup": ("distill", "mixup"),
    "quant": ("quant", "mode"), "quant_backend": ("quant", "backend"), "calib_samples": ("quant", "calib_samples"), "calib_method": ("quant", "method"),
    "target": ("quant", "target"), "latency_aware_int8": ("quant", "latency_aware"),
    "latency_aware_weights": ("quant", "latency_aware_weights"),
    "min_agreement": ("verify", "min_int8_agreement"), "max_accuracy_drop": ("verify", "max_accuracy_drop"),
    "parity_tol": ("verify", "parity_tol"),
    "threads": ("bench", "threads"), "runs": ("bench", "runs"),
    "exporter": ("onnx", "exporter"), "compact_names": ("onnx", "compact_names"),
    "out": ("", "out"), "overwrite": ("", "overwrite"), "seed": ("", "seed"), "stages": ("", "stages"),
    "resume": ("", "resume"), "nproc": ("", "nproc"),
}  # fmt: skip


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="prune, distill, quantize, export, verify and benchmark a model",
                       description="Compress MODEL into an INT8 ONNX file and prove it: parity, top-1 of every "
                       "artifact under onnxruntime, latency and size. With no MODEL, compresses the shipped "
                       "resnet20 teacher on Fashion-MNIST. MODEL may be a zoo name (edgecompress models), or "
                       "path/to/file.py:factory / package.module:factory, which runs that code.")
    a = p.add_argument
    a("model", nargs="?", help="zoo name, path/to/file.py:factory or package.module:factory")
    a("--recipe", help="TOML file with [model] [data] [prune] [distill] [quant] [verify] [bench] tables; flags override it")
    a("--weights", help="state_dict .pt for MODEL (loaded with weights_only=True)")
    a("--trust-checkpoint", action="store_true", default=None,
      help="allow full unpickling of --weights (can run code from the file: only for files you trust)")
    a("--input-shape", type=_shape, help="N,C,H,W (default: from the data or the zoo entry)")
    a("--data", help="fashion-mnist (default), random, a directory of IDX files, or FILE.npz with x and y")
    a("--eval-data", help="evaluation set: FILE.npz or IDX directory (default: official test split / held-out part)")
    a("--max-train", type=int, help="use at most N training samples (quick runs)")
    a("--max-eval", type=int, help="evaluate on at most N samples (quick runs)")
    a("--prune-ratio", type=float, help="fraction of MACs to remove, in [0, 1) (default 0.5)")
    a("--importance", help="l2 (default), l1, bn, taylor, lamp, fpgm, random")
    a("--allocation", help="uniform (default), global, or sensitivity (per-layer ratios from a sensitivity "
      "table: the least sensitive layers are pruned most)")
    a("--sensitivity", help="with --allocation sensitivity: sensitivity.json from `edgecompress sensitivity` "
      "(default: measured on the validation split and saved in the run)")
    a("--round-to", type=int, help="keep channel counts multiples of N (default 8; 1 = off)")
    a("--ignore", action="append", help="module name to leave unpruned (repeatable)")
    a("--target-params", type=float, help="fraction of parameters to remove; alone it replaces the MACs "
      "target, with --prune-ratio pruning goes on until both are met (file size follows parameters)")
    a("--target-latency-ms", type=float, help="instead of --prune-ratio: prune until the p50 latency measured "
      "here with onnxruntime (1 thread, batch 1; INT8 unless --quant none, the --latency-aware-int8 file with that flag) "
      "is at most this")
    a("--prune-steps", type=int, help="iterative schedule: N rounds of prune -> distill (default 1)")
    a("--drop-blocks", type=int, help="depth pruning: remove the N residual blocks whose removal changes the "
      "output least, before pruning channels; they count towards --prune-ratio (default 0)")
    a("--distill-epochs", type=float, help="epochs of distillation after pruning (default 1; 0 = none)")
    a("--lr", type=float, help="distillation learning rate (default 0.01)")
    a("--alpha", type=float, help="weight of the KD term vs cross-entropy (default 0.9)")
    a("--temperature", type=float, help="KD temperature (default 4)")
    a("--kd-patience", type=int, help="early stopping: validate top-1 after every KD epoch on the validation part "
      "of the training data, keep the best weights, stop after N rounds without improvement (default 0 = off)")
    a("--kd-features", type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
      help="feature KD: NAME[,NAME] of modules in both teacher and student (e.g. layer1,layer2,layer3); MSE "
      "through 1x1 adapters where pruning changed the channel count")
    a("--kd-feature-weight", type=float, help="weight of the feature MSE added to the KD loss (default 1)")
    a("--kd-cache-teacher", action="store_true", default=None, help="compute the teacher's logits once per "
      "training sample (needs --kd-augment-shift 0 --no-kd-augment-flip)")
    a("--kd-augment-shift", type=int, help="random shift in pixels of the KD training images (default 2; 0 = off)")
    a("--kd-augment-flip", action=argparse.BooleanOptionalAction, default=None,
      help="random horizontal flip of the KD training images (default on)")
    a("--kd-mixup", type=float, help="mixup of the KD training images, Beta(A, A): teacher and student see the "
      "same blend (default 0 = off; 1 = a uniform blend weight)")
    a("--val-fraction", type=float, help="fraction of the training data held out for validation: early stopping, "
      "--max-accuracy-drop (default 0.1; never the eval set; 0 = distil on all of it, without those)")
    a("--quant", help="ptq (default, static, calibrated), qat (quantization-aware training with KD, torchao pt2e), "
      "dynamic (int8 weights, for MatMul/Gemm-heavy models) or none")
    a("--qat-epochs", type=float, help="epochs of quantization-aware training with --quant qat (default 1)")
    a("--quant-backend", help="ort (default: onnxruntime static QDQ) or inc (Intel Neural Compressor 3.x, "
      "PyTorch pt2e INT8 exported to ONNX; slower here, offered for comparison)")
    a("--calib-samples", type=int, help="training samples for INT8 calibration (default 512)")
    a("--calib-method", help="minmax (default), entropy, percentile")
    a("--target", help="CPU the INT8 file is for: auto (default: this machine), x86-vnni, x86-avx2 (7-bit "
      "weights against U8S8 saturation) or arm64 (S8S8)")
    a("--latency-aware-int8", action="store_true", default=None, help="leave in FP32 the layers whose INT8 "
      "kernel is slower than FP32 on this CPU (onnxruntime profiler), kept only if the model gets faster end to "
      "end; measured here, so use it on the machine (class) the file is for")
    a("--latency-aware-weights", help="how --latency-aware-int8's FP32 layers store their weights: int8 (default: "
      "per-channel int8 + Cast/Mul that onnxruntime folds to float at load, so FP32 speed at INT8 size) or float")
    a("--min-agreement", type=float, help="gate: INT8 vs FP32 top-1 agreement on the eval set >= F (default 0.99; 0 = report only)")
    a("--max-accuracy-drop", type=float, help="gate: INT8 top-1 at most F points below the original")
    a("--parity-tol", type=float, help="gate: FP32 ONNX vs PyTorch max-abs <= F * max(1,|logit|) (default 1e-4)")
    a("--threads", type=int, help="onnxruntime intra-op threads for latency (default 1)")
    a("--runs", type=int, help="timed runs per artifact (default 200)")
    a("--exporter", help="dynamo (default) or torchscript")
    a("--compact-names", action="store_true", default=None, help="rename the ONNX files' internal tensors and "
      "nodes to short ids (inputs/outputs keep theirs): smaller files for tiny models, less readable graphs")
    a("--out", help="output directory (default: a new one under ./edgecompress-out/)")
    a("--overwrite", action="store_true", default=None, help="replace a previous run in --out")
    a("--nproc", type=int, help="distil on N processes with torch.distributed DDP (gloo, DistributedSampler "
      "shards, global batch unchanged); KD only, other stages run in one process (default 1)")
    a("--resume", action="store_true", default=None, help="continue KD of an interrupted run from its last "
      "checkpoint (kept in .OUT.resume/ beside --out); same command and --out as the interrupted run")
    a("--seed", type=int)
    a("--stages", type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
      help="stage order: prune,kd,ptq (default; prune,kd,qat with --quant qat) | prune,qat | ptq | prune | "
      "prune,kd | qat")
    a("--dry-run", action="store_true", help="print the resolved configuration and stages, then exit")


def _build_run_config(args: argparse.Namespace):
    from edgecompress.config import RunConfig, load_recipe, merge

    recipe: dict[str, Any] = load_recipe(args.recipe) if args.recipe else {}
    flags: dict[str, Any] = {}
    for dest, (section, key) in _EXPORT_FLAGS.items():
        v = getattr(args, dest, None)
        if v is None:
            continue
        if section:
            flags.setdefault(section, {})[key] = v
        else:
            flags[key] = v
    return RunConfig.from_dict(merge(recipe, flags)).validate()


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _build_run_config(args)
    if args.dry_run:
        plan = cfg.plan()
        stages = ["export original", *(s for s in plan if s in ("prune", "kd")),
                  *(["export pruned"] if "prune" in plan else []), *(s for s in plan if s not in ("prune", "kd")),
                  "verify", "bench", "manifest"]
        print(json.dumps({"stages": stages, "config": cfg.to_dict()}, indent=2))
        return 0
    from pathlib import Path

    from edgecompress.data import resolve_data

    resolve_data(cfg.data.data)  # a missing data set fails in 0.5 s, before torch is imported
    if cfg.data.eval_data is not None and not Path(cfg.data.eval_data).exists():
        raise BadInput(f"--eval-data {cfg.data.eval_data}: no such file or directory; pass an .npz file or IDX directory")
    from edgecompress.pipeline import run

    res = run(cfg)
    arts = res.manifest["artifacts"]
    base = arts["original"]
    for name, a in arts.items():
        top1 = "" if a.get("top1") is None else f"top-1 {100 * a['top1']:.2f}%  "
        print(f"{name:9s} {a['path']:18s} {a['bytes']:>10,d} B  {top1}p50 {a['latency_ms_p50']:.3f} ms  "
              f"({base['latency_ms_p50'] / a['latency_ms_p50']:.2f}x faster, {base['bytes'] / a['bytes']:.1f}x smaller)")
    if res.exit_code:
        print(f"error: verification gate failed: {'; '.join(res.failures)} (see {res.out_dir}/report.md)",
              file=sys.stderr)
    return res.exit_code


def cmd_models(args: argparse.Namespace) -> int:
    from edgecompress.models import shipped_checkpoint
    from edgecompress.zoo import list_models

    for e in list_models():
        ck = shipped_checkpoint(e.name)
        trained = f"trained: top-1 {ck[1]['test_top1']:.4f}" if ck else "random init"
        print(f"{e.name:20s} input {','.join(map(str, e.default_input)):9s} {trained:22s} {e.description}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edgecompress.benchcli import run_bench

    return run_bench(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from edgecompress.predict import run_predict

    return run_predict(args)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecompress.io import atomic_write_text
    from edgecompress.manifest import load_manifest, render_report
    from edgecompress.plots import have_matplotlib, plot_run

    d = Path(args.out_dir)
    m = load_manifest(d)
    md = render_report(m)
    if args.no_plots or not have_matplotlib():
        if not args.no_plots:
            print("note: matplotlib is not installed; report.png skipped (pip install matplotlib)", file=sys.stderr)
    else:
        plot_run(m, d / "report.png")
        md += "\n![accuracy vs latency, size and channels kept](report.png)\n"
        print(f"wrote {d / 'report.png'}")
    atomic_write_text(d / "report.md", md)
    print(f"wrote {d / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgecompress", description="Prune, distill and quantize a PyTorch CNN into a "
                "smaller, faster INT8 ONNX model, and prove it.")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    _add_export(sub)
    sub.add_parser("models", help="list the model zoo")
    b = sub.add_parser("bench", help="latency and size of any ONNX file with onnxruntime",
                       description="Latency (p50/p90) and size of ONNX files with onnxruntime. With several "
                       "files, they are timed side by side in shuffled rounds and compared as ratios to the "
                       "first (e.g. original.onnx int8.onnx).")
    b.add_argument("onnx", nargs="+", help="model.onnx [other.onnx ...]; with several, ratios to the first")
    b.add_argument("--threads", type=_ints, default=[1], help="comma-separated, e.g. 1,2")
    b.add_argument("--batch", type=_ints, default=[1], help="comma-separated, e.g. 1,8")
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--runs", type=int, default=200, help="timed runs per file and threads x batch (default 200)")
    b.add_argument("--rounds", type=int, default=5, help="with several files: rounds of --runs/ROUNDS runs of every "
                   "file, in a shuffled order (default 5)")
    b.add_argument("--input-shape", type=_shape, help="N,C,H,W when the model's input has symbolic dims")
    b.add_argument("--profile", action="store_true", help="also show where the time goes per operator type "
                   "(onnxruntime's profiler; depthwise convs apart), for every threads x batch")
    b.add_argument("--json", action="store_true", help="print only JSON on stdout")
    pr = sub.add_parser("predict", help="top-k classes of an ONNX classifier for an .npz or image files")
    pr.add_argument("onnx", help="model.onnx")
    pr.add_argument("data", nargs="+", help="FILE.npz with array x (N,H,W or N,C,H,W), or image files "
                    "(PGM/PPM; PNG/JPEG/... with Pillow), resized to the model input")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per sample (default 3)")
    pr.add_argument("--json", action="store_true", help="print only JSON on stdout")
    pr.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    pr.add_argument("--batch", type=int, default=32, help="samples per onnxruntime call (default 32)")
    pr.add_argument("--input-shape", type=_shape, help="N,C,H,W when the model's input has symbolic dims")
    s = sub.add_parser("sensitivity", help="per-layer pruning sensitivity: table + PNG plot")
    s.add_argument("model", nargs="?", help="zoo name or file.py:factory (default: the shipped resnet20)")
    s.add_argument("--weights")
    s.add_argument("--data", help="fashion-mnist (default), IDX directory or FILE.npz (its validation split is used)")
    s.add_argument("--ratios", type=lambda v: [float(x) for x in v.split(",")],
                   help="channel fractions to remove per group (default 0.25,0.5,0.75 and the 90%% that export's "
                        "pruner lets a layer lose, so --allocation sensitivity can use its whole range)")
    s.add_argument("--importance", default="l2")
    s.add_argument("--max-eval", type=int, default=2000, help="validation samples to score (default 2000)")
    s.add_argument("--out", default="sensitivity", help="directory for sensitivity.json/.md/.png")
    r = sub.add_parser("report", help="regenerate report.md and report.png from a run's manifest.json")
    r.add_argument("out_dir")
    r.add_argument("--no-plots", action="store_true", help="write report.md only")
    return p


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgecompress.config import ModelConfig
    from edgecompress.data import load_splits
    from edgecompress.models import load_model
    from edgecompress.sensitivity import SensitivityConfig, sensitivity, write_outputs

    if args.ratios and any(not 0 < r < 1 for r in args.ratios):
        raise ConfigError(f"--ratios {args.ratios}: each must be in (0, 1)")
    splits = load_splits(args.data, None, input_shape=None, seed=0)
    lm = load_model(ModelConfig(name=args.model, weights=args.weights), data_shape=tuple(splits.val.x.shape[1:]))
    import numpy as np
    import torch

    val = splits.val.take(np.arange(min(args.max_eval, len(splits.val))), splits.val.source)

    ratios = tuple(args.ratios) if args.ratios else SensitivityConfig().ratios  # default: to export's layer cap
    cfg = SensitivityConfig(ratios=ratios, importance=args.importance)
    res = sensitivity(lm.model, torch.zeros(lm.input_shape), val, cfg,
                      progress=lambda m: print(f"edgecompress: {m}", file=sys.stderr, flush=True))
    for p in write_outputs(res, Path(args.out)):
        print(p)
    return 0


COMMANDS = {"sensitivity": cmd_sensitivity, "export": cmd_export, "models": cmd_models, "bench": cmd_bench, "predict": cmd_predict,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.cmd is None:
            parser.print_help()
            return 2
        return COMMANDS[args.cmd](args)
    except EdgeCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was delivered (partial output was removed)", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower --max-train or the batch size", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ... during the run
        print(f"error: {e.strerror or e} ({getattr(e, 'filename', '') or 'I/O'}); free space or choose "
              "another --out", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in edgecompress or a library: one line, traceback on request
        if os.environ.get("EDGECOMPRESS_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"error: internal error {type(e).__name__}: {first} (set EDGECOMPRESS_DEBUG=1 for the "
              "traceback and report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
