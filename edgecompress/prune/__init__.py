"""Structured pruning: channels (Torch-Pruning's dependency graph), importance, per-layer
allocation from a sensitivity table, depth (residual blocks), a latency criterion, and the one
adapter over Torch-Pruning's internals."""

from edgecompress.prune.channels import PruneResult, layer_table, output_layers, prune
from edgecompress.prune.latency import LatencyCriterion
from edgecompress.prune.tp_adapter import count_macs_params

__all__ = ["LatencyCriterion", "PruneResult", "count_macs_params", "layer_table", "output_layers", "prune"]
