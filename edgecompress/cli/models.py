"""``edgecompress models``: the zoo, with the shipped teachers' test top-1."""

from __future__ import annotations

import argparse

from edgecompress.models.loading import shipped_checkpoint
from edgecompress.models.zoo import list_models


def add_arguments(sub, name: str, help_: str) -> None:
    sub.add_parser(name, help=help_)


def run(args: argparse.Namespace) -> int:
    for e in list_models():
        ck = shipped_checkpoint(e.name)
        trained = f"trained: top-1 {ck[1]['test_top1']:.4f}" if ck else "random init"
        print(f"{e.name:20s} input {','.join(map(str, e.default_input)):9s} {trained:22s} {e.description}")
    return 0
