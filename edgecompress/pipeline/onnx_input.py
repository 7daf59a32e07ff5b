"""The run of a model that arrives as an ONNX file (``edgecompress export model.onnx``):

    check the file -> resolve its input shape (symbolic dims from the data or --input-shape) ->
    original.onnx (the input, with its metadata carried over) -> INT8 (the registry's quantizer:
    static PTQ, accuracy-aware, latency-aware, or dynamic) -> evaluate (top-1 of both under
    onnxruntime, INT8-vs-input agreement gate) -> benchmark -> manifest.json + report.md

Pruning and distillation need the PyTorch model (config.onnx_input refuses them). Nothing here
imports torch: ``edgecompress export model.onnx`` runs where only numpy, onnx and onnxruntime are
installed. A fixed batch dimension is honoured everywhere: evaluation and calibration feed batches
of exactly that size, and the latency is measured at it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecompress.config import RunConfig
from edgecompress.data import Splits, limit, load_splits, resolve_data
from edgecompress.errors import BadInput
from edgecompress.export import check_onnx, metadata
from edgecompress.files import atomic_write_bytes, sha256_file
from edgecompress.pipeline import rundir
from edgecompress.pipeline.context import RunRecord, RunResult, stderr_log
from edgecompress.pipeline.int8 import Quantize, calibration_indices, stamp
from edgecompress.pipeline.verify import close
from edgecompress.report import Artifact, versions
from edgecompress.runtime import cpu
from edgecompress.runtime.macs import macs_params
from edgecompress.runtime.predict import ModelInput, model_input, open_model
from edgecompress.runtime.session import run_batched


def run(cfg: RunConfig, *, log: Callable[[str], None] = stderr_log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    return rundir.deliver(out, lambda d: _run(load_onnx_inputs(cfg, d, log, t_start)), log=log, t_start=t_start)


def _run(ctx: RunRecord) -> RunResult:
    ctx.log(f"stages: {' -> '.join(ctx.cfg.plan()) or 'verify only'}")
    quantize = Quantize()
    if quantize.applies(ctx):
        quantize.run(ctx)
    return close(ctx)


def load_onnx_inputs(cfg: RunConfig, d: Path, log: Callable[[str], None], t_start: float) -> RunRecord:
    """The run record of an ONNX input: the file checked, its input resolved against the data, the
    data split and limited, the calibration samples drawn, and original.onnx written."""
    t = time.time()
    src = Path(cfg.model.name or "")
    sess, src_meta = open_model(src)
    mi = _model_input(sess, src_meta, cfg, src)
    splits, dims = _data(cfg, mi)
    num_classes = _num_classes(sess, dims)
    for part in (splits.train, splits.eval):
        if part is not None and part.y is not None and len(part.y) and part.y.max() >= num_classes:
            raise BadInput(f"labels in {part.source} go up to {int(part.y.max())} but {src} has {num_classes} "
                           f"outputs; labels must be 0..{num_classes - 1}")
    input_shape = (mi.batch or 1, *dims)
    warnings = []
    if mi.batch is not None and mi.batch != cfg.bench.batch:  # the graph takes no other batch size
        cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, batch=mi.batch))
        warnings.append(f"{src.name} fixes its batch size to {mi.batch}: latency is measured at batch {mi.batch}, "
                        "evaluation and calibration feed batches of that size")
    classes = mi.classes or (splits.train.classes if len(splits.train.classes) == num_classes else ())
    sha = sha256_file(src)
    meta = metadata(version=versions().get("edgecompress") or "dev", input_shape=input_shape, classes=classes,
                    num_classes=num_classes, source_model=str(src), weights_sha256=sha)
    # what the file says of itself (classes, normalisation, layout, ...) is carried over; lineage is ours
    meta |= {k: v for k, v in src_meta.items() if not k.startswith(("edgecompress.", "source."))}
    log(f"model {src} (ONNX, {num_classes} classes, input {list(input_shape)}"
        f"{f', fixed batch {mi.batch}' if mi.batch else ', dynamic batch'}); data {splits.description['kind']}: "
        f"{len(splits.train)} train / {len(splits.val)} val / {0 if splits.eval is None else len(splits.eval)} eval")
    record = {"kind": "onnx", "ref": str(src), "sha256": sha, "input_name": mi.name, "input_shape": list(input_shape),
              "batch": mi.batch or "dynamic", "shape_from": mi.shape_from if None not in mi.dims else "data",
              "num_classes": num_classes, "metadata": src_meta}  # fmt: skip
    calib_idx, calib_source = calibration_indices(cfg, splits, log)
    ctx = RunRecord(cfg=cfg, d=d, log=log, t_start=t_start, splits=splits, calib_idx=calib_idx,
                    calib_source=calib_source, meta=meta, input_shape=input_shape, model_record=record,
                    eval_threads=cpu.default_threads(),
                    warnings=warnings)
    _original(ctx, src)
    ctx.timings["load"] = time.time() - t
    return ctx


def _model_input(sess, src_meta: dict[str, str], cfg: RunConfig, src: Path) -> ModelInput:
    """The one float input of a classifier with one [N, classes] output; BadInput names what differs."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1:
        raise BadInput(f"{src} has {len(ins)} inputs ({', '.join(i.name for i in ins)}); edgecompress quantizes "
                       "image classifiers with one input tensor N,C,H,W")
    if len(outs[0].shape) != 2:
        raise BadInput(f"{src}: its first output {outs[0].name!r} has shape {outs[0].shape}; edgecompress expects "
                       "a classifier whose first output is [N, classes] logits")
    mi = model_input(sess, src_meta, list(cfg.model.input_shape) if cfg.model.input_shape else None)
    if ins[0].type != "tensor(float)":
        raise BadInput(f"{src}: input {mi.name!r} is {ins[0].type}; edgecompress feeds float32 images in [0, 1] "
                       "(uint8 / 255), so export the model with a float input")
    if len(mi.dims) != 3:
        raise BadInput(f"{src}: input {mi.name!r} has shape {ins[0].shape}; edgecompress expects N,C,H,W images")
    return mi


