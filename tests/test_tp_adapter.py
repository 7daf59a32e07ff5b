"""The Torch-Pruning internals that ``edgecompress.prune.tp_adapter`` overrides or reads are still
there, with the shapes it relies on: a library upgrade that changes them fails here, loudly,
instead of silently changing what gets pruned or counted."""

from __future__ import annotations

import importlib.metadata
import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

from edgecompress.prune.tp_adapter import TESTED_VERSIONS, count_macs_params, group_aware_pruner


def test_installed_torch_pruning_is_a_tested_release():
    v = importlib.metadata.version("torch-pruning")
    assert v.startswith(TESTED_VERSIONS), (
        f"torch-pruning {v} is not one of {TESTED_VERSIONS}: re-check tp_adapter's overrides, then add it")


def test_overridden_methods_keep_their_signatures():
    base = tp.pruner.BasePruner
    assert list(inspect.signature(base._round_to).parameters) == ["self", "n_pruned", "current_channels", "round_to"]
    assert list(inspect.signature(base._is_atten_group).parameters) == ["self", "group"]
    assert list(inspect.signature(base._get_channel_groups).parameters) == ["self", "group"]
    # _prune must call _is_atten_group right before _round_to: the override records the group there
    src = inspect.getsource(base._prune)
    assert src.index("_is_atten_group") < src.index("_round_to")


def test_mac_counter_matches_the_librarys_own():
    assert nn.Conv2d in op_counter.MODULES_MAPPING and nn.Linear in op_counter.MODULES_MAPPING
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    x = torch.randn(1, 3, 16, 16)
    macs, params = tp.utils.count_ops_and_params(m, x)
    assert count_macs_params(m, x) == (int(macs), int(params))


def test_grouped_conv_is_pruned_at_round_to_8():
    """Without the _round_to override, 1.6.1 rounds a grouped conv's cut up to every channel and the
    group is silently skipped."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 64, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=4),
                      nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))
    x = torch.randn(1, 3, 8, 8)
    p = group_aware_pruner(m, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, round_to=8,
                           ignored_layers=[m[8]])
    p.step()
    assert m[3].out_channels < 64 and m[3].out_channels % 8 == 0 and m[3].groups == 4
    m(x)  # still runs


def test_concat_mapping_gives_up_on_unknown_sizes_as_the_library_means_to(monkeypatch):
    """1.6.1 sums a concat's input channels before its own ``if ch is None: return``; the override
    returns there instead of raising TypeError (timm's CS3DarkNet failed to trace)."""
    from torch_pruning.dependency import index_mapping

    from edgecompress.prune.tp_adapter import concat_with_unknown_sizes

    concat_with_unknown_sizes()
    patched = index_mapping.update_concat_index_mapping
    src = inspect.getsource(patched.original)
    assert "sum(chs)" in src and "if ch is None" in src
    # a concat whose second input's channel count could not be inferred
    node = SimpleNamespace(type=tp.ops.OPTYPE.CONCAT, grad_fn=None, inputs=[],
                           module=SimpleNamespace(concat_sizes=[8, None]))
    from torch_pruning.dependency import shape_infer

    monkeypatch.setattr(shape_infer, "infer_in_channels_recursively", lambda *a, **k: 8)
    with pytest.raises(TypeError):
        patched.original(None, node)  # the library's own function on that concat
    assert patched(None, node) is None


def test_split_and_group_internals_keep_the_shapes_the_overrides_rely_on():
    """tp_adapter.split_offsets_follow_pruning, split_outputs_by_index and bounded_groups."""
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.graph import DependencyGraph
    from torch_pruning.dependency.group import Group

    from edgecompress.prune import tp_adapter

    # the SplitPruner still computes the new sizes and still reads offsets from the split node
    split = getattr(ops.SplitPruner.prune_out_channels, "original", ops.SplitPruner.prune_out_channels)
    assert list(inspect.signature(split).parameters) == ["self", "layer", "idxs"]
    assert "layer.split_sizes = new_split_sizes" in inspect.getsource(split)
    upd = getattr(index_mapping.update_split_index_mapping, "original", index_mapping.update_split_index_mapping)
    assert "split_node.module.offsets" in inspect.getsource(upd) and "enumerate(split_node.outputs)" in inspect.getsource(upd)
    assert list(inspect.signature(index_mapping._SplitIndexMapping).parameters) == ["offset", "reverse"]
    add = getattr(Group.add_dep, "original", Group.add_dep)
    assert list(inspect.signature(add).parameters) == ["self", "dep", "idxs"]
    groups = getattr(DependencyGraph.get_all_groups, "original", DependencyGraph.get_all_groups)
    src = inspect.getsource(groups)  # the loop bounded_groups reproduces
    for line in ("get_pruner_of_module(m)", "pruner.get_out_channels(m)", "self.IGNORED_LAYERS_IN_TRACING",
                 "is_out_channel_pruning_fn(pruning_fn)"):
        assert line in src
    # once applied, each override is applied once, and keeps the library's function beside it
    tp_adapter.split_offsets_follow_pruning()
    tp_adapter.split_outputs_by_index()
    tp_adapter.bounded_groups()
    for fn in (ops.SplitPruner.prune_out_channels, index_mapping.update_split_index_mapping, Group.add_dep):
        assert fn._edgecompress and callable(fn.original)
