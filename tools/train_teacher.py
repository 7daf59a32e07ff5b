"""Train a zoo model on the Fashion-MNIST training split and write
edgecompress/models/weights/<name>.pt + .json (package data: wheels ship them; add the name to
edgecompress.models.loading.SHIPPED_TEACHERS).

    python tools/train_teacher.py resnet20 --epochs 15

The checkpoint is a plain state_dict (loadable with weights_only=True); the JSON sidecar
records the recipe, seed, top-1 on the official 10k test split, the sha256 of the .pt and the
wall time. The test split is used only for that final number, never for model selection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecompress.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from edgecompress.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from edgecompress.models.loading import WEIGHTS_DIR  # noqa: E402
from edgecompress.models.zoo import create_model  # noqa: E402
from edgecompress.train.loop import TrainConfig, cross_entropy, fit, top1  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DEBIAN_FASHION_MNIST)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = load_fashion_mnist(args.data, "train")
    test = load_fashion_mnist(args.data, "test")
    model = create_model(args.model, num_classes=10, in_chans=1)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      warmup_steps=200, seed=args.seed)
    t0 = time.time()
    fit(model, train, cfg, cross_entropy, desc=f"teacher {args.model}",
        on_epoch=lambda e: print(f"epoch {e} done ({time.time() - t0:.0f} s)", file=sys.stderr))
    wall = time.time() - t0
    acc = top1(model, test)
    print(f"{args.model}: top-1 on the 10k test split {acc:.4f} after {wall:.0f} s")

    import io as _io

    buf = _io.BytesIO()
    torch.save(model.state_dict(), buf)
    blob = buf.getvalue()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / f"{args.model}.pt", blob)
    sidecar = {
        "model": args.model,
        "num_classes": 10,
        "in_chans": 1,
        "input_shape": [1, 1, 28, 28],
        "classes": list(FASHION_MNIST_CLASSES),
        "dataset": "fashion-mnist (Debian package dataset-fashion-mnist), 60k train",
        "test_top1": round(acc, 4),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "seed": args.seed,
        "recipe": asdict(cfg) | {"optimizer": "SGD nesterov, cosine, no wd on BN/bias",
                                 "loss": "cross-entropy"},
        "train_seconds": round(wall, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "command": "python tools/train_teacher.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_text(args.out / f"{args.model}.json", json.dumps(sidecar, indent=2) + "\n")


if __name__ == "__main__":
    main()
