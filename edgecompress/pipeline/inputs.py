"""The inputs of a run: model and data (resolved and checked against each other), the seeded
calibration samples, and the metadata every ONNX file carries."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgecompress.config import RunConfig, Stage
from edgecompress.data import limit, load_splits, resolve_data
from edgecompress.errors import BadInput
from edgecompress.models import LoadedModel, load_model
from edgecompress.models.loading import import_callable
from edgecompress.models.outputs import predict_outputs
from edgecompress.pipeline.context import RunContext
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
        splits = load_splits(cfg.data.data, cfg.data.eval_data, input_shape=None, seed=cfg.seed,
                             val_fraction=cfg.data.val_fraction, eval_fraction=cfg.data.eval_fraction)
        lm = load_model(cfg.model, data_shape=tuple(splits.train.x.shape[1:]))
        if tuple(lm.input_shape[1:]) != tuple(splits.train.x.shape[1:]):
            raise BadInput(f"--input-shape {','.join(map(str, lm.input_shape))} does not match the data's "
                           f"samples {tuple(splits.train.x.shape[1:])}; drop --input-shape or fix it")
    splits = limit(splits, seed=cfg.seed, max_train=cfg.data.max_train, max_eval=cfg.data.max_eval,
                   val_fraction=cfg.data.val_fraction)
    lm.outputs = infer_outputs(lm, splits.train.x[:64], cfg.model.output_kinds)
    if not is_classifier(lm.outputs):
        check_non_classifier(cfg)
    for part in (splits.train, splits.eval):
        if not is_classifier(lm.outputs):
            break  # labels for other outputs: the user's metric reads them
        if part is not None and part.y is not None and len(part.y) and part.y.max() >= lm.num_classes:
            raise BadInput(f"labels in {part.source} go up to {int(part.y.max())} but the model has "
                           f"{lm.num_classes} outputs; labels must be 0..{lm.num_classes - 1}")
    plan = cfg.plan()
    calib_idx = np.zeros(0, int)
    if Stage.PTQ in plan:
        if cfg.quant.calib_samples > len(splits.train):
            raise BadInput(f"--calib-samples {cfg.quant.calib_samples} exceeds the {len(splits.train)} training "
                           "samples; lower --calib-samples or pass more data")
        rng = np.random.default_rng(cfg.seed)
        calib_idx = np.sort(rng.choice(len(splits.train), cfg.quant.calib_samples, replace=False))
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
    ctx = RunContext(cfg=cfg, d=d, log=log, t_start=t_start, lm=lm, splits=splits, metric=metric,
                     example=torch.zeros((1, *lm.input_shape[1:])), calib_idx=calib_idx,
                     meta=onnx_metadata(lm, lm.classes or splits.train.classes))
    ctx.timings["load"] = time.time() - t
    return ctx


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


def onnx_metadata(lm: LoadedModel, classes: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {
        "edgecompress.version": versions().get("edgecompress") or "dev",
        "input.layout": "NCHW",
        "input.shape": json.dumps(list(lm.input_shape)),
        "input.normalization": "float32 in [0,1]: uint8 pixels / 255",
        "classes": json.dumps(list(classes) or [str(i) for i in range(lm.num_classes)]),
        **({} if is_classifier(lm.outputs) else {"outputs": json.dumps([o.to_dict() for o in lm.outputs])}),
        "source.model": lm.spec.ref,
        "source.weights_sha256": lm.weights_sha256 or "",
    }
