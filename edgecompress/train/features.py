"""Feature KD (FitNets-style hints): the student's intermediate features are pulled towards the
teacher's at named modules, on top of the logit KD loss.

    loss = kd_loss(logits) + feature_weight * mean_i MSE(adapter_i(student_i), teacher_i)

Features are captured with forward hooks on modules that exist under the same name in both
models (``layer1``, ``layer2.0``, ...). Pruning changes channel counts, so where the student has
fewer channels a 1x1 convolution (a linear layer for 2-D features) maps them to the teacher's;
it is trained with the student and discarded afterwards. Spatial sizes must agree (channel
pruning never changes them).
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import BadInput


def _output(o: object) -> torch.Tensor:
    return o[0] if isinstance(o, (tuple, list)) else o  # type: ignore[return-value]


class FeatureHints:
    """Hooks + adapters for feature KD. Use as a context manager around training."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: tuple[str, ...], example: torch.Tensor):
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        common = [n for n in s_mods if n and n in t_mods]
        for name in names:
            if name not in s_mods or name not in t_mods:
                close = difflib.get_close_matches(name, common, n=5, cutoff=0.5) or common[:5]
                raise BadInput(f"--kd-features {name}: no module of that name in both teacher and student; "
                               f"close names: {', '.join(close)}")  # fmt: skip
        self.names = tuple(names)
        self._mods = [(s_mods[n], t_mods[n]) for n in self.names]
        self._s: dict[str, torch.Tensor] = {}
        self._t: dict[str, torch.Tensor] = {}
        self._handles: list = []
        shapes_s, shapes_t = self._shapes(student, example, 0), self._shapes(teacher, example, 1)
        self.adapters = nn.ModuleDict()
        self.record: list[dict] = []
        for n in self.names:
            s, t = shapes_s[n], shapes_t[n]
            if len(s) != len(t) or s[2:] != t[2:] or len(s) not in (2, 4):
                raise BadInput(
                    f"--kd-features {n}: student output {list(s)} and teacher output {list(t)} do not "
                    "line up (need N,C[,H,W] with equal H,W); choose a block output such as layer1"
                )
            if s[1] != t[1]:
                a: nn.Module = (
                    nn.Conv2d(s[1], t[1], 1, bias=False) if len(s) == 4 else nn.Linear(s[1], t[1], bias=False)
                )
            else:
                a = nn.Identity()
            self.adapters[self._key(n)] = a
            self.record.append({"name": n, "student_channels": s[1], "teacher_channels": t[1],
                                "adapter": isinstance(a, (nn.Conv2d, nn.Linear))})  # fmt: skip

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _shapes(self, model: nn.Module, example: torch.Tensor, which: int) -> dict[str, torch.Size]:
        out: dict[str, torch.Size] = {}
        hs = [pair[which].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, _output(o).shape))
              for n, pair in zip(self.names, self._mods, strict=True)]  # fmt: skip
        was = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(example[:1])
        finally:
            model.train(was)
            for h in hs:
                h.remove()
        return out

    def __enter__(self) -> FeatureHints:
        for n, (s, t) in zip(self.names, self._mods, strict=True):
            self._handles.append(s.register_forward_hook(lambda m, i, o, n=n: self._s.__setitem__(n, _output(o))))
            self._handles.append(t.register_forward_hook(lambda m, i, o, n=n: self._t.__setitem__(n, _output(o))))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._s.clear()
        self._t.clear()

    def loss(self) -> torch.Tensor:
        """Mean over the hints of MSE(adapter(student feature), teacher feature) for the last
        forward passes of both models."""
        losses = [F.mse_loss(self.adapters[self._key(n)](self._s[n]), self._t[n].detach()) for n in self.names]
        self._s.clear()
        self._t.clear()
        return torch.stack(losses).mean()
