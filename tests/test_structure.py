"""--structure: the channel multiple read from a width table measured on the device (cached), and
the number of dropped residual blocks whose file runs fastest at the same budget."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgecompress.config import PruneConfig, RunConfig
from edgecompress.config.enums import Structure
from edgecompress.errors import ConfigError
from edgecompress.models.zoo import create_model
from edgecompress.pipeline import structure
from edgecompress.quantize import widths
from edgecompress.quantize.widths import HW, WidthTable, width_table
from edgecompress.runtime.latency import Latency

from .conftest import run_cli


def _table(rate) -> WidthTable:
    """A table whose width c runs at rate(c) MMAC/ms."""
    return WidthTable("dev", "int8", 1, "x", {c: c * c * 9 * HW * HW / 1e6 / rate(c) for c in widths.WIDTHS})


def test_granularity_follows_the_measured_staircase():
    assert _table(lambda c: 300.0).granularity() == 8  # flat: the finest multiple keeps the most accuracy
    assert _table(lambda c: 300.0 if c % 16 == 0 else 240.0).granularity() == 16  # odd multiples of 8 are slow
    assert _table(lambda c: 300.0 if c % 32 == 0 else 200.0).granularity() == 32
    assert _table(lambda c: 300.0 if c % 16 == 0 else 295.0).granularity() == 8  # within 3 %: not worth it


class _Meter:
    """Times nothing: a file's p50 is its channel count's cost under ``rate``; counts the calls."""

    def __init__(self, key: str):
        self.info, self.calls = {"key": key, "dest": "local"}, 0

    def measure_latency(self, path, **kw) -> Latency:
        self.calls += 1
        kind, c = re.match(r"(?:(\w+)-)?c(\d+)", Path(path).name).groups()
        c = int(c)
        ms = widths.macs(kind or "dense", c) / 1e6 / (300.0 if c % 16 == 0 else 200.0)
        return Latency(1, 1, 30, ms, ms, ms, ms, 1e3 / ms)


def test_width_table_is_measured_once_per_device_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(widths, "is_local", lambda m: True)
    a = _Meter("board-a")
    t = width_table(a, int8=False, cache=tmp_path)
    assert a.calls == len(widths.WIDTHS) * widths.PASSES and not t.cached and t.granularity() == 16
    again = width_table(a, int8=False, cache=tmp_path)
    assert a.calls == len(widths.WIDTHS) * widths.PASSES and again.cached and again.ms == t.ms
    b = _Meter("board-b")  # another device: its own table
    width_table(b, int8=False, cache=tmp_path)
    assert b.calls == len(widths.WIDTHS) * widths.PASSES
    assert len(list(tmp_path.glob("widths-*.json"))) == 2
    assert t.to_dict()["round_to"] == 16 and t.to_dict()["mmac_per_ms_by_multiple"]["16"] == 300.0


def test_each_layer_kind_has_its_own_table(tmp_path, monkeypatch):
    """Depthwise and pointwise convs are timed in tables of their own (cached apart), whose MACs are
    those of their kind."""
    monkeypatch.setattr(widths, "is_local", lambda m: True)
    a = _Meter("board-a")
    dense = width_table(a, int8=False, cache=tmp_path)
    dw = width_table(a, int8=False, cache=tmp_path, kind="depthwise")
    pw = width_table(a, int8=False, cache=tmp_path, kind="pointwise")
    assert a.calls == 3 * len(widths.WIDTHS) * widths.PASSES
    assert {d.kind for d in (dense, dw, pw)} == {"dense", "depthwise", "pointwise"}
    assert dw.ms[64] == pytest.approx(64 * 9 * HW * HW / 1e6 / 300.0)  # c*9 MACs per pixel, not c*c*9
    assert pw.ms[40] == pytest.approx(40 * 40 * HW * HW / 1e6 / 200.0)
    assert dw.granularity() == pw.granularity() == dense.granularity() == 16
    names = sorted(f.name for f in tmp_path.glob("widths-*.json"))
    assert len(names) == 3 and sum("depthwise" in n for n in names) == sum("pointwise" in n for n in names) == 1
    assert width_table(a, int8=False, cache=tmp_path, kind="depthwise").cached and a.calls == 3 * 48


def test_round_to_by_kind_rounds_each_group_to_its_kind():
    """MobileNetV2's expanded channels pass through a depthwise conv: they round to the depthwise
    multiple; its residual streams (1x1 convs only) to the pointwise one."""
    from edgecompress.prune import prune

    x = torch.zeros(1, 1, 28, 28)

    def widths_of(cfg):
        torch.manual_seed(0)
        m = prune(create_model("mobilenetv2-small", num_classes=10).eval(), x, cfg).model
        convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
        dw = [c.out_channels for c in convs if c.groups > 1]
        pw_only = [c.out_channels for c in convs if c.kernel_size == (1, 1) and c.groups == 1]
        return dw, pw_only

    dw, pw = widths_of(PruneConfig(ratio=0.6, round_to=8, round_to_by_kind=("depthwise=16", "pointwise=4")))
    assert dw and all(c % 16 == 0 for c in dw)
    assert any(c % 8 for c in pw)  # a residual stream rounded to 4, not to round_to 8
    dw4, _ = widths_of(PruneConfig(ratio=0.6, round_to=4))
    assert any(c % 16 for c in dw4)  # uniform rounding to 4 would not have kept them at 16


def test_round_to_by_kind_is_parsed_strictly():
    assert PruneConfig(round_to_by_kind=("depthwise=32", "dense=8")).round_to_kinds() == {"depthwise": 32, "dense": 8}
    for bad in (("dw=16",), ("depthwise=0",), ("depthwise=x",), ("dense=8", "dense=16")):
        with pytest.raises(ConfigError, match="round_to_by_kind"):
            RunConfig.from_dict({"prune": {"round_to_by_kind": list(bad)}}).validate()


def _ctx(model, example):
    return SimpleNamespace(lm=SimpleNamespace(model=model), example=example)


def test_auto_is_fixed_for_small_models_and_given_structure():
    small = create_model("resnet8-tiny", num_classes=4).eval()
    x = torch.zeros(1, 1, 16, 16)
    assert structure._mode(_ctx(small, x), PruneConfig())["mode"] == Structure.FIXED
    assert "below the 200M" in structure._mode(_ctx(small, x), PruneConfig())["why"]
    assert structure._mode(_ctx(small, x), PruneConfig(round_to=16))["why"] == "auto: --round-to / --drop-blocks given"
    assert structure._mode(_ctx(small, x), PruneConfig(round_to_by_kind=("dense=16",)))["mode"] == Structure.FIXED
    assert structure._mode(_ctx(small, x), PruneConfig(structure="fastest"))["mode"] == Structure.FASTEST
    monkey = structure.AUTO_MIN_MACS
    try:
        structure.AUTO_MIN_MACS = 1000
        assert structure._mode(_ctx(small, x), PruneConfig())["mode"] == Structure.FASTEST
    finally:
        structure.AUTO_MIN_MACS = monkey


def test_fastest_refuses_what_decides_the_structure_itself():
    with pytest.raises(ConfigError, match="--structure fastest"):
        RunConfig.from_dict({"prune": {"structure": "fastest", "target_latency_ms": 1.0, "ratio": 0}}).validate()
    with pytest.raises(ConfigError, match="--structure"):
        RunConfig.from_dict({"prune": {"structure": "widest"}}).validate()


@pytest.mark.slow
def test_export_structure_fastest_times_the_candidates_and_keeps_the_fastest(tmp_path):
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--distill-epochs", "0",
                 "--calib-samples", "32", "--structure", "fastest", "--runs", "20", "--out", str(tmp_path / "o")],
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    pr = m["stage_results"]["prune"]
    st = pr["structure"]
    assert st["mode"] == "fastest" and {c["drop_blocks"] for c in st["candidates"]} == {0, 1}  # one residual block
    g = st["width_table"]["round_to"]
    assert {c["round_to"] for c in st["candidates"] if c["drop_blocks"] == 1} <= {g, 2 * g, *(r for r in (8, 16) if r < g)}
    timed = [c for c in st["candidates"] if "p50_ms" in c]
    best = min(timed, key=lambda c: c["p50_ms"])
    assert (st["drop_blocks"], st["round_to"]) == (best["drop_blocks"], best["round_to"])
    assert pr["round_to"] == st["round_to"] and len(pr.get("dropped_blocks", [])) == st["drop_blocks"]
    assert st["width_table"]["round_to"] in (8, 16, 32) and not st["width_table"]["cached"]
    assert list((tmp_path / ".cache" / "edgecompress").glob("widths-*-int8-t1.json"))  # cached under HOME
    report = (tmp_path / "o" / "report.md").read_text()
    assert "Structure chosen by measured latency" in report
    # the structure record does not hide the stages after it (it once shadowed the stage results)
    assert "**Structural check, pruning step 1**" in report and "**INT8**: onnxruntime static PTQ" in report


TINY_MOBILENET = """
import torch.nn as nn


