"""Zoo coverage: every registered architecture goes through prune -> ONNX -> parity -> INT8.

For each model (random weights, small input) the test:
  1. prunes 50% of the MACs with ``edgecompress.prune.prune`` and checks MACs and params fell;
  2. proves the pruning is *structurally correct*: Torch-Pruning's low-level channel removals
     are recorded, the same channels are zeroed in the unpruned original (conv/linear rows and
     BN scale+shift), and that masked original must compute the same logits as the pruned model.
     A dependency graph that cut mismatched channels across a residual add, concat, flatten,
     SE scale or grouped conv fails this, whereas ONNX parity alone would not notice;
  3. exports the pruned model with ``export_onnx`` and checks PyTorch/onnxruntime parity;
  4. quantizes with ``quantize_ptq`` and runs the INT8 model in onnxruntime.

Set ``EDGECOMPRESS_ZOO_REPORT=path.jsonl`` to append one JSON line of measurements per model
(what docs/zoo.md is made from).
"""

from __future__ import annotations

import copy
import json
import os
import time

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from torch_pruning.dependency.dependency import Dependency

from edgecompress.config import ExportOnnxConfig, PruneConfig, QuantConfig
from edgecompress.export import export_onnx, parity
from edgecompress.models.zoo import create_model, get_entry, list_models
from edgecompress.prune import prune
from edgecompress.quantize import quantize_ptq
from edgecompress.runtime import make_session, run_batched

# VGG's 103M-weight first FC layer is re-scored and re-sliced at each of ~30 progressive
# pruning steps: ~80-90 s per VGG against 0.2-20 s for every other model (docs/zoo.md). They
# still run by default (and in CI); `-m "not slow"` skips them for a quick local pass.
SLOW = {"vgg11_bn", "vgg16_bn"}
NAMES = [pytest.param(e.name, marks=pytest.mark.slow) if e.name in SLOW else e.name for e in list_models()]
NUM_CLASSES = 10
SIDE = 32  # every zoo model accepts >= 32 px (28 px models run at their own size)
RATIO = 0.5
PARITY_TOL = 1e-4
# The legacy TorchScript exporter is ~5-10x faster than the default dynamo one, which keeps this
# test within minutes; EDGECOMPRESS_ZOO_EXPORTER=dynamo runs every model through dynamo instead.
EXPORTER = os.environ.get("EDGECOMPRESS_ZOO_EXPORTER", "torchscript")
# VGG pools its 1x1 map (at 32 px) to 7x7 before the classifier; the TorchScript exporter refuses
# adaptive_avg_pool2d to a size that does not divide the input ("output size that are not factor
# of input size"), the dynamo exporter handles it.
NEEDS_DYNAMO = {"vgg11_bn", "vgg16_bn"}


def _input_shape(name: str) -> tuple[int, int, int]:
    c, h, w = get_entry(name).default_input
    return c, min(h, SIDE), min(w, SIDE)


