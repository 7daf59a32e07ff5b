"""The inputs of a run: model and data (resolved and checked against each other), the seeded
calibration samples, and the metadata every ONNX file carries."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from edgecompress.config import RunConfig, Stage
from edgecompress.data import as_float, limit, load_splits, resolve_data
from edgecompress.data.folders import load_image_folder
from edgecompress.data.preprocess import META_KEY, image_prep_for, is_default
from edgecompress.errors import BadInput
from edgecompress.models import LoadedModel, load_model
from edgecompress.models.loading import import_callable
from edgecompress.models.outputs import predict_outputs
from edgecompress.pipeline.context import RunContext
from edgecompress.pipeline.int8 import calibration_indices
from edgecompress.report import versions
from edgecompress.runtime.outputs import OutputInfo, describe_outputs, is_classifier, parse_kind_overrides


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_inputs(cfg: RunConfig, d: Path, log: Callable[[str], None], t_start: float) -> RunContext:
    t = time.time()
    seed_everything(cfg.seed)
    kind, _ = resolve_data(cfg.data.data)
    if kind == "random":
        lm = load_model(cfg.model)
        splits = load_splits(cfg.data.data, cfg.data.eval_data, input_shape=lm.input_shape[1:], seed=cfg.seed,
                             random_samples=cfg.data.random_samples)
    else:
        images = partial(_image_folder, cfg)
        splits = load_splits(cfg.data.data, cfg.data.eval_data, input_shape=None, seed=cfg.seed,
                             val_fraction=cfg.data.val_fraction, eval_fraction=cfg.data.eval_fraction, images=images)
        lm = load_model(cfg.model, data_shape=tuple(splits.train.x.shape[1:]))
        if tuple(lm.input_shape[1:]) != tuple(splits.train.x.shape[1:]):
            raise BadInput(f"--input-shape {','.join(map(str, lm.input_shape))} does not match the data's "
                           f"samples {tuple(splits.train.x.shape[1:])}; drop --input-shape or fix it")
    if getattr(splits.train.x, "prep", None) is None and not is_default(cfg.data):
        raise BadInput("--image-size/--resize/--crop-fraction/--channels/--mean/--std apply to image folders; this "
                       f"--data is {kind} (arrays, used as stored): drop them or pass a folder of images")
    splits = limit(splits, seed=cfg.seed, max_train=cfg.data.max_train, max_eval=cfg.data.max_eval,
                   val_fraction=cfg.data.val_fraction)
    _record_file_lists(splits)
    lm.outputs = infer_outputs(lm, as_float(splits.train.x[:64]), cfg.model.output_kinds)
    if not is_classifier(lm.outputs):
        check_non_classifier(cfg)
    for part in (splits.train, splits.eval):
        if not is_classifier(lm.outputs):
            break  # labels for other outputs: the user's metric reads them
        if part is not None and part.y is not None and len(part.y) and part.y.max() >= lm.num_classes:
            raise BadInput(f"labels in {part.source} go up to {int(part.y.max())} but the model has "
                           f"{lm.num_classes} outputs; labels must be 0..{lm.num_classes - 1}")
    calib_idx, calib_source = calibration_indices(cfg, splits, log)
    what = f"{lm.num_classes} classes" if is_classifier(lm.outputs) else \
        ", ".join(f"{o.name} {list(o.shape)} {o.kind}" for o in lm.outputs)
    log(f"model {lm.spec.ref} ({what}, input {list(lm.input_shape)}); data "
        f"{splits.description['kind']}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{0 if splits.eval is None else len(splits.eval)} eval")
    metric = None
    if cfg.verify.metric is not None:
        metric = import_callable(cfg.verify.metric, "--metric")
        ev = splits.eval if splits.eval is not None else splits.train
        if ev.targets is None:
            raise BadInput(f"--metric {cfg.verify.metric} needs targets: save them in the npz as y (any shape) or "
                           "y_<output> per output")
    record = lm.spec.to_dict() | {"weights": lm.weights, "weights_sha256": lm.weights_sha256,
                                  "input_shape": list(lm.input_shape), "num_classes": lm.num_classes,
                                  "classifier": is_classifier(lm.outputs), "outputs": [o.to_dict() for o in lm.outputs]}
    ctx = RunContext(cfg=cfg, d=d, log=log, t_start=t_start, lm=lm, splits=splits, metric=metric, outputs=tuple(lm.outputs),
                     example=torch.zeros((1, *lm.input_shape[1:])), calib_idx=calib_idx,
                     calib_source=calib_source, input_shape=tuple(lm.input_shape), model_record=record,
                     meta=onnx_metadata(lm, lm.classes or splits.train.classes, getattr(splits.train.x, "prep", None)),
                     eval_threads=torch.get_num_threads())
    ctx.timings["load"] = time.time() - t
    return ctx


def _image_folder(cfg: RunConfig, path: Path, prep):
    """An image folder with the run's preprocessing (``prep``: the training set's, for --eval-data)."""
    return load_image_folder(path, prep, image_prep_for(cfg.data, cfg.model.input_shape), bad_files=cfg.data.bad_files)


def _record_file_lists(splits) -> None:
    """Image folders: the count and sha256 of each split's file list, in the manifest's data record."""
    parts = {"train": splits.train, "val": splits.val, "eval": splits.eval}
    lists = {k: {"count": len(d), "sha256": d.x.file_list_sha256()} for k, d in parts.items()
             if d is not None and hasattr(d.x, "file_list_sha256")}
    if lists:
        splits.description["file_lists"] = lists
        splits.description["preprocess"] = json.loads(splits.train.x.prep.to_meta())


def infer_outputs(lm: LoadedModel, x: np.ndarray, overrides: tuple[str, ...]) -> tuple[OutputInfo, ...]:
    """Names, shapes and kinds of the model's outputs from its values on ``x`` (runtime.outputs)."""
    arrays = predict_outputs(lm.model, x)
    return describe_outputs(lm.output_names, arrays, parse_kind_overrides(overrides, lm.output_names))


