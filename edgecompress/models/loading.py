"""Resolve what the user names as MODEL into an ``nn.Module`` with its weights.

MODEL is a zoo name, ``path/to/file.py:factory`` or ``package.module:factory``. A factory is
the user's own code and runs as such (documented). Weights are a state_dict loaded with
``torch.load(weights_only=True)``; a checkpoint that needs full unpickling can execute code,
so it is refused unless ``trust_checkpoint`` is set.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.config.inputs import ModelConfig
from edgecompress.errors import BadInput, one_line
from edgecompress.files import sha256_file
from edgecompress.models import zoo
from edgecompress.models.outputs import flatten
from edgecompress.runtime.outputs import OutputInfo

DEFAULT_MODEL = "resnet20"
# The shipped teachers are package data (pyproject.toml [tool.setuptools.package-data]), so a
# wheel or a non-editable install has them too: <name>.pt (a state_dict) + <name>.json (recipe,
# test top-1, sha256). Each zoo name listed here must find its files: a missing one is an error,
# never a silent random initialisation.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_TEACHERS = ("resnet20", "vgg7-small", "mobilenetv2-small")


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the architecture in another process (recorded with pruned checkpoints)."""

    kind: str  # "zoo" | "factory"
    ref: str  # zoo name or "file.py:fn" / "pkg.mod:fn"
    kwargs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(str(d["kind"]), str(d["ref"]), dict(d.get("kwargs", {})))


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    weights: str | None  # path of the loaded state_dict
    weights_sha256: str | None
    input_shape: tuple[int, int, int, int]
    num_classes: int  # axis 1 of the first output with one (a classifier's classes)
    classes: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ("logits",)  # the ONNX files' output names (models.outputs.flatten)
    outputs: tuple[OutputInfo, ...] = ()  # names, shapes and kinds, once inferred on the data (pipeline.inputs)


def build(spec: ModelSpec) -> nn.Module:
    if spec.kind == "zoo":
        return zoo.create_model(spec.ref, **spec.kwargs)
    fn = _import_factory(spec.ref)
    try:
        model = fn(**spec.kwargs)
    except Exception as e:  # the user's code: report, don't crash
        raise BadInput(f"factory {spec.ref} raised {type(e).__name__}: {one_line(e, 10_000)}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"factory {spec.ref} returned {type(model).__name__}, not a torch.nn.Module; make it "
                       "return the model")
    return model


def _import_factory(ref: str):
    mod_part, _, fn_name = ref.rpartition(":")
    if not mod_part or not fn_name:
        raise BadInput(f"model {ref!r}: expected a zoo name, path/to/file.py:factory or package.module:factory")
    if mod_part.endswith(".py"):
        path = Path(mod_part)
        if not path.is_file():
            raise BadInput(f"model {ref!r}: file {path} not found; check the path (relative to the current "
                           "directory)")
        name = f"_edgecompress_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BadInput(f"model {ref!r}: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise BadInput(f"importing {path} raised {type(e).__name__}: {one_line(e, 10_000)}; fix the module or "
                           "install what it imports") from None
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as e:
            raise BadInput(f"model {ref!r}: cannot import {mod_part} ({type(e).__name__}: {one_line(e, 10_000)})") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise BadInput(f"model {ref!r}: {mod_part} has no callable {fn_name!r}; name the function that "
                       "returns the model")
    return fn


def import_callable(ref: str, flag: str):
    """The function named by ``path/to/file.py:fn`` or ``package.module:fn`` (the user's code), for ``flag``."""
    try:
        return _import_factory(ref)
    except BadInput as e:
        raise BadInput(f"{flag} {ref}: {str(e).split(': ', 1)[-1]}") from None


def spec_for(name: str | None, num_classes: int | None) -> ModelSpec:
    name = name or DEFAULT_MODEL
    if ":" in name:
        return ModelSpec("factory", name, {})
    entry = zoo.get_entry(name)  # raises BadInput for unknown names
    return ModelSpec("zoo", entry.name, {"num_classes": num_classes or 10,
                                         "in_chans": entry.default_input[0]})