class InvertedResidual(nn.Module):
    def __init__(self, c, e):
        super().__init__()
        h = c * e
        self.f = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                               nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                               nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.f(x)


def model():
    return nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                         InvertedResidual(32, 4), InvertedResidual(32, 4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""


@pytest.mark.slow
def test_structure_fastest_times_a_per_kind_candidate_when_the_tables_disagree(tmp_path):
    """Width tables seeded in the cache (this device's key and onnxruntime version): depthwise
    convs run best at multiples of 32, the others at 8. The search then times, beside the uniform
    multiples, a candidate that rounds each group to its kind's multiple, and the pruned model
    follows whichever it chose."""
    import onnxruntime as ort

    from edgecompress.runtime.meter import LOCAL

    cache = tmp_path / ".cache" / "edgecompress"  # run_cli's HOME is tmp_path
    cache.mkdir(parents=True)
    for kind, fast in (("dense", 8), ("pointwise", 8), ("depthwise", 32)):
        ms = {c: widths.macs(kind, c) / 1e6 / (300.0 if c % fast == 0 else 150.0) for c in widths.WIDTHS}
        f = widths.table_file(cache, LOCAL.info["key"], ort.__version__, "int8", 1, kind)
        f.write_text(json.dumps({"schema": widths.SCHEMA, "kind": kind, "device": LOCAL.info["key"], "precision": "int8",
                                 "threads": 1, "onnxruntime": ort.__version__, "ms": {str(c): t for c, t in ms.items()}}))
    (tmp_path / "tiny_mbv2.py").write_text(TINY_MOBILENET)
    p = run_cli(["export", "tiny_mbv2.py:model", "--input-shape", "1,1,28,28", "--data", "random", "--distill-epochs",
                 "0", "--prune-ratio", "0.5", "--calib-samples", "16", "--structure", "fastest", "--runs", "10",
                 "--latency-aware-int8", "off", "--out", str(tmp_path / "o")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    st = m["stage_results"]["prune"]["structure"]
    assert {k: t["round_to"] for k, t in st["width_tables"].items()} == {"dense": 8, "depthwise": 32, "pointwise": 8}
    assert all(t["cached"] for t in st["width_tables"].values())  # read from the seeded cache, not measured
    per_kind = [c for c in st["candidates"] if c.get("round_to_by_kind")]
    assert per_kind and all(c["round_to_by_kind"] == ["dense=8", "depthwise=32", "pointwise=8"] for c in per_kind)
    timed = [c for c in st["candidates"] if "p50_ms" in c]
    best = min(timed, key=lambda c: c["p50_ms"])
    assert st["round_to_by_kind"] == best.get("round_to_by_kind", [])
    assert m["config"]["prune"]["round_to_by_kind"] == []  # the user's config; the choice is in the record
    if st["round_to_by_kind"]:
        import onnx

        g = onnx.load(str(tmp_path / "o" / "pruned.onnx")).graph
        inits = {i.name: i for i in g.initializer}
        dw = [n for n in g.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        assert dw and all(inits[n.input[1]].dims[0] % 32 == 0 for n in dw if n.input[1] in inits)
