"""Per-layer pruning sensitivity: which layer groups can take how much?

For every prunable group of the dependency graph (a root conv/linear and everything coupled to
it), prune *only that group* at several channel ratios and measure top-1 on the validation
split (part of the training data, never the evaluation set) without fine-tuning. The table and
plot show where pruning is cheap and where it hurts; ``edgecompress sensitivity`` writes
``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.config import Importance, PruneConfig
from edgecompress.data.dataset import Dataset
from edgecompress.errors import BadInput
from edgecompress.files import atomic_write, atomic_write_text
from edgecompress.prune.channels import output_layers
from edgecompress.prune.importance import importance
from edgecompress.prune.tp_adapter import count_macs_params, group_aware_pruner
from edgecompress.train.loop import top1

BASE_RATIOS = (0.25, 0.5, 0.75)


def ratios_up_to(cap: float, base: tuple[float, ...] = BASE_RATIOS) -> tuple[float, ...]:
    """The ratios to measure for an allocation that may thin a layer by up to ``cap`` (PruneConfig's
    max_layer_ratio): the base ratios below the cap, and the cap itself. The allocation never goes
    past the largest ratio measured, so a table that stops short of the cap caps every group there
    (0.75 instead of the pruner's 0.9), and a high target that uniform pruning meets is out of reach."""
    return (*(r for r in base if r < cap - 1e-9), cap)


@dataclass(frozen=True, kw_only=True)
class SensitivityConfig:
    ratios: tuple[float, ...] = ratios_up_to(PruneConfig().max_layer_ratio)  # (0.25, 0.5, 0.75, 0.9)
    importance: Importance = Importance.L2
    round_to: int = 1


def _top1_on(model: nn.Module, val: Dataset, device: str) -> float:
    if device == "cpu":
        return top1(model, val)
    try:
        return top1(model.to(device), val)
    finally:
        model.cpu()


def sensitivity(model: nn.Module, example: torch.Tensor, val: Dataset, cfg: SensitivityConfig,
                *, progress=lambda msg: None, device: str = "cpu") -> dict[str, Any]:
    """Top-1 on ``val`` (computed on ``device``) after pruning each layer group alone at each ratio."""
    import torch_pruning as tp

    if val.y is None:
        raise BadInput("sensitivity needs labelled data (y) to measure accuracy")
    model = model.eval()
    macs0, _ = count_macs_params(model, example)
    base = _top1_on(model, val, device)
    heads = output_layers(model, example)
    dg = tp.DependencyGraph().build_dependency(model, example)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for g in dg.get_all_groups(ignored_layers=heads, root_module_types=[nn.Conv2d, nn.Linear]):
        root = g[0].dep.target.module
        members = sorted({names[d.target.module] for d, _ in g if d.target.module in names and
                          isinstance(d.target.module, (nn.Conv2d, nn.Linear))})
        groups.append((names[root], members))
    rows = []
    for i, (root, members) in enumerate(groups):
        for r in cfg.ratios:
            m = copy.deepcopy(model)
            target = dict(m.named_modules())[root]
            ignored = [dict(m.named_modules())[names[h]] for h in heads]
            pruner = group_aware_pruner(m, example, importance=importance(cfg.importance), pruning_ratio=0.0,
                                        pruning_ratio_dict={target: r}, ignored_layers=ignored,
                                        round_to=cfg.round_to if cfg.round_to > 1 else None)
            pruner.step()
            macs, _ = count_macs_params(m, example)
            acc = _top1_on(m, val, device)
            rows.append({"group": root, "members": members, "ratio": r, "macs_removed": 1 - macs / macs0,
                         "top1": acc, "drop_points": 100 * (base - acc)})
        progress(f"[{i + 1}/{len(groups)}] {root}: drop at {cfg.ratios[-1]:.0%} = {rows[-1]['drop_points']:.2f} points")
    return {"base_top1": base, "val_samples": len(val), "ratios": list(cfg.ratios),
            "importance": str(cfg.importance), "rows": rows}


def write_outputs(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sensitivity.json", json.dumps(res, indent=2) + "\n")
    ratios = res["ratios"]
    by_group: dict[str, dict[float, dict]] = {}
    for r in res["rows"]:
        by_group.setdefault(r["group"], {})[r["ratio"]] = r
    lines = [f"Validation top-1 unpruned: {res['base_top1']:.4f} ({res['val_samples']} samples, "
             f"{res['importance']} importance, no fine-tuning). Cells: top-1 drop in points (MACs removed).", "",
             "| group | " + " | ".join(f"{r:.0%} of channels" for r in ratios) + " |",
             "|---|" + "---:|" * len(ratios)]
    for g, cells in by_group.items():
        lines.append(f"| {g} | " + " | ".join(f"{cells[r]['drop_points']:.2f} ({cells[r]['macs_removed']:.1%})"
                                               for r in ratios) + " |")
    atomic_write_text(out / "sensitivity.md", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(by_group) + 2))
    ys = range(len(by_group))
    for r in ratios:
        ax.barh([y + 0.8 * ratios.index(r) / len(ratios) for y in ys],
                [by_group[g][r]["drop_points"] for g in by_group], height=0.8 / len(ratios), label=f"{r:.0%}")
    ax.set_yticks([y + 0.4 * (len(ratios) - 1) / len(ratios) for y in ys], list(by_group))
    ax.invert_yaxis()
    ax.set_xlabel("top-1 drop (points) when only this group is pruned")
    ax.legend(title="channels removed")
    fig.tight_layout()
    atomic_write(out / "sensitivity.png", lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return [out / "sensitivity.json", out / "sensitivity.md", out / "sensitivity.png"]