def load_state_dict_file(path: Path, *, trust: bool) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise BadInput(f"--weights {path}: no such file; check the path")
    if path.is_dir():
        raise BadInput(f"--weights {path}: is a directory; pass a .pt state_dict file")
    if path.stat().st_size == 0:
        raise BadInput(f"--weights {path}: file is empty; re-save it with torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        # weights_only refuses a pickled class/function ("Unsupported global: GLOBAL mod.Cls"):
        # that file is fine but loading it runs code. Anything else is a damaged or foreign file.
        glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        with open(path, "rb") as f:
            head = f.read(2)
        torch_file = head == b"PK" or head[:1] == b"\x80"  # torch.save zip archive or binary pickle
        if not trust and glob and torch_file:
            raise BadInput(
                f"--weights {path}: holds a pickled {glob.group(1)} object, which needs full unpickling "
                "(can run arbitrary code); save model.state_dict() instead, or pass --trust-checkpoint "
                "if you trust where the file came from"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]*\S)|(invalid load key[^\n]*)", str(e))
        detail_s = next((g for g in detail.groups() if g), "") if detail else one_line(e, 10_000)
        if not torch_file:
            detail_s = f"starts with {head!r}, not a zip archive or binary pickle"
        raise BadInput(f"--weights {path}: not a readable torch checkpoint (corrupt or not made by torch.save: "
                       f"{detail_s[:100]}); re-save it with torch.save(model.state_dict(), path)") from None
    except Exception as e:  # torch.load on a damaged file raises almost anything (KeyError, RuntimeError, ...)
        raise BadInput(f"--weights {path}: not a readable torch checkpoint ({type(e).__name__}: "
                       f"{one_line(e, 10_000).split('. ')[0][:160]}); re-save it with torch.save(model.state_dict(), "
                       "path)") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"--weights {path}: not a state_dict (a dict of tensors); save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    wrong = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or wrong:
        parts = []
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{k} has shape {list(got)}, the model expects {list(want)}"
                         + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        if missing:
            parts.append(f"missing {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected {extra[0]}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
        raise BadInput(f"{where}: state_dict does not fit the model: {'; '.join(parts)}; "
                       "check that MODEL and --weights belong together")
    model.load_state_dict(sd, strict=True)


def shipped_checkpoint(name: str) -> tuple[Path, dict[str, Any]] | None:
    """The shipped teacher of zoo model ``name`` (state_dict path, sidecar), None for a zoo model
    that ships none; BadInput when it should ship one and its files are not in this install."""
    if name not in SHIPPED_TEACHERS:
        return None
    pt, side = WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.json"
    if not (pt.is_file() and side.is_file()):
        missing = pt if not pt.is_file() else side
        raise BadInput(f"zoo model {name} ships trained weights, but {missing} is missing from this install; "
                       "reinstall edgecompress (a wheel or `pip install .` includes them) or pass --weights FILE")
    return pt, json.loads(side.read_text())


def load_model(cfg: ModelConfig, data_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Builds the model, loads weights, settles the input shape and checks that it runs."""
    spec = spec_for(cfg.name, cfg.num_classes)
    model = build(spec)
    weights = cfg.weights
    sidecar: dict[str, Any] = {}
    if weights is None and spec.kind == "zoo":
        shipped = shipped_checkpoint(spec.ref)
        if shipped is not None:
            weights, sidecar = str(shipped[0]), shipped[1]
            if sha256_file(shipped[0]) != sidecar.get("sha256"):
                raise BadInput(f"{shipped[0]}: sha256 does not match {spec.ref}.json; reinstall edgecompress or "
                               "restore the file from git")
    sha = None
    if weights is not None:
        sd = load_state_dict_file(Path(weights), trust=cfg.trust_checkpoint)
        apply_state_dict(model, sd, f"--weights {weights}")
        sha = sha256_file(Path(weights))
    model.eval()

    if cfg.input_shape is not None:
        shape = tuple(cfg.input_shape)
    elif data_shape is not None:
        shape = (1, *data_shape)
    elif spec.kind == "zoo":
        shape = (1, *zoo.get_entry(spec.ref).default_input)
    else:
        raise BadInput(f"model {spec.ref}: pass --input-shape N,C,H,W (no data to infer it from)")
    names, outs = flatten(probe(model, shape))
    if any(o.ndim == 0 or o.shape[0] != shape[0] for o in outs):
        bad = next(n for n, o in zip(names, outs, strict=True) if o.ndim == 0 or o.shape[0] != shape[0])
        raise BadInput(f"model output {bad} has no batch dimension (input batch {shape[0]}); return outputs "
                       "with the batch as dimension 0")
    num_classes = next((int(o.shape[1]) for o in outs if o.ndim >= 2), 1)
    classes = tuple(sidecar.get("classes", ()))
    return LoadedModel(model, spec, weights, sha, shape, num_classes, classes, names)  # type: ignore[arg-type]


@torch.no_grad()
def probe(model: nn.Module, shape: tuple[int, ...]) -> Any:
    if len(shape) != 4:
        raise BadInput(f"--input-shape {','.join(map(str, shape))}: expected N,C,H,W")
    try:
        out = model(torch.zeros(shape))
    except Exception as e:
        raise BadInput(
            f"input shape {','.join(map(str, shape))} does not fit the model ({type(e).__name__}: "
            f"{one_line(e, 10_000)[:200]}); pass the right --input-shape N,C,H,W"
        ) from None
    flatten(out)  # a tensor, a tuple/list or a dict of tensors; BadInput names anything else
    return out
