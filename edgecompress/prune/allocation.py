"""Per-layer pruning ratios from a sensitivity table (``--allocation sensitivity``).

The table (``edgecompress sensitivity``, or measured by ``export`` on the validation split) gives,
per prunable group, the top-1 drop when only that group loses 25/50/75/90 % of its channels. For a
global *drop budget* B each group gets the largest channel ratio whose (interpolated) drop stays
within B; B is bisected until the MACs/params target is met, so cheap groups are thinned first and
sensitive ones last. Each trial prunes a copy once with Torch-Pruning's ``pruning_ratio_dict``
(exact MACs, not an additive estimate: pruning two neighbouring groups compounds).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import BadInput
from edgecompress.prune.importance import accumulate_taylor_grads, importance, needs_gradients
from edgecompress.prune.tp_adapter import count_macs_params, group_aware_pruner, tp_errors

BISECT_ITERS = 14  # budget resolution: (max drop) / 2**14


def load_table(path: str | Path) -> dict[str, Any]:
    """A ``sensitivity.json``; one-line errors for what a user can get wrong."""
    p = Path(path)
    try:
        table = json.loads(p.read_text())
        rows = table["rows"]
        for r in rows:
            str(r["group"]), float(r["ratio"]), float(r["drop_points"])
    except FileNotFoundError:
        raise BadInput(f"--sensitivity {p}: no such file; write one with `edgecompress sensitivity MODEL`") from None
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"--sensitivity {p}: not a sensitivity table (expected the sensitivity.json "
                       "written by `edgecompress sensitivity`)") from None
    return table


def drop_curves(table: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """group -> (ratios, drops) from (0, 0), drops made non-decreasing (a running max: measurement
    noise must not make a larger cut look cheaper than a smaller one)."""
    by_group: dict[str, dict[float, float]] = {}
    for r in table["rows"]:
        by_group.setdefault(r["group"], {})[float(r["ratio"])] = float(r["drop_points"])
    curves = {}
    for g, pts in by_group.items():
        ratios = [0.0, *sorted(pts)]
        drops = list(np.maximum.accumulate([0.0, *(max(0.0, pts[r]) for r in ratios[1:])]))
        curves[g] = (ratios, [float(d) for d in drops])
    return curves


def ratio_for_budget(ratios: list[float], drops: list[float], budget: float) -> float:
    """The largest ratio whose piecewise-linear drop is <= budget (drops non-decreasing, drops[0] = 0)."""
    for k in range(1, len(ratios)):
        if drops[k] > budget:  # drops[k - 1] <= budget < drops[k]: interpolate on this segment
            return ratios[k - 1] + (budget - drops[k - 1]) / (drops[k] - drops[k - 1]) * (ratios[k] - ratios[k - 1])
    return ratios[-1]


def allocate(curves: dict[str, tuple[list[float], list[float]]], budget: float, cap: float) -> dict[str, float]:
    return {g: min(cap, ratio_for_budget(r, d, budget)) for g, (r, d) in curves.items()}


class TableMatch(NamedTuple):
    """The table matched to a model's prunable groups: ``curves`` by this model's group roots;
    ``inherited``: new root -> the table group (root gone with a dropped block) whose curve it took;
    ``missing``: roots with no curve in the table (left whole: not measured, or more than one
    table group could be theirs)."""

    curves: dict[str, tuple[list[float], list[float]]]
    inherited: dict[str, str]
    missing: list[str]


def table_curves_for(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module],
                     table: dict[str, Any]) -> TableMatch:
    """The table's drop curves keyed by the root layers of *this* model's prunable groups.

    Torch-Pruning takes a group's ratio from its root only (the first layer of the group), and a
    table measured on the full model names the roots of the full model. After ``--drop-blocks`` a
    residual stage's coupled group may have lost its root with the dropped block: it then has a
    new root, which the table lists only as a member of that group. Such a group gets the curve
    of the table's group whose root is gone and whose members include the new root; matched by
    root name alone, it was never pruned, and the other groups were thinned to make up for it."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example)
    roots = [names[g[0].dep.target.module] for g in
             dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])]
    curves = drop_curves(table)
    members = {r["group"]: set(r.get("members") or ()) for r in table["rows"]}
    orphans = [g for g in curves if g not in roots]  # table groups whose root this model does not prune
    out, inherited, missing = {}, {}, []
    for root in roots:
        if root in curves:
            out[root] = curves[root]
            continue
        heirs = [g for g in orphans if root in members[g]]
        if len(heirs) == 1:
            out[root], inherited[root] = curves[heirs[0]], heirs[0]
        else:
            missing.append(root)
    return TableMatch(out, inherited, missing)