def check_non_classifier(cfg: RunConfig) -> None:
    """What measures top-1 of one classifier output cannot run on other models: name it."""
    plan = cfg.plan()
    needs = [(flag, fix) for flag, on, fix in (
        ("--quant qat", Stage.QAT in plan, "use --quant ptq"),
        ("--quant-backend inc", cfg.quant.backend == "inc", "use --quant-backend ort"),
        ("--drop-blocks", cfg.prune.drop_blocks > 0, "drop it"),
        ("--max-accuracy-drop", cfg.verify.max_accuracy_drop is not None and cfg.verify.metric is None,
         "pass your metric with --metric file.py:fn, or drop it (the fidelity gates vs the FP32 file apply)"),
        ("--allocation sensitivity without --sensitivity FILE",
         cfg.prune.allocation == "sensitivity" and cfg.prune.sensitivity is None, "use --allocation uniform"),
    ) if on]  # fmt: skip
    if needs:
        raise BadInput(f"{needs[0][0]} works on models with one classifier output (top-1 on labels); this model's "
                       f"outputs are not that: {needs[0][1]}")


def onnx_metadata(lm: LoadedModel, classes: tuple[str, ...] | list[str], prep=None) -> dict[str, str]:
    meta = {
        "edgecompress.version": versions().get("edgecompress") or "dev",
        "input.layout": "NCHW",
        "input.shape": json.dumps(list(lm.input_shape)),
        "input.normalization": "float32 in [0,1]: uint8 pixels / 255",
        "classes": json.dumps(list(classes) or [str(i) for i in range(lm.num_classes)]),
        **({} if is_classifier(lm.outputs) else {"outputs": json.dumps([o.to_dict() for o in lm.outputs])}),
        "source.model": lm.spec.ref,
        "source.weights_sha256": lm.weights_sha256 or "",
    }
    if prep is not None:  # image files: the recipe edgecompress predict applies to raw images
        meta[META_KEY] = prep.to_meta()
        meta["input.normalization"] = (f"image files: {prep.resize} to {prep.size[0]}x{prep.size[1]}, {prep.channels}, "
                                       f"pixels / 255, mean {list(prep.mean) or 0}, std {list(prep.std) or 1}")
    return meta