def _data(cfg: RunConfig, mi: ModelInput) -> tuple[Splits, tuple[int, ...]]:
    """The data splits, and the per-sample dims C,H,W of the input (symbolic ones from the data)."""
    kind, _ = resolve_data(cfg.data.data)
    dc = cfg.data
    if kind == "random":
        if any(v is None for v in mi.dims):
            raise BadInput(f"--data random: the model input {mi.name!r} has symbolic dims {list(mi.dims)}; pass "
                           "--input-shape N,C,H,W")
        dims = tuple(int(v) for v in mi.dims)  # type: ignore[arg-type]
        splits = load_splits(dc.data, dc.eval_data, input_shape=dims, seed=cfg.seed,
                             random_samples=dc.random_samples)
    else:
        splits = load_splits(dc.data, dc.eval_data, input_shape=None, seed=cfg.seed, val_fraction=dc.val_fraction,
                             eval_fraction=dc.eval_fraction)
        dims = tuple(splits.train.x.shape[1:])
        if len(dims) != len(mi.dims) or any(m is not None and m != v for m, v in zip(mi.dims, dims, strict=False)):
            want = ",".join("?" if v is None else str(v) for v in mi.dims)
            where = "the graph" if mi.shape_from == "graph" else mi.shape_from
            raise BadInput(f"the data's samples have shape {dims} but the model input {mi.name!r} takes N,{want} "
                           f"(from {where}); pass --data with samples of that shape")
    splits = limit(splits, seed=cfg.seed, max_train=dc.max_train, max_eval=dc.max_eval, val_fraction=dc.val_fraction)
    return splits, dims


def _num_classes(sess, dims: tuple[int, ...]) -> int:
    """The output's class count: from the graph when fixed, else from one forward pass on zeros."""
    k = sess.get_outputs()[0].shape[-1]
    if isinstance(k, int) and k > 0:
        return k
    return int(run_batched(sess, np.zeros((1, *dims), np.float32)).shape[-1])


def _original(ctx: RunRecord, src: Path) -> None:
    """original.onnx: the input file as one file (external data inlined), with the run's metadata."""
    import onnx

    path = ctx.d / "original.onnx"
    atomic_write_bytes(path, onnx.load(str(src)).SerializeToString())
    stamp(ctx, path, "original")
    check_onnx(path)
    macs, params = macs_params(path, ctx.input_shape)
    ctx.arts["original"] = Artifact(path=path.name, macs=macs, params=params, parent=None)
