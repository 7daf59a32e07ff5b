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
        c = int(re.match(r"c(\d+)", Path(path).name).group(1))
        ms = c * c * 9 * HW * HW / 1e6 / (300.0 if c % 16 == 0 else 200.0)
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


def _ctx(model, example):
    return SimpleNamespace(lm=SimpleNamespace(model=model), example=example)


def test_auto_is_fixed_for_small_models_and_given_structure():
    small = create_model("resnet8-tiny", num_classes=4).eval()
    x = torch.zeros(1, 1, 16, 16)
    assert structure._mode(_ctx(small, x), PruneConfig())["mode"] == Structure.FIXED
    assert "below the 200M" in structure._mode(_ctx(small, x), PruneConfig())["why"]
    assert structure._mode(_ctx(small, x), PruneConfig(round_to=16))["why"] == "auto: --round-to / --drop-blocks given"
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
    assert "Structure chosen by measured latency" in (tmp_path / "o" / "report.md").read_text()
