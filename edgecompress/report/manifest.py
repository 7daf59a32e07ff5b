"""The record of a run: versions, CPU, config, seeds, per-artifact metrics and lineage.

Everything a run measures lands in ``manifest.json``; ``report.md`` is generated from it
(``report.render``), so ``edgecompress report DIR`` can regenerate it at any time. The records are
dataclasses; ``Manifest.to_dict()`` gives the JSON (with ``schema`` and ``schema_version``).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import BadInput

SCHEMA = "edgecompress-manifest/1"
SCHEMA_VERSION = 1  # bump when a key changes meaning
ARTIFACT_ORDER = ("original", "pruned", "int8")


@dataclass(kw_only=True)
class Gate:
    """A verification gate: ``value`` against ``bound``."""

    name: str
    value: float
    bound: float
    passed: bool
    artifact: str | None = None  # the artifact the gate judges, when it judges one (it fails with it)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "value": self.value, "bound": self.bound, "passed": self.passed}
        return d | ({"artifact": self.artifact} if self.artifact else {})


@dataclass(kw_only=True)
class Artifact:
    """One ONNX file of the run, with its lineage (``parent``) and every figure measured on it."""

    path: str
    macs: int
    params: int
    parent: str | None
    status: str = "ok"  # ok | failed (a gate failed; the file carries .failed.onnx)
    parity: dict[str, Any] | None = None  # FP32 files: ONNX vs PyTorch
    checkpoint: str | None = None  # pruned: pruned.pt
    int8_op_fraction: float | None = None  # INT8 file: compute nodes that run as int8 kernels
    top1: float | None = None
    # per output, against the FP32 original under onnxruntime (runtime.fidelity): SNR, cosine, max-abs, ...
    fidelity: dict[str, dict[str, float]] | None = None
    metric: float | None = None  # the user's --metric on the eval set
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_mean: float | None = None
    # with --bench-on: device key (host name / CPU) -> {"p50_ms", "p90_ms", "mean_ms", "role"}, the
    # --bench-on device ("device", the latency_ms_* above) and the build host ("build host")
    latency_by_device: dict[str, dict[str, Any]] | None = None
    bytes: int | None = None
    sha256: str | None = None

    _OPTIONAL = ("parity", "checkpoint", "int8_op_fraction", "top1", "latency_by_device", "fidelity",
                 "metric")  # left out of the JSON when unset

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "macs": self.macs, "params": self.params, "parent": self.parent,
             "parity": self.parity, "status": self.status, "checkpoint": self.checkpoint,
             "int8_op_fraction": self.int8_op_fraction, "top1": self.top1, "fidelity": self.fidelity, "metric": self.metric,
             "latency_ms_p50": self.latency_ms_p50, "latency_ms_p90": self.latency_ms_p90,
             "latency_ms_mean": self.latency_ms_mean, "latency_by_device": self.latency_by_device,
             "bytes": self.bytes, "sha256": self.sha256}
        return {k: v for k, v in d.items() if not (k in self._OPTIONAL and v is None)}


@dataclass(kw_only=True)
class Manifest:
    status: str  # complete | failed
    command: str
    model: dict[str, Any]
    data: dict[str, Any]
    stages: list[str]
    artifacts: dict[str, Artifact]
    stage_results: dict[str, Any]
    gates: list[Gate]
    warnings: list[str]
    bench: dict[str, Any]
    versions: dict[str, str | None]
    cpu: dict[str, Any]
    config: dict[str, Any]
    seed: int
    timings_s: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    # the faster (p50 here) of the INT8 file and its FP32 parent; None without both
    fastest_artifact: str | None = None
    delivered_artifact: str | None = None  # the file the run names as its deliverable (--deliver); None if failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "status": self.status, "command": self.command,
            "delivered_artifact": self.delivered_artifact, "fastest_artifact": self.fastest_artifact,
            "model": self.model, "data": self.data, "stages": list(self.stages),
            "artifacts": {k: a.to_dict() for k, a in self.artifacts.items()},
            "stage_results": self.stage_results, "gates": [g.to_dict() for g in self.gates],
            "warnings": self.warnings, "bench": self.bench, "versions": self.versions, "cpu": self.cpu,
            "config": self.config, "seed": self.seed, "timings_s": self.timings_s, "wall_seconds": self.wall_seconds,
        }  # fmt: skip


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("torch-pruning", "torch_pruning"), ("onnxscript", "onnxscript"),
                      ("numpy", "numpy"), ("neural-compressor-pt", "neural_compressor"),
                      ("torchao", "torchao"), ("edgecompress", "edgecompress")):  # fmt: skip
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def load_manifest(out_dir: Path) -> dict[str, Any]:
    p = Path(out_dir) / "manifest.json"
    if not p.is_file():
        raise BadInput(f"{out_dir}: no manifest.json; pass the --out directory of an export run")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{p}: not valid JSON ({e}); re-run the export to regenerate it") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        schema = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise BadInput(f"{p}: not an edgecompress manifest (schema {schema!r}, expected {SCHEMA!r}); pass the "
                       "--out directory of an export run")
    if m.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise BadInput(f"{p}: manifest schema_version {m['schema_version']} is newer than this edgecompress reads "
                       f"({SCHEMA_VERSION}); upgrade edgecompress")
    missing = [k for k in ("artifacts", "cpu", "versions", "bench") if not isinstance(m.get(k), dict)]
    if missing:
        raise BadInput(f"{p}: incomplete manifest (no {', '.join(missing)}); re-run the export to regenerate it")
    return m


def command_line() -> str:
    return " ".join(["edgecompress", *sys.argv[1:]])
