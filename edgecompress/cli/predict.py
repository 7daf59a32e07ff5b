"""``edgecompress predict MODEL.onnx DATA...``: top-k classes for an .npz or image files. Loads only
the torch-free runtime layer."""

from __future__ import annotations

import argparse
import json
import sys

from edgecompress.cli.common import shape
from edgecompress.runtime.predict import format_table, predict


def add_arguments(sub, name: str, help_: str) -> None:
    pr = sub.add_parser(name, help=help_)
    pr.add_argument("onnx", help="model.onnx")
    pr.add_argument("data", nargs="+", help="FILE.npz with array x (N,H,W or N,C,H,W), or image files "
                    "(PGM/PPM; PNG/JPEG/... with Pillow), resized to the model input")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per sample (default 3)")
    pr.add_argument("--json", action="store_true", help="print only JSON on stdout")
    pr.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    pr.add_argument("--batch", type=int, default=32, help="samples per onnxruntime call (default 32)")
    pr.add_argument("--input-shape", type=shape, help="N,C,H,W when the model's input has symbolic dims")


def run(args: argparse.Namespace) -> int:
    res = predict(args.onnx, args.data, top_k=args.top_k, threads=args.threads, batch=args.batch,
                  input_shape=args.input_shape)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    sys.stdout.flush()
    return 0
