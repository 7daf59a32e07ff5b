"""The device side of a remote measurement (:mod:`edgecompress.runtime.remote`): run on the device as
``python -m edgecompress.runtime.device`` from the runtime code shipped there (a zip on
PYTHONPATH), it reads jobs, one JSON line each, from stdin, and for each calls one measurement of
this package on the job's files and prints its result as JSON after a marker line, with what the
device is (host name, CPU, python, onnxruntime). One process serves all the calls of a run, so
python and onnxruntime are imported once.

A job names a call of :data:`CALLS` and its keyword arguments; the files are the job's ``files``
(paths on the device). An error the user can act on (:class:`BadInput`) comes back as
``{"error": ...}``."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgecompress.errors import BadInput
from edgecompress.runtime.cpu import cpu_info
from edgecompress.runtime.kernels import layer_times
from edgecompress.runtime.latency import bench_file, compare_files, measure_latency, round_robin_p50

MARKER = "@@edgecompress-device-result@@"  # the result is the line after it (a login shell may print too)


def device_info() -> dict[str, Any]:
    """What this device is; ``key`` (host name / CPU model) names it in results and manifests."""
    import onnxruntime as ort

    cpu = cpu_info()
    host = platform.node() or "unknown-host"
    return {"key": f"{host} / {cpu['model']}", "hostname": host, "cpu": cpu,
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "runtime_from": str(Path(__file__).parent)}  # fmt: skip


def _bench(files: list[Path], **kw: Any) -> dict[str, Any]:
    if len(files) == 1:
        kw.pop("rounds", None)
        return bench_file(files[0], **kw)
    return compare_files(files, **kw)


def _latency(files: list[Path], **kw: Any) -> dict[str, Any]:
    return measure_latency(files[0], **kw).to_dict()


def _p50s(files: list[Path], **kw: Any) -> dict[str, Any]:
    return {"p50_ms": round_robin_p50(list(files), **kw)}


def _layer_times(files: list[Path], **kw: Any) -> dict[str, Any]:
    return {"ms": layer_times(files[0], **kw)}


def _dirs(files: list[Path], *, remove: Sequence[str] = (), make: Sequence[str] = ()) -> dict[str, Any]:
    """Removes and makes directories under the working directory (the job's temporary one)."""
    here = Path.cwd().resolve()
    for d in [*remove, *make]:
        if not Path(d).resolve().is_relative_to(here):
            raise BadInput(f"{d}: outside the device's working directory {here}")
    for d in remove:
        shutil.rmtree(d, ignore_errors=True)
    for d in make:
        os.makedirs(d, exist_ok=True)
    return {}


# call name -> function(files, **kwargs) -> JSON-able dict
CALLS: dict[str, Callable[..., dict[str, Any]]] = {
    "bench": _bench,  # edgecompress bench's protocol: one file, or several side by side
    "latency": _latency,  # measure_latency of one file
    "p50s": _p50s,  # round_robin_p50 of several files
    "layer_times": _layer_times,  # kernel ms per compute node
    "info": lambda files: {},
    "dirs": _dirs,  # the directories the files are copied into
}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    kw = dict(job.get("kwargs", {}))
    if kw.get("input_shape") is not None:
        kw["input_shape"] = tuple(kw["input_shape"])
    result = CALLS[job["call"]]([Path(f) for f in job.get("files", [])], **kw)
    return {"result": result, "device": device_info()}


def serve(lines: Any, out: Any) -> None:
    """Answers the jobs of ``lines`` (JSON, one a line; ``{"call": "exit"}`` ends) on ``out``."""
    for line in lines:
        if not line.strip():
            continue
        job = json.loads(line)
        if job.get("call") == "exit":
            return
        try:
            res = run_job(job)
        except BadInput as e:
            res = {"error": str(e)}
        out.write(f"{MARKER}\n{json.dumps(res)}\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