def _is_grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet)."""
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels


# resnet8-tiny is 8 channels wide: at round_to=8 its first stage cannot shrink at all and pruning
# stops at 44% of MACs removed (measured), so it keeps multiples of 4.
ROUND_TO = {"resnet8-tiny": 4}


def _round_to(name: str, model: nn.Module) -> int:
    # Grouped convs (ResNeXt, RegNet) prune at the default round_to=8 too: edgecompress rounds their
    # per-group widths (prune.group_aware_pruner), where Torch-Pruning 1.6 never pruned them.
    return ROUND_TO.get(name, 8)


def _realistic_state(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> None:
    """Random norm affines and layer scales, and BN statistics taken from one batch of inputs.

    Freshly initialised BNs are the identity, so with He-initialised depthwise convs the logits
    of a MobileNet fade to ~1e-10 and every tolerance below would pass vacuously; ConvNeXt's
    layer scale starts at 1e-6, which switches its blocks off. One train-mode pass (cumulative
    BN averages) makes every BN normalise what it really sees: O(1) activations throughout, and
    a channel that pruning removes carries real signal."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.reset_running_stats()
                m.momentum = None  # running stats = plain average of the batches seen
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
        for n, p in model.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.0, generator=gen)
        model.train()(torch.randn(8, *shape, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()


def _record_removals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[nn.Module, str, list[int]]]:
    """Every call Torch-Pruning makes to shrink a layer: (layer, handler name, indices *at that time*)."""
    log: list[tuple[nn.Module, str, list[int]]] = []
    original_call = Dependency.__call__

    def recording_call(dep: Dependency, idxs):
        log.append((dep.target.module, dep.handler.__name__, [int(getattr(i, "idx", i)) for i in idxs]))
        return original_call(dep, idxs)

    monkeypatch.setattr(Dependency, "__call__", recording_call)
    return log


MASKABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _out_dim(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features if isinstance(m, nn.Linear) else m.num_features


def _masked_original(original: nn.Module, pruned: nn.Module, log) -> tuple[nn.Module, int]:
    """The original with the removed output channels of every conv/linear/BN zeroed."""
    name_of = {id(m): n for n, m in pruned.named_modules()}
    orig_mods = dict(original.named_modules())
    kept: dict[str, list[int]] = {}
    for mod, handler, idxs in log:
        # BN and depthwise convs use one function for both directions, named prune_out_channels.
        if handler != "prune_out_channels" or not isinstance(mod, MASKABLE) or id(mod) not in name_of:
            continue
        name = name_of[id(mod)]
        cur = kept.setdefault(name, list(range(_out_dim(orig_mods[name]))))
        drop = set(idxs)
        kept[name] = [c for i, c in enumerate(cur) if i not in drop]
    # The record must explain every shrunken layer, or the masked model proves nothing.
    for n, m in pruned.named_modules():
        if isinstance(m, MASKABLE):
            assert _out_dim(m) == len(kept.get(n, range(_out_dim(orig_mods[n])))), f"unrecorded change in {n}"
    masked = copy.deepcopy(original).eval()
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for n, keep in kept.items():
            gone = sorted(set(range(_out_dim(mods[n]))) - set(keep))
            for t in (mods[n].weight, mods[n].bias):
                if t is not None:
                    t[gone] = 0.0
    return masked, sum(len(v) for v in kept.values())


def _qdq_counts(path) -> tuple[int, int, int]:
    """(QuantizeLinear nodes, DequantizeLinear nodes, conv/matmul nodes whose weight is dequantized)."""
    g = onnx.load(str(path)).graph
    producers = {o: n for n in g.node for o in n.output}
    q = sum(n.op_type == "QuantizeLinear" for n in g.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in g.node)
    wq = sum(
        1
        for n in g.node
        if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1
        and getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"
    )
    return q, dq, wq


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_prunes_exports_and_quantizes(name: str, tmp_path, monkeypatch) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    shape = _input_shape(name)
    original = create_model(name, num_classes=NUM_CLASSES, in_chans=shape[0]).eval()
    _realistic_state(original, shape, gen)
    example = torch.randn(1, *shape, generator=gen)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    calib = rng.standard_normal((16, *shape)).astype(np.float32)

    # 1. prune half the MACs
    cfg = PruneConfig(ratio=RATIO, round_to=_round_to(name, original))  # prune_ignore is honoured by prune()
    log = _record_removals(monkeypatch)
    res = prune(original, example, cfg)
    monkeypatch.undo()
    pruned = res.model.eval()
    assert res.macs_after <= (1 - RATIO) * res.macs_before, (res.macs_before, res.macs_after)
    assert res.params_after < res.params_before
    grouped_before = [n for n, m in original.named_modules() if _is_grouped(m)]
    if grouped_before:  # the grouped convs themselves must have been thinned, not just their neighbours
        mods = dict(pruned.named_modules())
        assert any(mods[n].out_channels < dict(original.named_modules())[n].out_channels for n in grouped_before)
        assert all(mods[n].out_channels % mods[n].groups == 0 for n in grouped_before)
        assert all(mods[n].out_channels % cfg.round_to == 0 for n in grouped_before)  # all start as multiples

    # 2. the pruned model is the original with exactly the recorded channels removed
    xt = torch.from_numpy(x)
    with torch.no_grad():
        got = pruned(xt)
    uses_layernorm = any(isinstance(m, nn.LayerNorm) for m in original.modules())
    masked_max_abs = None
    if not uses_layernorm:  # LayerNorm statistics span the pruned channels: zeroing is not removing
        masked, removed = _masked_original(original, pruned, log)
        assert removed > 0
        with torch.no_grad():
            want = masked(xt)
        masked_max_abs = float((got - want).abs().max())
        assert masked_max_abs <= 1e-4 * max(1.0, float(want.abs().max())), masked_max_abs
    assert got.shape == (4, NUM_CLASSES) and torch.isfinite(got).all()

    # 3. ONNX export + parity
    exporter = "dynamo" if name in NEEDS_DYNAMO else EXPORTER
    fp32 = export_onnx(pruned, example, tmp_path / "fp32.onnx", ExportOnnxConfig(exporter=exporter))
    par = parity(pruned, fp32, x, PARITY_TOL)
    assert par.passed, par.to_dict()

    # 4. INT8 post-training quantization
    int8 = quantize_ptq(fp32, tmp_path / "int8.onnx", calib, QuantConfig(calib_samples=len(calib))).path
    q, dq, wq = _qdq_counts(int8)
    assert q > 0 and dq > 0 and wq > 0, (q, dq, wq)
    y8 = run_batched(make_session(int8, threads=1), x)
    assert y8.shape == (4, NUM_CLASSES) and np.isfinite(y8).all()

    report = os.environ.get("EDGECOMPRESS_ZOO_REPORT")
    if report:
        row = {
            "model": name, "input": list(shape), "round_to": cfg.round_to, "ignored": len(cfg.ignore),
            "params_before": res.params_before, "params_after": res.params_after,
            "macs_before": res.macs_before, "macs_after": res.macs_after, "channel_ratio": res.channel_ratio,
            "masked_max_abs": masked_max_abs, "parity_max_abs": par.max_abs, "parity_tol": par.tol,
            "int8_ran": True, "qdq_nodes": [q, dq], "int8_weight_quantized_ops": wq,
            "int8_vs_fp32_max_abs": float(np.max(np.abs(y8 - got.numpy()))),
            "fp32_max_abs_logit": float(got.abs().max()), "exporter": exporter,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
        }  # fmt: skip
        with open(report, "a") as f:
            f.write(json.dumps(row) + "\n")


def test_masked_equivalence_catches_a_mismatched_cut(monkeypatch) -> None:
    """The structural check above is not vacuous: cut one different channel than the one recorded
    (as a dependency graph that mis-maps an index would) and the masked original disagrees."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    original = create_model("resnet8-tiny", num_classes=NUM_CLASSES, in_chans=1).eval()
    _realistic_state(original, (1, 28, 28), gen)
    example = torch.randn(1, 1, 28, 28, generator=gen)
    log = _record_removals(monkeypatch)
    res = prune(original, example, PruneConfig(ratio=RATIO, round_to=4))
    monkeypatch.undo()
    x = torch.randn(4, 1, 28, 28, generator=gen)
    with torch.no_grad():
        got = res.model(x)
        masked, _ = _masked_original(original, res.model, log)
        assert float((got - masked(x)).abs().max()) <= 1e-5 * max(1.0, float(got.abs().max()))
        # Move the first recorded cut of the stem conv to a channel the pruning kept.
        i = next(k for k, (m, h, idxs) in enumerate(log) if m is res.model.conv1 and h == "prune_out_channels")
        mod, handler, idxs = log[i]
        kept = next(c for c in range(original.conv1.out_channels) if c not in idxs)
        log[i] = (mod, handler, [kept, *idxs[1:]])
        wrong, _ = _masked_original(original, res.model, log)
        assert float((got - wrong(x)).abs().max()) > 1e-3 * max(1.0, float(got.abs().max()))
