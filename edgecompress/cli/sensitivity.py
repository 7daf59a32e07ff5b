"""``edgecompress sensitivity [MODEL]``: per-layer pruning sensitivity, as a table and a plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from edgecompress.cli.common import floats
from edgecompress.config import DataConfig, Importance, ModelConfig
from edgecompress.data.folders import load_image_folder
from edgecompress.data.preprocess import image_prep_for
from edgecompress.data.splits import load_splits
from edgecompress.errors import ConfigError
from edgecompress.models.loading import load_model
from edgecompress.prune.sensitivity import SensitivityConfig, sensitivity, write_outputs
from edgecompress.train import device as devices


def add_arguments(sub, name: str, help_: str) -> None:
    s = sub.add_parser(name, help=help_)
    s.add_argument("model", nargs="?", help="zoo name or file.py:factory (default: the shipped resnet20)")
    s.add_argument("--weights")
    s.add_argument("--data", help="fashion-mnist (default), IDX directory, FILE.npz or image folder (read at the "
                   "first image's size and channels; its validation split is used)")
    s.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    s.add_argument("--ratios", type=floats, help="channel fractions to remove per group (default "
                   f"{','.join(map(str, SensitivityConfig().ratios))}: up to the share export's pruner lets a layer "
                   "lose, so --allocation sensitivity can use its whole range)")
    s.add_argument("--importance", default=SensitivityConfig().importance.value,
                   help=f"one of {', '.join(i.value for i in Importance)} (default {SensitivityConfig().importance})")
    s.add_argument("--max-eval", type=int, default=2000, help="validation samples to score (default 2000)")
    s.add_argument("--out", default="sensitivity", help="directory for sensitivity.json/.md/.png")


def run(args: argparse.Namespace) -> int:
    if args.ratios and any(not 0 < r < 1 for r in args.ratios):
        raise ConfigError(f"--ratios {args.ratios}: each must be in (0, 1)")
    if args.importance not in {i.value for i in Importance}:
        raise ConfigError(f"--importance {args.importance!r} is not one of: {', '.join(i.value for i in Importance)}")
    device = str(devices.resolve(args.device))
    prep_for = image_prep_for(DataConfig(), None)
    splits = load_splits(args.data, None, input_shape=None, seed=0,
                         images=lambda path, prep: load_image_folder(path, prep, prep_for))
    lm = load_model(ModelConfig(name=args.model, weights=args.weights), data_shape=tuple(splits.val.x.shape[1:]))
    val = splits.val.take(np.arange(min(args.max_eval, len(splits.val))), splits.val.source)
    ratios = tuple(args.ratios) if args.ratios else SensitivityConfig().ratios
    cfg = SensitivityConfig(ratios=ratios, importance=Importance(args.importance))
    res = sensitivity(lm.model, torch.zeros(lm.input_shape), val, cfg,
                      progress=lambda m: print(f"edgecompress: {m}", file=sys.stderr, flush=True), device=device)
    for p in write_outputs(res, Path(args.out)):
        print(p)
    return 0
