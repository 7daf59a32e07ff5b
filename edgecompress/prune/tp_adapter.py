"""Everything edgecompress does *inside* Torch-Pruning, in one place.

Torch-Pruning (1.6) is used through its public API (``DependencyGraph``, ``BasePruner``,
importances) except for the internals below, each overridden or read here and checked by
``tests/test_tp_adapter.py`` so that a library change fails loudly instead of silently
changing what gets pruned:

* ``BasePruner._round_to`` / ``_is_atten_group`` / ``_get_channel_groups`` (grouped-conv rounding,
  :func:`group_aware_pruner`);
* ``torch_pruning.utils.op_counter.MODULES_MAPPING``, its per-type MAC counting hooks
  (:func:`count_macs_params`, without the library's deep copy of the model);
* ``Group.has_pruning_op``, replaced by a lookup with the same answer (:func:`fast_group_lookup`);
* ``index_mapping.update_concat_index_mapping``, which 1.6.1 lets fail on a concat whose input
  channels it cannot infer (:func:`concat_with_unknown_sizes`);
* ``ops.SplitPruner``, whose 1.6.1 ``prune_out_channels`` stores the new split offsets on
  itself instead of on the split node, so the next step maps channels through the old offsets
  (:func:`split_offsets_follow_pruning`);
* ``index_mapping.update_split_index_mapping``, which gives the i-th *consumer* of a split the
  channels of the i-th chunk, whatever chunk it reads (:func:`split_outputs_by_index`);
* ``Group.add_dep`` and ``DependencyGraph.get_all_groups``: group building bounded in work, a
  group past the bound left whole instead of the run never ending (:func:`bounded_groups`).

Its exceptions become one-line ``BadInput`` errors that name the way out (:func:`tp_errors`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from edgecompress.config.enums import LayerKind
from edgecompress.errors import BadInput, one_line

TESTED_VERSIONS = ("1.6",)  # torch-pruning releases whose internals this module was checked against


@contextlib.contextmanager
def tp_errors(what: str, way_out: str) -> Iterator[None]:
    """Torch-Pruning raises plain exceptions on models it cannot trace or layers it cannot prune:
    one line that says which (``what``: "trace" or "prune") and what to do."""
    try:
        yield
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"torch-pruning could not {what} this model ({type(e).__name__}: {one_line(e, 200)}); "
                       f"{way_out}") from None


def group_kind(group) -> str | None:
    """The ``LayerKind`` whose width table rounds a pruning group: depthwise if a depthwise conv
    is in it (its channels are the depthwise conv's), pointwise if every conv in it is 1x1, dense
    for other convs; None for a group without a conv (a Linear's)."""
    convs = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Conv2d)]
    if not convs:
        return None
    if any(c.groups > 1 and c.groups == c.in_channels for c in convs):
        return LayerKind.DEPTHWISE.value
    if all(tuple(c.kernel_size) == (1, 1) for c in convs):
        return LayerKind.POINTWISE.value
    return LayerKind.DENSE.value


