"""How the timm tests and ``benchmarks/external_zoo.py`` run timm where torchvision is broken.

timm imports torchvision; a torchvision built for another torch (the CUDA wheel next to a CPU
torch) fails to import ("operator torchvision::nms does not exist"), and timm with it. The
models themselves never call torchvision. :func:`timm_env` returns the environment for a
*subprocess*: when ``import torchvision`` fails in this interpreter, ``tests/shims`` (a
placeholder ``torchvision`` package, see its docstring) goes first on that subprocess's
``PYTHONPATH``; when torchvision imports, the environment is returned unchanged. Nothing is
installed and the calling process is not modified.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

SHIMS = Path(__file__).resolve().parent / "shims"
TIMM_VERSION = "1.0.31"  # the pinned release the corpus is checked against (pyproject dev extra, constraints.txt)


@functools.cache
def torchvision_imports(python: str = sys.executable) -> bool:
    """Whether ``import torchvision`` works in ``python`` (asked in a subprocess: a failed import
    leaves half-registered operators behind in the process that tried)."""
    r = subprocess.run([python, "-c", "import torchvision"], capture_output=True, timeout=300)
    return r.returncode == 0


def timm_env(env: dict[str, str] | None = None, python: str = sys.executable) -> dict[str, str]:
    """``env`` (default: os.environ) with the torchvision shim first on PYTHONPATH when needed."""
    env = dict(os.environ if env is None else env)
    if not torchvision_imports(python):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS), env.get("PYTHONPATH", "")) if p)
    return env


def timm_available(python: str = sys.executable) -> str | None:
    """None when ``import timm`` works (through the shim if needed) in a subprocess, else why not."""
    r = subprocess.run([python, "-c", "import timm; print(timm.__version__)"], env=timm_env(python=python),
                       capture_output=True, text=True, timeout=300)
    if r.returncode:
        return (r.stderr.strip().splitlines() or ["import timm failed"])[-1]
    return None
