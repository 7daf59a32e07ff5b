"""Pruned checkpoints: the original model's factory + the pruning record + weights.

``pruned.pt`` is a dict of strings and tensors, so ``torch.load(weights_only=True)`` reads it
and no pickled code ever runs. The architecture is rebuilt by calling the original factory
(zoo name or ``file.py:factory``) and reshaping the modules named in the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from edgecompress.errors import BadInput


def load_pruned(path: str | Path, *, factory: str | None = None) -> nn.Module:
    import pickle

    import torch

    from edgecompress.models import ModelSpec, build
    from edgecompress.prune import FORMAT, apply_record

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: no such pruned checkpoint")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise BadInput(f"{p}: not a readable pruned checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise BadInput(f"{p}: not an edgecompress pruned checkpoint (format {FORMAT} expected)")
    spec = ModelSpec.from_dict(json.loads(ck["spec"]))
    if factory is not None:
        spec = ModelSpec("factory" if ":" in factory else "zoo", factory, spec.kwargs if ":" not in factory else {})
    model = build(spec)
    return apply_record(model, json.loads(ck["record"]), ck["state_dict"])
