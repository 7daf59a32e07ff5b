"""Checkpoints that let an interrupted distillation continue (``--resume``).

The run itself is built in a staging directory that a kill throws away (``pipeline.rundir``), so the
checkpoints live beside it, in ``.<out>.resume/`` next to ``--out``: one file per KD round
(``kd-<prune step>.ckpt``), written atomically at the end of every pass over the data and every
``checkpoint_every`` steps. A checkpoint holds the loop state of ``train.loop.fit`` (student and
adapter weights, optimizer, step, position in the epoch, RNG states, validation history) and a
key: the sha256 of the resolved configuration (without ``resume``/``overwrite``), the teacher's
weights hash, the pruning record and the prune step. ``--resume`` loads it only if the key
matches (otherwise a one-line error); without ``--resume`` old checkpoints are removed. A run
that completes removes the directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.files import atomic_write_bytes


def resume_dir(out: Path) -> Path:
    out = out.resolve()
    return out.parent / f".{out.name}.resume"


def run_key(config: dict[str, Any], teacher_sha256: str | None, record: dict[str, Any], step: int) -> str:
    cfg = {k: v for k, v in config.items() if k not in ("resume", "overwrite")}
    blob = json.dumps({"config": cfg, "teacher": teacher_sha256, "record": record, "prune_step": step},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


class KdCheckpoint:
    """``train.Checkpointer`` backed by one file. ``resume=False``: never loads, only saves."""

    def __init__(self, path: Path, key: str, *, resume: bool, every: int = 0, enabled: bool = True,
                 log: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.path, self.key, self.resume, self.every, self.enabled = path, key, resume, every, enabled
        self.log = log
        self.resumed_from: int | None = None

    def load(self) -> dict[str, Any] | None:
        if not self.resume or not self.path.is_file():
            return None
        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn file cannot happen (atomic writes); anything else: say so
            raise ConfigError(f"--resume: cannot read {self.path} ({type(e).__name__}); delete it to start over") from None
        if state.get("key") != self.key:
            raise ConfigError(f"--resume: {self.path} was written by a run with a different configuration or pruning "
                              f"result; rerun with the original flags, or without --resume to start over")  # fmt: skip
        self.resumed_from = int(state["loop"]["step"])
        if self.log is not None:
            self.log(f"resuming KD from step {self.resumed_from} ({self.path})")
        return state

    def save(self, state: dict[str, Any]) -> None:
        if not self.enabled:  # e.g. ranks other than 0
            return
        import torch

        buf = io.BytesIO()
        torch.save(state | {"key": self.key}, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue())


def clear(out: Path) -> None:
    shutil.rmtree(resume_dir(out), ignore_errors=True)