def group_aware_pruner(model, example, *, round_to_by_kind: dict[str, int] | None = None, **kwargs):
    """Torch-Pruning's ``BasePruner`` with rounding that works for grouped convs, and per layer
    kind when ``round_to_by_kind`` is given ({kind: multiple}; ``group_kind``; the ``round_to``
    keyword for the rest; the multiples come from the device's width tables: quantize.widths).

    For a group whose channels are split in G groups (a grouped conv or its neighbours), 1.6.1's
    ``_prune`` passes ``_round_to`` the number of channels to cut *per group* but the layer's
    *total* count; with ``total % round_to == 0`` that rounds up to every channel of each group,
    ``check_pruning_group`` refuses it, and ResNeXt/RegNet grouped convs were silently never
    pruned at ``round_to > 1``. Here the per-group kept count is rounded down to a multiple of
    ``round_to // gcd(G, round_to)``: the total stays a multiple of ``round_to`` and ``groups``
    stays valid (ResNeXt's 32 groups: any per-group width; RegNet's 3 groups of 8 at round_to=8:
    only 8, so that layer keeps its width - G * k % 8 == 0 needs k = 8).
    """
    import torch_pruning as tp

    class GroupAwarePruner(tp.pruner.BasePruner):
        _ec_group = None  # the group ``_prune`` is about to round (set just before ``_round_to``)

        def _is_atten_group(self, group):  # called on each record right before its rounding
            self._ec_group = group
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned, current_channels, round_to):
            if round_to_by_kind and self._ec_group is not None:
                round_to = round_to_by_kind.get(group_kind(self._ec_group) or "", round_to)
            g = self._get_channel_groups(self._ec_group) if self._ec_group is not None else 1
            if g <= 1 or current_channels % g or n_pruned > current_channels // g:
                return super()._round_to(n_pruned, current_channels, round_to)
            per_group = current_channels // g
            keep = per_group - n_pruned
            keep -= keep % (round_to // math.gcd(g, round_to))
            return per_group - keep  # 0 kept = every channel: check_pruning_group skips it, as ungrouped

    fast_group_lookup()
    concat_with_unknown_sizes()
    bounded_groups()
    split_offsets_follow_pruning()
    split_outputs_by_index()
    return GroupAwarePruner(model, example, **kwargs)


def split_offsets_follow_pruning() -> None:
    """Makes a pruned split's offsets follow its new sizes (once, process-wide).

    1.6.1's ``SplitPruner.prune_out_channels`` computes the new ``split_sizes`` and offsets but
    assigns the offsets to ``self`` (the pruner shared by every split) instead of ``layer`` (the
    split node); ``update_split_index_mapping`` reads ``layer.offsets``, so from the second
    pruning step on, channels are mapped into a split through the sizes it had before the first
    one, and the importance fails (MixNet: "index 16 is out of bounds for dimension 0 with size
    16"). Here the node's offsets are recomputed from its sizes after each cut."""
    import itertools

    from torch_pruning import ops

    original = ops.SplitPruner.prune_out_channels
    if getattr(original, "_edgecompress", False):
        return

    def prune_out_channels(self, layer, idxs):
        original(self, layer, idxs)
        if layer.split_sizes is not None:
            layer.offsets = [0, *itertools.accumulate(layer.split_sizes)]

    prune_out_channels._edgecompress = True  # type: ignore[attr-defined]
    prune_out_channels.original = original  # type: ignore[attr-defined]
    ops.SplitPruner.prune_out_channels = prune_out_channels
    ops.SplitPruner.prune_in_channels = prune_out_channels


def split_outputs_by_index() -> None:
    """Maps each consumer of a split onto the chunk it reads (once, process-wide).

    1.6.1's ``update_split_index_mapping`` gives the i-th node of ``split_node.outputs`` the
    offsets of chunk i, but that list is in the order the graph was traced, not the order of the
    chunks: in ``a, b = torch.split(x, [16, 16], 1); cat([conv_a(a), conv_b(b)])`` it held
    ``conv_b`` first, so a channel cut from chunk 0 was cut from ``conv_b``'s input - the pruned
    model ran, with the wrong channels (MixNet failed the structural-equivalence gate). The chunk
    a consumer reads is in autograd: its ``grad_fn.next_functions`` holds ``(split grad_fn,
    chunk number)``. After the library's own update (its checks of the split's dim are kept),
    every split mapping it set is re-pointed at that chunk's offsets; a consumer that reads
    several chunks keeps the library's mapping."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_split_index_mapping
    if getattr(original, "_edgecompress", False):
        return
    mapping = index_mapping._SplitIndexMapping

    def chunk_of(split_node, out_node) -> int | None:
        nrs = {nr for fn, nr in getattr(out_node.grad_fn, "next_functions", ()) if fn is split_node.grad_fn}
        return nrs.pop() if len(nrs) == 1 else None

    def update_split_index_mapping(graph, split_node):
        original(graph, split_node)
        offsets = getattr(split_node.module, "offsets", None)
        if offsets is None or split_node.grad_fn is None:
            return
        for out_node in split_node.outputs:
            k = chunk_of(split_node, out_node)
            if k is None or k + 2 > len(offsets):
                continue
            for dep in split_node.dependencies:
                if dep.target is out_node and isinstance(dep.index_mapping[0], mapping):
                    dep.index_mapping[0] = mapping(offset=offsets[k:k + 2], reverse=False)
            for dep in out_node.dependencies:
                if dep.target is split_node and isinstance(dep.index_mapping[0], mapping):
                    dep.index_mapping[0] = mapping(offset=offsets[k:k + 2], reverse=True)

    update_split_index_mapping._edgecompress = True  # type: ignore[attr-defined]
    update_split_index_mapping.original = original  # type: ignore[attr-defined]
    index_mapping.update_split_index_mapping = update_split_index_mapping


def concat_with_unknown_sizes() -> None:
    """Makes 1.6.1's concat index mapping give up on a concat whose input channel counts it cannot
    infer, as its own code means to (``if ch is None: return`` a few lines on), instead of
    raising ``TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'`` from
    ``sum(chs)`` first, which failed the whole dependency graph (timm's CS3DarkNet). Without an
    index mapping, pruning across that concat may break the model: the guard of
    ``prune.protect`` then leaves those groups whole."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_concat_index_mapping
    if getattr(original, "_edgecompress", False):
        return

    def update_concat_index_mapping(graph, cat_node):
        try:
            return original(graph, cat_node)
        except TypeError:
            if None in (cat_node.module.concat_sizes or ()):
                return None
            raise

    update_concat_index_mapping._edgecompress = True  # type: ignore[attr-defined]
    update_concat_index_mapping.original = original  # type: ignore[attr-defined]
    index_mapping.update_concat_index_mapping = update_concat_index_mapping


# Bounds of one dependency group's building (deterministic: counts, not seconds). Every group of
# ResNet-50, DenseNet-121, VGG-11, MobileViT-XXS, EfficientFormer-L1 and FastViT-T8 (probed) builds
# in under 0.3 s with under 300 items; the groups past the bounds grow without end (ReXNet's
# slice-add residual: >20k items in 1.5 s) or through a spatial flatten read as a channel flatten
# (EfficientViT-M, EfficientFormerV2 and MobileNetV4-hybrid attention: a 64-channel group becomes
# 64 x H x W indices, and one group took 277 s). Either way Torch-Pruning would rebuild that group
# at each of the 100 steps.
MAX_GROUP_ITEMS = 20_000
MAX_GROUP_INDICES = 1_000_000


class GroupTooLarge(Exception):
    """A dependency group grew past :data:`MAX_GROUP_ITEMS` / :data:`MAX_GROUP_INDICES`."""


def bounded_groups() -> None:
    """Bounds the building of each dependency group, once, process-wide.

    ``Group.add_dep`` counts the items and channel indices of the group being built and raises
    :class:`GroupTooLarge` past the bounds; ``DependencyGraph.get_all_groups`` (1.6.1's loop,
    unchanged otherwise) catches it for that root layer, remembers the layer and the reason in
    ``graph.untraceable`` (module -> reason) and skips it in every later call, so the bound is
    paid once per layer, not once per step. ``prune.protect.Guard`` leaves those layers whole
    and records them. Groups within the bounds are built exactly as before."""
    from torch_pruning import ops
    from torch_pruning.dependency.graph import DependencyGraph
    from torch_pruning.dependency.group import Group

    if getattr(Group.add_dep, "_edgecompress", False):
        return
    add_dep = Group.add_dep

    def bounded_add_dep(self, dep, idxs) -> None:
        work = self.__dict__.get("_ec_work", 0) + len(idxs)
        self._ec_work = work
        if len(self._group) >= MAX_GROUP_ITEMS or work > MAX_GROUP_INDICES:
            raise GroupTooLarge(f"its channel dependency group grew past {len(self._group)} dependencies / {work} channel "
                                "indices without closing (a reshape or slice torch-pruning cannot follow)")
        add_dep(self, dep, idxs)

    def get_all_groups(self, ignored_layers=[], root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR)):  # noqa: B006
        untraceable = self.__dict__.setdefault("untraceable", {})
        visited_layers = set()
        ignored_layers = list(ignored_layers) + self.IGNORED_LAYERS_IN_TRACING
        for m in list(self.module2node.keys()):
            if m in ignored_layers or m in untraceable or not isinstance(m, tuple(root_module_types)):
                continue
            pruner = self.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None or m in visited_layers:
                continue
            try:
                group = self.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except GroupTooLarge as e:
                untraceable[m] = str(e)
                continue
            prunable_group = True
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited_layers.add(dep.target.module)
                    if dep.target.module in ignored_layers:
                        prunable_group = False
            if prunable_group:
                yield group

    bounded_add_dep._edgecompress = True  # type: ignore[attr-defined]
    bounded_add_dep.original = add_dep  # type: ignore[attr-defined]
    get_all_groups.original = DependencyGraph.get_all_groups  # type: ignore[attr-defined]
    Group.add_dep = bounded_add_dep
    DependencyGraph.get_all_groups = get_all_groups


def fast_group_lookup() -> None:
    """Replaces ``torch_pruning.dependency.group.Group.has_pruning_op`` (once, process-wide) by a
    lookup with the same answer.

    1.6.1 scans every item of the group being built for every dependency it follows, comparing
    index lists: quadratic in the group size. Groups that run through reshapes and attention
    (MobileViT, ReXNet) hold thousands of items, and one pruning step took over a minute. Here
    the items are indexed by (target node, handler) as the group grows, and only the items with
    the same target and handler are compared, as before. Items are only ever appended or
    replaced in place with the same dependency, so the index stays valid."""
    from torch_pruning.dependency.group import Group

    if getattr(Group.has_pruning_op, "_edgecompress", False):
        return

    def has_pruning_op(self, dep, idxs) -> bool:
        index, done = self.__dict__.setdefault("_ec_index", ({}, [0]))
        for i in range(done[0], len(self._group)):  # index what was appended since the last call
            d = self._group[i].dep
            index.setdefault((d.target, d.handler), []).append(i)
        done[0] = len(self._group)
        return any(self._group[i].idxs == idxs for i in index.get((dep.target, dep.handler), ()))

    has_pruning_op._edgecompress = True  # type: ignore[attr-defined]
    has_pruning_op.original = Group.has_pruning_op  # type: ignore[attr-defined] # (tests compare the two)
    Group.has_pruning_op = has_pruning_op



class _Tally:
    """Stands in for a module in Torch-Pruning's per-type counting hooks: reads go to the module,
    the ``module.__flops__ += n`` they do lands here instead of on the model."""

    def __init__(self, module: nn.Module) -> None:
        self.__dict__.update(_module=module, __flops__=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Torch-Pruning's ``count_ops_and_params``, same numbers, without its deep copy of the model
    (0.5 GB for VGG, at each of up to 100 pruning steps). Its own per-type hooks count each
    module whose *exact* type it knows; a known module's children are not added again, a module
    called twice counts twice, and the total is per sample. The forward runs in eval mode under
    no_grad, and the modules' train/eval flags are restored afterwards."""
    from torch_pruning.utils import op_counter

    table = op_counter.MODULES_MAPPING
    tallies = {m: _Tally(m) for m in model.modules() if type(m) in table}
    modes = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_hook(lambda mod, i, o, t=t: table[type(mod)](t, i, o)) for m, t in tallies.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training

    def total(m: nn.Module) -> int:  # op_counter.accumulate_flops
        return tallies[m].__flops__ if m in tallies else sum(total(c) for c in m.children())

    return int(total(model) / len(example)), sum(p.numel() for p in model.parameters())

