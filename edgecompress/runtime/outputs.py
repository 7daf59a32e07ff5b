"""What a model's outputs are: their names and their kinds (numpy only).

A model may return one tensor, a tuple/list or a dict of tensors of any shape. The ONNX files
name their outputs: a dict's keys, else ``output_0..k``; a single tensor keeps ``logits`` (the
name every classifier file has always had). Each output has a kind, which decides how it is
distilled (``edgecompress.train``) and how its fidelity is measured (``runtime.fidelity``):

* ``logits``: class scores (argmax = the class), channel axis 1;
* ``sigmoid``: per-class probabilities already through a sigmoid (multi-label);
* ``softmax``: class probabilities already through a softmax (rows sum to 1);
* ``dense``: per-pixel class logits, (N, C, H, W): segmentation;
* ``regression``: anything else: boxes, embeddings, depth, features.

The kind is inferred from the values the model gives on the data (``infer_kind``) and can be set
per output (``--output-kind NAME=KIND``); the manifest records which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from edgecompress.errors import BadInput

SINGLE_OUTPUT_NAME = "logits"  # the one output of a single-tensor model
INPUT_NAME = "input"


class OutputKind(StrEnum):
    LOGITS = "logits"
    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"
    DENSE = "dense"
    REGRESSION = "regression"


# names that say "not class scores" when a 2-D output's values cannot (boxes and embeddings are real numbers)
_REGRESSION_HINTS = ("box", "bbox", "reg", "coord", "loc", "offset", "embed", "feat", "depth", "vector", "kpt",
                     "keypoint", "landmark", "pose")


@dataclass(frozen=True)
class OutputInfo:
    """One output of the model: its name in the ONNX files, per-sample shape, kind and why."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    kind: OutputKind
    source: str  # "inferred" | "set" (--output-kind / recipe)
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "kind": str(self.kind), "source": self.source,
                "why": self.why}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputInfo:
        return cls(str(d["name"]), tuple(d["shape"]), OutputKind(d["kind"]), str(d["source"]), str(d["why"]))


def output_names(n: int, keys: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """ONNX output names: the dict's keys, else ``output_0..k``; one tensor is ``logits``."""
    if keys is not None:
        return tuple(keys)
    return (SINGLE_OUTPUT_NAME,) if n == 1 else tuple(f"output_{i}" for i in range(n))


def infer_kind(a: np.ndarray, name: str, only: bool) -> tuple[OutputKind, str]:
    """The kind of an output from its values on some samples (``a`` with the batch dimension).
    ``only``: the model's single output (a 2-D one is then a classifier's logits, as it always was)."""
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    in_unit = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
    if a.ndim < 2 or a.shape[1] == 1:
        return OutputKind.REGRESSION, f"shape {list(a.shape[1:])}: one value per sample, no class axis"
    if in_unit:
        sums = a.sum(axis=1)
        if np.allclose(sums, 1.0, atol=1e-3):
            return OutputKind.SOFTMAX, "values in [0, 1] summing to 1 over axis 1"
        return OutputKind.SIGMOID, "values in [0, 1] not summing to 1 over axis 1 (per-class probabilities)"
    if a.ndim == 4:
        return OutputKind.DENSE, f"shape [N, {a.shape[1]}, {a.shape[2]}, {a.shape[3]}] with unbounded values: " \
                                 "per-pixel class logits"
    low = name.lower()
    hint = next((h for h in _REGRESSION_HINTS if h in low), None)
    if hint is not None:
        return OutputKind.REGRESSION, f"name {name!r} contains {hint!r}"
    if a.ndim == 2:
        return OutputKind.LOGITS, "the model's only output, [N, classes]" if only else \
            "[N, C] with unbounded values: class logits"
    return OutputKind.REGRESSION, f"shape {list(a.shape[1:])} with unbounded values"


def parse_kind_overrides(entries: tuple[str, ...], names: tuple[str, ...]) -> dict[str, OutputKind]:
    """``NAME=KIND`` entries (``--output-kind``, recipe ``[model] output_kinds``) -> {name: kind};
    a bare ``KIND`` names the model's only output."""
    out: dict[str, OutputKind] = {}
    kinds = ", ".join(k.value for k in OutputKind)
    for e in entries:
        name, sep, kind = e.rpartition("=")
        if not sep:
            if len(names) != 1:
                raise BadInput(f"--output-kind {e}: the model has {len(names)} outputs ({', '.join(names)}); "
                               "write NAME=KIND")
            name = names[0]
        if name not in names:
            raise BadInput(f"--output-kind {e}: the model has no output {name!r}; its outputs are "
                           f"{', '.join(names)}")
        try:
            out[name] = OutputKind(kind)
        except ValueError:
            raise BadInput(f"--output-kind {e}: unknown kind {kind!r}; use one of {kinds}") from None
    return out


def describe_outputs(names: tuple[str, ...], arrays: list[np.ndarray],
                     overrides: dict[str, OutputKind] | None = None) -> tuple[OutputInfo, ...]:
    """The OutputInfo of every output, from its values on some samples and the user's overrides."""
    overrides = overrides or {}
    infos = []
    for name, a in zip(names, arrays, strict=True):
        if name in overrides:
            kind, source, why = overrides[name], "set", "--output-kind"
        else:
            kind, why = infer_kind(a, name, only=len(names) == 1)
            source = "inferred"
        if kind == OutputKind.DENSE and a.ndim < 3:
            raise BadInput(f"--output-kind {name}=dense: output {name} has shape {list(a.shape)}; dense needs "
                           "[N, C, H, W] (per-pixel classes)")
        if kind in (OutputKind.LOGITS, OutputKind.SOFTMAX, OutputKind.SIGMOID) and (a.ndim < 2 or a.shape[1] < 2):
            raise BadInput(f"--output-kind {name}={kind}: output {name} has shape {list(a.shape)}; class outputs "
                           "need a class axis 1 of size >= 2")
        infos.append(OutputInfo(name, tuple(int(d) for d in a.shape[1:]), kind, source, why))
    return tuple(infos)


def is_classifier(infos: tuple[OutputInfo, ...]) -> bool:
    """One output of single-label class scores [N, C] (logits or softmax): top-1 against integer
    labels applies, as it always has. Sigmoid (multi-label) outputs are gated on fidelity instead."""
    return len(infos) == 1 and infos[0].kind in (OutputKind.LOGITS, OutputKind.SOFTMAX) and len(infos[0].shape) == 1