def prune_by_sensitivity(model: nn.Module, example: torch.Tensor, cfg, ignored: list[nn.Module], done, table,
                         calib_x=None, calib_y=None, device: str = "cpu") -> tuple[nn.Module, float, bool, dict[str, Any]]:
    """Returns (pruned copy, mean group ratio, True, allocation record), or BadInput when even the
    largest measured ratios miss the target. ``done`` is prune's MACs or params criterion."""
    names = {m: n for n, m in model.named_modules()}
    match = table_curves_for(model, example, ignored, table)
    curves = match.curves
    if not curves:
        raise BadInput("the sensitivity table names no prunable layer of this model (measured on another model?); "
                       "re-run `edgecompress sensitivity MODEL` or drop --sensitivity to measure it here")

    def trial(budget: float) -> tuple[nn.Module, dict[str, float], bool]:
        m = copy.deepcopy(model)
        mods = dict(m.named_modules())
        # Torch-Pruning keeps int(C * (1 - r)) channels, so any r > 0 cuts at least one: round each ratio
        # down to whole channels of the group's root (a hair below k / C so that int() keeps C - k).
        # torch-pruning 1.6 rounds the kept count *down* to a multiple of round-to and, when that leaves
        # 0 channels, skips the group: a ratio that keeps fewer than round-to channels left the group whole
        # (so a high target was out of reach). Keep at least round-to channels instead.
        ratios, rt = {}, max(cfg.round_to, 1)
        for g, r in allocate(curves, budget, cfg.max_layer_ratio).items():
            c = getattr(mods[g], "out_channels", getattr(mods[g], "out_features", 0))
            k = min(int(r * c + 1e-9), c - min(c, rt))
            if k > 0:
                ratios[g] = (k - 1e-6) / c
        if needs_gradients(cfg.importance):
            accumulate_taylor_grads(m, calib_x, calib_y, cfg.taylor_batches, device)
        with tp_errors("prune", "leave the offending layer out with --ignore NAME"):
            pruner = group_aware_pruner(
                m, example, importance=importance(cfg.importance), pruning_ratio=0.0,
                pruning_ratio_dict={mods[g]: r for g, r in ratios.items()},
                max_pruning_ratio=cfg.max_layer_ratio, ignored_layers=[mods[names[i]] for i in ignored if i in names],
                round_to=cfg.round_to if cfg.round_to > 1 else None)
            pruner.step()
        macs, params = count_macs_params(m, example)
        return m, ratios, done(m, macs, params)

    hi = max(max(d) for _, d in curves.values())
    best = trial(hi)
    if not best[2]:
        top = max(r[-1] for r, _ in curves.values())
        removed = 1 - count_macs_params(best[0], example)[0] / count_macs_params(model, example)[0]
        way_out = (f"measure larger ratios (edgecompress sensitivity --ratios 0.25,0.5,0.75,{cfg.max_layer_ratio:g}) "
                   "or lower the target" if top < cfg.max_layer_ratio - 1e-9 else
                   "lower the target, drop residual blocks (--drop-blocks N) or use a smaller --round-to")
        raise BadInput(f"cannot reach the target with the sensitivity table: every group at its largest measured "
                       f"ratio (up to {top:.0%} of its channels) removes {removed:.1%} of MACs; {way_out}")
    lo_b, hi_b = 0.0, hi
    low = trial(0.0)
    if low[2]:
        best, hi_b = low, 0.0
    else:
        for _ in range(BISECT_ITERS):
            mid = (lo_b + hi_b) / 2
            t = trial(mid)
            if t[2]:
                best, hi_b = t, mid
            else:
                lo_b = mid
    m, ratios, _ = best
    ratios = {g: ratios.get(g, 0.0) for g in curves}  # groups the budget left whole: 0
    return m, float(np.mean(list(ratios.values()))), True, _record(ratios, hi_b, table, match)


def _record(ratios: dict[str, float], budget: float, table: dict[str, Any], match: TableMatch) -> dict[str, Any]:
    return {"method": "sensitivity", "drop_budget_points": round(budget, 4),
            "base_top1": table.get("base_top1"), "table_importance": table.get("importance"),
            "group_ratios": {g: round(r, 4) for g, r in ratios.items()},
            "inherited_curves": match.inherited, "groups_without_curve": match.missing}


def missing_warning(missing: list[str]) -> str:
    """The manifest's warning when the table had no curve for some of the pruned model's groups."""
    return (f"the sensitivity table has no curve for {len(missing)} prunable group(s) ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}): they were left whole and the others thinned to make up for it; "
            "measure the table on this model (`edgecompress sensitivity`, or drop --sensitivity)")
