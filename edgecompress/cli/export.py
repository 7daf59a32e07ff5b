"""``edgecompress export [MODEL]``: flags -> RunConfig (over an optional TOML recipe) -> the pipeline.

Each flag names the config field it sets; its type, its on/off form, its choices and the default
shown in ``--help`` come from that field, so no second table of defaults exists."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.cli.common import floats, ints, names, shape
from edgecompress.config import PruneConfig, RunConfig, Stage, load_recipe, merge
from edgecompress.config.onnx_input import explicit_pytorch_only, is_onnx_model, refusal
from edgecompress.config.parse import enum_type
from edgecompress.config.stages import DEFAULT_CALIB_SAMPLES
from edgecompress.data.readers import resolve_data
from edgecompress.errors import BadInput, ConfigError
from edgecompress.pipeline import run as run_pipeline


@dataclass(frozen=True)
class Flag:
    flag: str  # e.g. --prune-ratio
    field: str  # "section.key" of RunConfig, or a top-level key
    help: str
    parse: Callable[[str], Any] | None = None  # instead of the field's type
    append: bool = False  # repeatable (--ignore A --ignore B)
    default: str | None = None  # what --help says when the field's default is None
    const: str | None = None  # the value of the flag given alone (``--flag`` = ``--flag CONST``)


DATA_FLAGS: tuple[Flag, ...] = (  # image folders: edgecompress.data.preprocess
    Flag("--image-size", "data.image_size", "H,W of the model input for image files", parse=ints,
         default="the model's input, else the first image's size"),
    Flag("--resize", "data.resize", "how image files reach H,W: stretch, crop (shorter side to size/crop-fraction, "
         "then the centre), letterbox (fit inside, zero padding)"),
    Flag("--crop-fraction", "data.crop_fraction", "with --resize crop: the centre crop's fraction of the resized "
         "shorter side (0.875 as for ImageNet)"),
    Flag("--channels", "data.channels", "channel order of the model input (gray images are repeated to RGB, RGB "
         "converted to gray by luma); auto = the model's channel count"),
    Flag("--mean", "data.mean", "per-channel mean subtracted from pixels in [0,1]", parse=floats, default="0"),
    Flag("--std", "data.std", "per-channel std dividing them", parse=floats, default="1"),
    Flag("--layout", "data.layout", "memory layout of the model input"),
    Flag("--bad-files", "data.bad_files", "an image that cannot be decoded: error (stop, naming it) or skip (decode "
         "every file once up front, leave the bad ones out, count them in the manifest)"),
    Flag("--workers", "data.workers", "DataLoader processes decoding images for training and evaluation"),
    Flag("--device", "device", "device of the PyTorch stages (importance, sensitivity, distillation): auto, cpu, "
         "cuda, cuda:N, mps; ONNX export and INT8 stay on the CPU"),
)  # fmt: skip

FLAGS: tuple[Flag, ...] = (
    Flag("--weights", "model.weights", "state_dict .pt for MODEL (loaded with weights_only=True)"),
    Flag("--trust-checkpoint", "model.trust_checkpoint",
         "allow full unpickling of --weights (can run code from the file: only for files you trust)"),
    Flag("--input-shape", "model.input_shape", "N,C,H,W", parse=shape, default="from the data or the zoo entry"),
    Flag("--output-kind", "model.output_kinds", "NAME=KIND: the kind of a model output (logits, sigmoid, softmax, "
         "dense, regression) instead of the one inferred from its values; decides its distillation loss and its "
         "fidelity figures (repeatable; KIND alone for a one-output model)", append=True),
    Flag("--data", "data.data", "fashion-mnist, random, a directory of IDX files, FILE.npz with x and y, or a "
         "folder of images (CLASS/IMAGE subfolders, or flat with labels.csv: file,label)", default="fashion-mnist"),
    Flag("--eval-data", "data.eval_data", "evaluation set: FILE.npz, IDX directory or image folder",
         default="official test split / held-out part"),
    *DATA_FLAGS,
    Flag("--max-train", "data.max_train", "use at most N training samples (quick runs)"),
    Flag("--max-eval", "data.max_eval", "evaluate on at most N samples (quick runs)"),
    Flag("--val-fraction", "data.val_fraction", "fraction of the training data held out for validation: early "
         "stopping, --max-accuracy-drop (never the eval set; 0 = distil on all of it, without those)"),
    Flag("--prune-ratio", "prune.ratio", "fraction of MACs to remove, in [0, 1)",
         default=f"{PruneConfig().macs_target:g} unless --target-params or "
         "--target-latency-ms is given"),
    Flag("--importance", "prune.importance", "channel importance"),
    Flag("--allocation", "prune.allocation", "uniform: one channel ratio per layer; global: ranked across layers; "
         "sensitivity: per-layer ratios from a sensitivity table (the least sensitive layers are pruned most)"),
    Flag("--sensitivity", "prune.sensitivity", "with --allocation sensitivity: sensitivity.json from "
         "`edgecompress sensitivity`", default="measured on the validation split and saved in the run"),
    Flag("--round-to", "prune.round_to", "keep channel counts multiples of N (1 = off)"),
    Flag("--ignore", "prune.ignore", "module name to leave unpruned (repeatable)", append=True),
    Flag("--target-params", "prune.target_params", "fraction of parameters to remove; alone it replaces the MACs "
         "target, with --prune-ratio pruning goes on until both are met (file size follows parameters)"),
    Flag("--target-latency-ms", "prune.target_latency_ms", "instead of --prune-ratio: prune until the p50 latency "
         "of the file the run ships (INT8 with the run's quantization settings; FP32 with --quant none), measured "
         "here with onnxruntime (1 thread, batch 1), is at most this"),
    Flag("--prune-steps", "prune.steps", "iterative schedule: N rounds of prune -> distill"),
    Flag("--drop-blocks", "prune.drop_blocks", "depth pruning: remove the N residual blocks whose removal changes "
         "the output least, before pruning channels; they count towards --prune-ratio"),
    Flag("--structure", "prune.structure", "fixed: --round-to and --drop-blocks as given; fastest: the channel "
         "multiple from a width table measured on the device (cached) and the number of dropped residual blocks "
         "whose INT8 file runs fastest, among 0-3, at the same budget; auto: fastest for models of >= 200M MACs "
         "left at the default --round-to and --drop-blocks, else fixed"),
    Flag("--prune-max-seconds", "prune.max_seconds", "bound on each pruning step (dependency graph + channel "
         "removal) in seconds: past it, an error naming the slow part (0 = no bound)"),
    Flag("--prune-max-memory", "prune.max_memory", "bound on the resident memory while pruning, as a fraction of "
         "the RAM: past it, an error naming the slow part (0 = no bound)"),
    Flag("--distill-epochs", "distill.epochs", "epochs of distillation after pruning (0 = none)"),
    Flag("--lr", "distill.lr", "distillation learning rate"),
    Flag("--alpha", "distill.alpha", "weight of the KD term vs cross-entropy"),
    Flag("--temperature", "distill.temperature", "KD temperature"),
    Flag("--kd-patience", "distill.patience", "early stopping: validate top-1 after every KD epoch on the "
         "validation part of the training data, keep the best weights, stop after N rounds without improvement "
         "(0 = off)"),
    Flag("--kd-features", "distill.features", "feature KD: NAME[,NAME] of modules in both teacher and student "
         "(e.g. layer1,layer2,layer3); MSE through 1x1 adapters where pruning changed the channel count", parse=names),
    Flag("--kd-feature-weight", "distill.feature_weight", "weight of the feature MSE added to the KD loss"),
    Flag("--kd-cache-teacher", "distill.cache_teacher", "compute the teacher's logits once per training sample "
         "(needs --kd-augment-shift 0 --no-kd-augment-flip)"),
    Flag("--kd-augment-shift", "distill.augment_shift", "random shift in pixels of the KD training images (0 = off)"),
    Flag("--kd-augment-flip", "distill.augment_flip", "random horizontal flip of the KD training images"),
    Flag("--kd-mixup", "distill.mixup", "mixup of the KD training images, Beta(A, A): teacher and student see the "
         "same blend (0 = off; 1 = a uniform blend weight)"),
    Flag("--kd-output-weight", "distill.output_weights", "NAME=W: weight of that output's distillation loss, for "
         "models with several outputs (default 1 each; repeatable)", append=True),
    Flag("--quant", "quant.mode", "ptq: static, calibrated; qat: quantization-aware training with KD (torchao "
         "pt2e); dynamic: int8 weights, for MatMul/Gemm-heavy models; none"),
    Flag("--qat-epochs", "qat.epochs", "epochs of quantization-aware training with --quant qat"),
    Flag("--quant-backend", "quant.backend", "ort: onnxruntime static QDQ; inc: Intel Neural Compressor 3.x, "
         "PyTorch pt2e INT8 exported to ONNX (slower here, offered for comparison)"),
    Flag("--calib-samples", "quant.calib_samples", "training samples for INT8 calibration",
         default=f"{DEFAULT_CALIB_SAMPLES}, or every training sample when there are fewer"),
    Flag("--calib-method", "quant.method", "calibration method"),
    Flag("--target", "quant.target", "CPU the INT8 file is for: auto = this machine; x86-avx2: 7-bit weights "
         "against U8S8 saturation; arm64: S8S8"),
    Flag("--latency-aware-int8", "quant.latency_aware", "leave in FP32 the layers whose INT8 kernel is slower than "
         "FP32 on the measuring CPU (onnxruntime profiler), kept only if the model gets faster end to end, and never "
         "ship an INT8 file slower than its FP32 parent (every layer FP32, weights stored as int8); auto = when "
         "the INT8 file is not faster than its parent there, and for models of >= 200M MACs; the flag alone = on",
         const="on"),
    Flag("--latency-aware-weights", "quant.latency_aware_weights", "how --latency-aware-int8's FP32 layers store "
         "their weights: int8 = per-channel int8 + Cast/Mul that onnxruntime folds to float at load (FP32 speed "
         "at INT8 size)"),
    Flag("--range-guard", "quant.range_guard", "models that are not one classifier output: keep in float the "
         "tail of an output whose channels' ranges differ 100x or more (box pixels next to scores), as INT8's one "
         "scale would wipe out the narrow channels"),
    Flag("--min-agreement", "verify.min_int8_agreement", "gate: INT8 vs FP32 top-1 agreement on the eval set >= F "
         "(0 = report only)"),
    Flag("--min-snr-db", "verify.min_snr_db", "gate: worst-channel SNR of INT8 vs FP32 for regression outputs "
         "(boxes, embeddings), in dB"),
    Flag("--metric", "verify.metric", "FILE.py:FN: your metric, FN(outputs, targets) -> float (higher is better, "
         "a fraction like accuracy) on numpy arrays; targets are the npz's y (any shape) or y_<output> arrays. "
         "Reported for every artifact; --max-accuracy-drop gates on it"),
    Flag("--max-accuracy-drop", "verify.max_accuracy_drop", "gate: INT8 top-1 at most F points below the original",
         default="report only"),
    Flag("--deliver", "verify.deliver", "the file the run delivers: int8 (smallest; the report says so in its first "
         "lines when it is slower here than its FP32 parent) or fastest (the faster of the two on this CPU)"),
    Flag("--max-drop-vs-original", "verify.max_drop_vs_original", "gate: every artifact's top-1 at most F points "
         "below the original's on the eval set (or 2 standard errors of the difference, if more; 0 = report only)"),
    Flag("--min-agreement-vs-original", "verify.min_agreement_vs_original", "gate on unlabelled eval data: every "
         "artifact's top-1 agreement with the original >= F (0 = report only)"),
    Flag("--parity-tol", "verify.parity_tol", "gate: FP32 ONNX vs PyTorch max-abs <= F * max(1,|logit|)"),
    Flag("--threads", "bench.threads", "onnxruntime intra-op threads for latency"),
    Flag("--runs", "bench.runs", "timed runs per artifact"),
    Flag("--bench-on", "bench.on", "measure every latency of the run (latency-aware INT8, --target-latency-ms, the "
         "benchmark) on this device over ssh: user@host, ssh://user@host:port or a Host alias; the build host's "
         "figures are recorded beside", default="this machine"),
    Flag("--bench-on-python", "bench.on_python", "the python on the --bench-on device that has numpy, onnx and "
         "onnxruntime"),
    Flag("--ssh-config", "bench.ssh_config", "ssh client configuration file for --bench-on (ssh -F)",
         default="ssh's own, ~/.ssh/config"),
    Flag("--exporter", "onnx.exporter", "torch.onnx exporter: dynamo (maintained, torch.export based) or "
         "torchscript (legacy, faster to run)"),
    Flag("--compact-names", "onnx.compact_names", "rename the ONNX files' internal tensors and nodes to short ids "
         "(inputs/outputs keep theirs): smaller files for tiny models, less readable graphs"),
    Flag("--out", "out", "output directory", default="a new one under ./edgecompress-out/"),
    Flag("--overwrite", "overwrite", "replace a previous run in --out"),
    Flag("--nproc", "nproc", "distil on N processes with torch.distributed DDP (gloo, DistributedSampler shards, "
         "global batch unchanged); KD only, other stages run in one process"),
    Flag("--resume", "resume", "continue KD of an interrupted run from its last checkpoint (kept in "
         ".OUT.resume/ beside --out); same command and --out as the interrupted run"),
    Flag("--seed", "seed", "seed of every random choice (data splits, calibration samples, training)"),
    Flag("--stages", "stages", "stage order: prune,distill,ptq (prune,distill,qat with --quant qat) | prune,qat | "
         "ptq | prune | prune,distill | qat; kd is another name for distill", parse=names,
         default="from the other settings"),
)  # fmt: skip


def _field(path: str) -> tuple[dataclasses.Field, Any, str]:
    """(field, its type, where it lives in the recipe) for "section.key" or "key"."""
    section, _, key = path.rpartition(".")
    cls = RunConfig if not section else typing.get_type_hints(RunConfig)[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f, typing.get_type_hints(cls)[key], section


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _scalar(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is not None and len(args) == 1 else tp


def _add(p: argparse.ArgumentParser, fl: Flag) -> None:
    f, tp, _ = _field(fl.field)
    default = _default_of(f)
    base = _scalar(tp)
    help_ = fl.help
    e = enum_type(tp)
    if e is not None:
        help_ += f"; one of {', '.join(c.value for c in e)}"
    shown = fl.default if default is None else ("on" if default is True else "off" if default is False else
                                                 ",".join(map(str, default)) if isinstance(default, tuple) else default)
    if shown not in (None, ""):
        help_ += f" (default: {shown})"
    help_ = help_.replace("%", "%%")
    dest = fl.flag.removeprefix("--").replace("-", "_")
    if base is bool and default is True:
        p.add_argument(fl.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif base is bool:
        p.add_argument(fl.flag, dest=dest, action="store_true", default=None, help=help_)
    elif fl.const is not None:
        p.add_argument(fl.flag, dest=dest, nargs="?", const=fl.const, metavar="{" + ",".join(c.value for c in e) + "}"
                       if e is not None else None, help=help_)
    elif fl.append:
        p.add_argument(fl.flag, dest=dest, action="append", help=help_)
    else:
        conv = fl.parse or (base if base in (int, float) else None)
        p.add_argument(fl.flag, dest=dest, type=conv, help=help_)


def add_arguments(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="Compress MODEL into an INT8 ONNX file and prove it: parity, "
                       "top-1 of every artifact under onnxruntime, latency and size. With no MODEL, compresses the "
                       "shipped resnet20 teacher on Fashion-MNIST. MODEL may be a zoo name (edgecompress models), "
                       "path/to/file.py:factory / package.module:factory, which runs that code, or FILE.onnx, which "
                       "gets INT8, verification and benchmark (no pruning or distillation; no torch needed).")
    p.add_argument("model", nargs="?", help="zoo name, path/to/file.py:factory, package.module:factory or FILE.onnx")
    p.add_argument("--recipe", help="TOML file with [model] [data] [prune] [distill] [quant] [qat] [verify] [bench] "
                   "[onnx] tables; flags override it")
    for fl in FLAGS:
        _add(p, fl)
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and stages, then exit")


def build_run_config(args: argparse.Namespace) -> RunConfig:
    recipe: dict[str, Any] = load_recipe(args.recipe) if args.recipe else {}
    flags: dict[str, Any] = {"model": {"name": args.model}} if args.model is not None else {}
    for fl in FLAGS:
        v = getattr(args, fl.flag.removeprefix("--").replace("-", "_"), None)
        if v is None:
            continue
        section, _, key = fl.field.rpartition(".")
        (flags.setdefault(section, {}) if section else flags)[key] = v
    model = args.model or recipe.get("model", {}).get("name")
    if is_onnx_model(model):  # a setting only a PyTorch model can honour, named as the user set it
        hit = explicit_pytorch_only(flags) or explicit_pytorch_only(recipe)
        if hit is not None:
            section, key = hit
            if key in flags.get(section, {}):
                fl = next(f.flag for f in FLAGS if f.field == f"{section}.{key}")
                setting = f"{fl} {_shown(flags[section][key])}".strip()
            else:
                setting = f"[{section}] {key} in --recipe {args.recipe}"
            raise ConfigError(refusal(model, setting))
    return RunConfig.from_dict(merge(recipe, flags)).validate()


def _shown(v: Any) -> str:
    """A flag's value as the user typed it (more or less): 2 not 2.0, a,b for a list, nothing for a switch."""
    if isinstance(v, list | tuple):
        return ",".join(map(str, v))
    return "" if v is True else f"{v:g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    cfg = build_run_config(args)
    if args.dry_run:
        plan = cfg.plan()
        first = "original (the input file)" if is_onnx_model(cfg.model.name) else "export original"
        stages = [first, *(s for s in plan if s in (Stage.PRUNE, Stage.DISTILL)),
                  *(["export pruned"] if Stage.PRUNE in plan else []),
                  *(s for s in plan if s not in (Stage.PRUNE, Stage.DISTILL)), "verify", "bench", "manifest"]
        print(json.dumps({"stages": [str(s) for s in stages], "config": cfg.to_dict()}, indent=2))
        return 0
    resolve_data(cfg.data.data)  # a missing data set fails before any model is built
    if cfg.data.eval_data is not None and not Path(cfg.data.eval_data).exists():
        raise BadInput(f"--eval-data {cfg.data.eval_data}: no such file or directory; pass an .npz file, IDX "
                       "directory or image folder")
    res = run_pipeline(cfg)
    if not res.manifest:  # a torchrun rank other than 0: rank 0 reports
        return 0
    arts = res.manifest["artifacts"]
    base = arts["original"]
    for name, a in arts.items():
        top1 = "" if a.get("top1") is None else f"top-1 {100 * a['top1']:.2f}%  "
        print(f"{name:9s} {a['path']:18s} {a['bytes']:>10,d} B  {top1}p50 {a['latency_ms_p50']:.3f} ms  "
              f"({base['latency_ms_p50'] / a['latency_ms_p50']:.2f}x faster, {base['bytes'] / a['bytes']:.1f}x smaller)")
    delivered, fastest = res.manifest.get("delivered_artifact"), res.manifest.get("fastest_artifact")
    if delivered is not None:
        slower = " (slower here than its FP32 parent: see report.md)" if delivered == "int8" and fastest not in (
            None, "int8") else ""
        print(f"delivered: {arts[delivered]['path']}{slower}")
    if res.exit_code:
        print(f"error: verification gate failed: {'; '.join(res.failures)} (see {res.out_dir}/report.md)",
              file=sys.stderr)
    return res.exit_code
