"""What CPU this is: model name, cores and the INT8 instruction-set flags (no numpy, no torch)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
              "asimd", "asimddp", "i8mm")  # fmt: skip


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and model in ("", platform.machine(), platform.processor()):
                model = val.strip()
            elif key in ("flags", "Features"):
                flags |= set(val.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "isa": {f: f in flags for f in INT8_FLAGS},
    }



def default_threads() -> int:
    """The threads a batch evaluation may use: OMP_NUM_THREADS when set (as torch does), else the cores
    this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
