"""Shared fixtures. Tests keep every output (and ORT/INC caches, via HOME) in tmp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="session")
def _quiet_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield
    if old is not None:
        os.environ["HOME"] = old


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "edgecompress", *args], cwd=cwd, env=cli_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def make_npz(path: Path, n: int = 300, shape=(1, 16, 16), classes: int = 4, seed: int = 0) -> Path:
    """A small learnable data set: each class is a bright square in its own quadrant + noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    c, h, w = shape
    x = rng.integers(0, 60, (n, c, h, w)).astype(np.uint8)
    for i, k in enumerate(y):
        r, q = divmod(int(k), 2)
        x[i, :, r * h // 2 : (r + 1) * h // 2, q * w // 2 : (q + 1) * w // 2] += 150
    np.savez(path, x=x, y=y)
    return path


def quadrants(n: int, seed: int):
    """A tiny learnable 4-class problem: each class is a bright 8x8 quadrant of a 16x16 image."""
    from edgecompress.data import Dataset

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.random((n, 1, 16, 16), dtype=np.float32) * 0.3
    for i, k in enumerate(y):
        r, q = divmod(int(k), 2)
        x[i, :, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8] += 0.6
    return Dataset(x, y.astype(np.int64), f"quadrants:{seed}")


needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
