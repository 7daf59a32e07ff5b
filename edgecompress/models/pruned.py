"""Pruned checkpoints: the original model's factory + the pruning record + weights, in one place.

``pruned.pt`` is a dict of strings and tensors, so ``torch.load(weights_only=True)`` reads it
and no pickled code ever runs. The architecture is rebuilt by calling the original factory
(zoo name or ``file.py:factory``) and reshaping the modules named in the record
(``structural_record``: module name -> changed structural attributes, or ``removed`` for a
residual block that depth pruning replaced by the identity). Split sizes a module keeps as a
list next to the layers they feed follow those layers' input channels (:class:`SplitSizes`).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import BadInput, one_line
from edgecompress.files import atomic_write_bytes
from edgecompress.models.loading import ModelSpec, apply_state_dict, build

FORMAT = "edgecompress-pruned/1"

# Module attributes that describe structure; the pruning record stores the changed ones.
STRUCT_ATTRS = (
    "in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
    "num_channels", "num_groups", "normalized_shape", "embed_dim", "num_heads",
)  # fmt: skip



class SplitSizes:
    """Split sizes a model holds as a plain list next to the layers they feed, kept equal to
    those layers' input channels as pruning changes them.

    A mixed-kernel conv (timm's ``MixedConv2d`` in MixNet, MixConv-style blocks) splits its input
    with ``torch.split(x, self.splits, 1)`` and runs one conv per chunk. Torch-Pruning follows
    the split in the traced graph and prunes each chunk's conv correctly, but the list in the
    module stays at the old sizes and the next forward fails. Found before pruning: a module
    attribute that is a list (or tuple) of ints equal, in order, to the ``in_channels`` of the
    module's child layers (at least two). :meth:`sync` rewrites each such list from the
    children's current ``in_channels``; names, not objects, so it applies to scratch copies."""

    def __init__(self, model: nn.Module) -> None:
        self.found: list[tuple[str, str, list[str]]] = []  # (module, attribute, child layers)
        for name, m in model.named_modules():
            kids = [(k, c) for k, c in m.named_children() if isinstance(getattr(c, "in_channels", None), int)]
            if len(kids) < 2:
                continue
            sizes = [c.in_channels for _, c in kids]
            for attr, v in vars(m).items():
                if (not attr.startswith("_") and isinstance(v, (list, tuple)) and len(v) == len(kids)
                        and all(type(i) is int for i in v) and list(v) == sizes):
                    self.found.append((name, attr, [k for k, _ in kids]))

    def sync(self, model: nn.Module) -> None:
        for name, attr, kids in self.found:
            m = model.get_submodule(name)
            old = getattr(m, attr)
            setattr(m, attr, type(old)(m.get_submodule(k).in_channels for k in kids))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Puts ``new`` where the submodule ``name`` (dotted path) was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)



def structural_record(original: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    before, record = dict(original.named_modules()), {}
    for name, m in pruned.named_modules():
        o = before.get(name)
        if o is None:
            continue
        if isinstance(m, nn.Identity) and not isinstance(o, nn.Identity):
            record[name] = {"removed": True}  # depth pruning: the block is the identity now
            continue
        changed = {}
        for a in STRUCT_ATTRS:
            if hasattr(m, a) and getattr(m, a) != getattr(o, a, None):
                v = getattr(m, a)
                changed[a] = list(v) if isinstance(v, tuple) else v
        if changed:
            record[name] = changed
    return record


def apply_record(model: nn.Module, record: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Reshapes a freshly built ``model`` to the pruned structure and loads ``state_dict``."""
    splits = SplitSizes(model)  # found on the model as built, rewritten once it is reshaped
    mods = dict(model.named_modules())
    for name in sorted(n for n, a in record.items() if a == {"removed": True}):
        if name not in mods:
            raise BadInput(f"pruning record removes module {name!r} the model does not have; "
                           "was the checkpoint made from another model?")
        replace_module(model, name, nn.Identity())
    mods = dict(model.named_modules())
    for name, attrs in record.items():
        if attrs == {"removed": True}:
            continue
        if name not in mods:
            raise BadInput(f"pruning record names module {name!r} the model does not have; "
                           "was the checkpoint made from another model?")
        for a, v in attrs.items():
            if a not in STRUCT_ATTRS:
                raise BadInput(f"pruning record has unsupported attribute {a!r}")
            setattr(mods[name], a, tuple(v) if isinstance(v, list) else v)
    splits.sync(model)
    for key, t in state_dict.items():
        mod_name, _, attr = key.rpartition(".")
        mod = mods.get(mod_name)
        if mod is None:
            continue  # reported by load_state_dict below
        if attr in mod._parameters and mod._parameters[attr] is not None:
            if mod._parameters[attr].shape != t.shape:
                mod._parameters[attr] = nn.Parameter(torch.empty_like(t), requires_grad=mod._parameters[attr].requires_grad)
        elif attr in mod._buffers and mod._buffers[attr] is not None:
            if mod._buffers[attr].shape != t.shape:
                mod._buffers[attr] = torch.empty_like(t)
    apply_state_dict(model, state_dict, "pruned checkpoint")
    return model.eval()



def save_pruned(path: Path, spec: ModelSpec, input_shape: tuple[int, ...], model: nn.Module,
                record: dict[str, dict[str, Any]]) -> None:
    """Writes ``pruned.pt`` atomically: format, factory spec, record, input shape and weights."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "spec": json.dumps(spec.to_dict()), "record": json.dumps(record),
                "input_shape": list(input_shape),
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_pruned(path: str | Path, *, factory: str | None = None) -> nn.Module:
    """Rebuilds a pruned model from ``pruned.pt`` without unpickling arbitrary objects; ``factory``
    names another factory for the same architecture (a zoo name or file.py:factory)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: no such pruned checkpoint")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise BadInput(f"{p}: not a readable pruned checkpoint ({one_line(e, 200)})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise BadInput(f"{p}: not an edgecompress pruned checkpoint (format {FORMAT} expected)")
    spec = ModelSpec.from_dict(json.loads(ck["spec"]))
    if factory is not None:
        spec = ModelSpec("factory" if ":" in factory else "zoo", factory, spec.kwargs if ":" not in factory else {})
    model = build(spec)
    return apply_record(model, json.loads(ck["record"]), ck["state_dict"])
