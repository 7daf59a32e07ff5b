"""Pruning that protects itself: a model's own shape assumptions (a hard-coded reshape, split sizes
fixed at construction, a channel count checked in forward) leave the groups they depend on whole,
recorded with the reason, and pruning still meets the target with the other groups - never exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from edgecompress.config import PruneConfig
from edgecompress.errors import BadInput
from edgecompress.prune import channels, prune
from edgecompress.prune.protect import GuardedImportance
from edgecompress.prune.tp_adapter import fast_group_lookup

from .conftest import run_cli

X = torch.randn(1, 3, 16, 16)

MODELS = '''
import torch
import torch.nn as nn


class FixedView(nn.Module):
    """Flattens the last conv's output with a hard-coded feature count (16 channels x 4 x 4)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.features(x).view(-1, 256))


class FixedSplit(nn.Module):
    """Splits the stem's channels with sizes written in forward (as MobileViT-V2's attention does)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.post = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [16, 16], dim=1)
        x = torch.cat([self.a(a), self.b(b)], 1)
        return self.fc(self.post(x).mean((2, 3)))


class MixedSplit(FixedSplit):
    """Splits the stem's channels with sizes kept as a list next to the convs they feed (MixNet's
    mixed-kernel convs, timm's MixedConv2d)."""

    def __init__(self):
        super().__init__()
        self.splits = [16, 16]

    def forward(self, x):
        a, b = torch.split(self.stem(x), self.splits, dim=1)
        x = torch.cat([self.a(a), self.b(b)], 1)
        return self.fc(self.post(x).mean((2, 3)))


class OnlyOneConv(nn.Module):
    """Its only prunable group feeds a hard-coded reshape: nothing can be pruned."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 256))


def fixed_view():
    torch.manual_seed(0)
    return FixedView()


def fixed_split():
    torch.manual_seed(0)
    return FixedSplit()


def mixed_split():
    torch.manual_seed(0)
    return MixedSplit()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "protect_models.py").write_text(MODELS)
    ns: dict = {}
    exec(compile(MODELS, str(d / "protect_models.py"), "exec"), ns)
    return d, ns


def test_hard_coded_view_leaves_last_conv_whole_and_meets_target(models):
    _, ns = models
    model = ns["fixed_view"]().eval()
    before = model(X)  # the input model is untouched
    res = prune(model, X, PruneConfig(ratio=0.5))
    assert res.macs_after <= 0.5 * res.macs_before
    assert [p["layer"] for p in res.protected] == ["features.6"]
    assert "[-1, 256]" in res.protected[0]["reason"]
    assert res.model.features[6].out_channels == 16  # left whole
    assert res.model.features[0].out_channels < 32  # the others pruned
    assert res.model(X).shape == (1, 10)
    assert torch.equal(model(X), before)


def test_fixed_split_sizes_leave_the_split_groups_whole(models):
    _, ns = models
    res = prune(ns["fixed_split"]().eval(), X, PruneConfig(ratio=0.5))
    assert res.macs_after <= 0.5 * res.macs_before
    assert {p["layer"] for p in res.protected} == {"a", "b"}
    assert all("split_with_sizes" in p["reason"] for p in res.protected)
    assert res.model.stem[0].out_channels == 32 and res.model.post[0].out_channels < 64
    assert res.model(X).shape == (1, 10)


def test_split_sizes_kept_next_to_their_convs_follow_the_pruning(models, tmp_path):
    from edgecompress.models import load_pruned, save_pruned
    from edgecompress.models.loading import ModelSpec

    d, ns = models
    model = ns["mixed_split"]().eval()
    res = prune(model, X, PruneConfig(ratio=0.5))
    assert res.macs_after <= 0.5 * res.macs_before and res.protected == []
    a, b = res.model.a.in_channels, res.model.b.in_channels
    assert a + b < 32 and res.model.splits == [a, b]  # pruned through the split, sizes rewritten
    assert res.model(X).shape == (1, 10) and model.splits == [16, 16]  # the input model is untouched
    # the pruned checkpoint rebuilds the same sizes from the factory
    spec = ModelSpec(kind="factory", ref=f"{d / 'protect_models.py'}:mixed_split", kwargs={})
    save_pruned(tmp_path / "p.pt", spec, (1, 3, 16, 16), res.model, res.record)
    back = load_pruned(tmp_path / "p.pt")
    assert back.splits == [a, b] and torch.allclose(back(X), res.model(X), atol=1e-6)


def test_nothing_prunable_left_is_one_line_bad_input_naming_the_layer(models):
    _, ns = models
    with pytest.raises(BadInput) as e:
        prune(ns["OnlyOneConv"]().eval(), X, PruneConfig(ratio=0.5))
    msg = str(e.value)
    assert "\n" not in msg and "conv" in msg and "left whole" in msg and "[-1, 256]" in msg


class _Threshold(nn.Module):
    """Breaks only once ``body``'s first conv has fewer than 48 channels: its first cuts pass, so
    the check of a whole step catches it and the schedule restarts with that group re-checked."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if self.body[0].out_channels < 48:
            raise RuntimeError("expected at least 48 channels")
        return self.fc(self.body(x).mean((2, 3)))


def test_a_step_that_breaks_late_restarts_with_the_group_rechecked(monkeypatch):
    runs = []
    schedule = channels._schedule
    monkeypatch.setattr(channels, "_schedule", lambda *a: runs.append(a[-1]) or schedule(*a))
    res = prune(_Threshold().eval(), X, PruneConfig(ratio=0.5))
    assert len(runs) == 2 and runs[0] == frozenset() and "body.0" in runs[1]  # one restart, body.0 re-checked
    assert res.macs_after <= 0.5 * res.macs_before
    assert [p["layer"] for p in res.protected] == ["body.0"]
    assert "at least 48 channels" in res.protected[0]["reason"]
    assert res.model.body[0].out_channels >= 48


def test_group_the_importance_cannot_score_is_left_whole():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 4))
    inner = tp.importance.MagnitudeImportance(p=2)

    def flaky(group):
        if group[0].dep.target.module is model[2]:
            raise IndexError("index 32 is out of bounds for dimension 0 with size 32")
        return inner(group)

    imp = GuardedImportance(flaky)
    p = tp.pruner.BasePruner(model, X, importance=imp, pruning_ratio=0.5, ignored_layers=[model[6]])
    p.step()
    assert model[2].out_channels == 32 and model[0].out_channels == 16
    assert [(m, "IndexError" in why) for m, why in imp.failed] == [(model[2], True)]


def test_fast_group_lookup_builds_the_same_groups(monkeypatch, models):
    from torch_pruning.dependency.group import Group

    _, ns = models
    fast_group_lookup()
    fast = Group.has_pruning_op

    def groups(model):
        dg = tp.DependencyGraph().build_dependency(model, X)
        return [[(str(d), i) for d, i in g] for g in dg.get_all_groups()]

    m = ns["fixed_split"]().eval()
    with_fast = groups(m)
    monkeypatch.setattr(Group, "has_pruning_op", fast.original)
    assert groups(m) == with_fast and len(with_fast) > 3


@pytest.mark.slow
@pytest.mark.parametrize("factory,layers", [("fixed_view", ["features.6"]), ("fixed_split", ["a", "b"])])
def test_cli_prunes_a_model_with_fixed_shapes_and_records_what_it_protected(models, tmp_path, factory, layers):
    d, _ = models
    r = run_cli(["export", f"{d / 'protect_models.py'}:{factory}", "--input-shape", "1,3,16,16", "--data", "random",
                 "--distill-epochs", "0", "--calib-samples", "32", "--exporter", "torchscript", "--runs", "5",
                 "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads(Path(tmp_path / "out" / "manifest.json").read_text())
    prune_res = man["stage_results"]["prune"]
    assert prune_res["macs_removed"] >= 0.5
    assert sorted(p["layer"] for p in prune_res["protected"]) == layers
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Protected from pruning" in report and layers[0] in report
    assert f"left {layers[0]} unpruned" in r.stdout + r.stderr


class _BiasCache(nn.Module):
    """Caches a tensor computed in forward as a plain attribute (as timm's EfficientFormer does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.ones(8))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        self.cache.setdefault("s", self.scale * 2)  # not a graph leaf when traced with gradients
        return (self.conv(x) * self.cache["s"].view(1, -1, 1, 1)).mean((2, 3))


def test_scratch_copy_handles_tensors_cached_by_a_traced_forward():
    import copy

    from edgecompress.prune.protect import scratch_copy

    m = _BiasCache()
    m(X)  # with gradients, as Torch-Pruning traces
    with pytest.raises(RuntimeError):
        copy.deepcopy(m)
    c = scratch_copy(m)
    assert torch.equal(c(X), m(X)) and c.conv is not m.conv and c.cache["s"].is_leaf


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))


def test_a_group_past_the_build_bound_is_left_whole_and_recorded(monkeypatch):
    from edgecompress.prune import tp_adapter

    # conv1's group holds ~5 x 8 channel indices, conv2's ~5 x 64: only conv2's is past 100
    monkeypatch.setattr(tp_adapter, "MAX_GROUP_INDICES", 100)
    res = prune(_TwoConvs().eval(), X, PruneConfig(ratio=0.3, round_to=1))
    assert [p["layer"] for p in res.protected] == ["conv2.0"]
    assert res.protected[0]["reason"].startswith("torch-pruning cannot trace this group: its channel dependency group "
                                                 "grew past")
    assert res.model.conv2[0].out_channels == 64 and res.model.conv1[0].out_channels < 8
    assert res.macs_after <= 0.7 * res.macs_before and res.model(X).shape == (1, 10)


def test_bounded_group_building_builds_the_same_groups_within_bounds(models):
    from torch_pruning.dependency.graph import DependencyGraph

    from edgecompress.prune.tp_adapter import bounded_groups

    _, ns = models
    bounded_groups()
    for factory in ("fixed_view", "fixed_split", "mixed_split"):
        dg = tp.DependencyGraph().build_dependency(ns[factory]().eval(), X)
        ours = [[(str(d), i) for d, i in g] for g in dg.get_all_groups()]
        theirs = [[(str(d), i) for d, i in g] for g in DependencyGraph.get_all_groups.original(dg)]
        assert ours == theirs and len(ours) >= 3 and dg.untraceable == {}


class _Mixed(nn.Module):
    """MixNet's mixed conv in small: split sizes next to their convs, chunk 0 read by ``a``, but
    traced with ``b`` first; the logits are tiny, as a randomly initialised net's are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.splits = [16, 16]
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.fc.weight.mul_(1e-5)
            self.fc.bias.mul_(1e-5)

    def forward(self, x):
        a, b = torch.split(self.stem(x), self.splits, dim=1)
        return self.fc(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


@pytest.mark.parametrize("fixed", [True, False])
def test_split_chunks_map_to_the_convs_that_read_them(monkeypatch, fixed):
    from torch_pruning.dependency import index_mapping

    from edgecompress.prune import tp_adapter
    from edgecompress.prune.equivalence import check_equivalence, record_removals

    if not fixed:  # torch-pruning 1.6.1's own mapping: chunk i to the i-th consumer traced
        tp_adapter.split_outputs_by_index()
        monkeypatch.setattr(index_mapping, "update_split_index_mapping",
                            index_mapping.update_split_index_mapping.original)
        monkeypatch.setattr(tp_adapter, "split_outputs_by_index", lambda: None)
    model, x = _Mixed().eval(), torch.randn(4, 3, 16, 16)
    with record_removals() as log:
        res = prune(model, x[:1], PruneConfig(ratio=0.3, round_to=1))
    eq = check_equivalence(model, res.model, log, x)
    assert float(model(x).abs().max()) < 1e-4  # below the output bound: only the per-layer check can see it
    if fixed:
        assert eq.status == "held" and res.model.splits == [res.model.a.in_channels, res.model.b.in_channels]
    else:
        assert eq.status == "failed" and eq.layer in ("a", "b")
