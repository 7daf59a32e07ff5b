"""--allocation sensitivity: per-group ratios from a sensitivity table."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.config import PruneConfig, RunConfig
from edgecompress.data import Dataset
from edgecompress.errors import BadInput, ConfigError
from edgecompress.prune import prune
from edgecompress.prune.allocation import allocate, drop_curves, load_table, ratio_for_budget
from edgecompress.prune.sensitivity import SensitivityConfig, ratios_up_to, sensitivity

X = torch.zeros(1, 1, 16, 16)


class _TwoPath(nn.Module):
    """A main branch that carries the signal and a side branch scaled by 0.01: cutting the side
    branch's channels barely changes a prediction, cutting the main one's does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.main1, self.main2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.Conv2d(16, 16, 1, bias=False)
        self.side1, self.side2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.Conv2d(16, 16, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 4, bias=False)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = self.main2(torch.relu(self.main1(h))) + 0.01 * self.side2(torch.relu(self.side1(h)))
        return self.fc(self.pool(h).flatten(1))


def test_budget_gives_each_group_its_largest_affordable_ratio():
    table = {"rows": [{"group": "a", "ratio": r, "drop_points": d} for r, d in ((0.25, 0.0), (0.5, 2.0), (0.75, 1.0))]
             + [{"group": "b", "ratio": r, "drop_points": d} for r, d in ((0.25, 4.0), (0.5, 8.0), (0.75, 30.0))]}
    curves = drop_curves(table)
    assert curves["a"] == ([0.0, 0.25, 0.5, 0.75], [0.0, 0.0, 2.0, 2.0])  # noise cannot make a bigger cut cheaper
    assert ratio_for_budget(*curves["a"], 1.0) == pytest.approx(0.375)  # interpolated between 0.25 and 0.5
    assert ratio_for_budget(*curves["b"], 2.0) == pytest.approx(0.125)
    assert allocate(curves, 0.0, 0.9) == {"a": 0.25, "b": 0.0}
    assert allocate(curves, 100.0, 0.6) == {"a": 0.6, "b": 0.6}  # capped by max_layer_ratio


def test_less_sensitive_groups_are_pruned_more(tmp_path):
    torch.manual_seed(0)
    model = _TwoPath().eval()
    x = np.random.default_rng(0).standard_normal((256, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():  # labels: the model's own predictions (top-1 = 100 %), so a drop is a changed prediction
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    table = sensitivity(model, X, Dataset(x, y, "self-labelled"), SensitivityConfig(ratios=(0.25, 0.5, 0.75)))
    drop = {(r["group"], r["ratio"]): r["drop_points"] for r in table["rows"]}
    assert drop[("side1", 0.5)] < 5 < drop[("main1", 0.25)]  # the table sees the difference
    (tmp_path / "s.json").write_text(json.dumps(table))
    cfg = PruneConfig(ratio=0.25, round_to=1, allocation="sensitivity", sensitivity=str(tmp_path / "s.json"))
    res = prune(model, X, cfg)
    ratios = res.allocation["group_ratios"]
    assert res.macs_after <= 0.75 * res.macs_before
    assert ratios["side1"] > 0.4 and ratios["side1"] > max(ratios["main1"], ratios["stem"], ratios["main2"])
    assert res.model.side1.out_channels < res.model.main1.out_channels
    assert res.summary()["sensitivity_allocation"]["group_ratios"] == ratios  # what the manifest records
    uniform = prune(model, X, PruneConfig(ratio=0.25, round_to=1))
    with torch.no_grad():
        agree = {k: float((r.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
                 for k, r in (("sensitivity", res), ("uniform", uniform))}
    assert agree["sensitivity"] > agree["uniform"], agree  # same MACs target, fewer predictions changed


def test_bad_tables_and_configs_name_the_way_out(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        load_table(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"rows": [{"group": "x"}]}')
    with pytest.raises(BadInput, match="not a sensitivity table"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"rows": [{"group": "nope", "ratio": 0.5, "drop_points": 1}]}')
    with pytest.raises(BadInput, match="names no prunable layer"):
        prune(_TwoPath().eval(), X, PruneConfig(ratio=0.3, allocation="sensitivity", sensitivity=str(tmp_path / "other.json")))
    with pytest.raises(BadInput, match="needs a table"):
        prune(_TwoPath().eval(), X, PruneConfig(ratio=0.3, allocation="sensitivity"))
    with pytest.raises(ConfigError, match="--allocation sensitivity"):
        RunConfig.from_dict({"prune": {"sensitivity": "s.json"}}).validate()
    with pytest.raises(ConfigError, match="not --target-latency-ms"):
        RunConfig.from_dict({"prune": {"allocation": "sensitivity", "target_latency_ms": 1.0}}).validate()


def test_unreachable_target_names_the_way_out(tmp_path):
    rows = [{"group": g, "ratio": r, "drop_points": 1.0} for g in ("stem", "main1", "side1", "main2") for r in (0.25, 0.5)]
    (tmp_path / "s.json").write_text(json.dumps({"rows": rows}))
    cfg = PruneConfig(ratio=0.9, round_to=1, allocation="sensitivity", sensitivity=str(tmp_path / "s.json"))
    with pytest.raises(BadInput, match="measure larger ratios"):
        prune(_TwoPath().eval(), X, cfg)
    rows = [{"group": g, "ratio": r, "drop_points": 1.0} for g in ("stem", "main1", "side1", "main2") for r in (0.5, 0.9)]
    (tmp_path / "s.json").write_text(json.dumps({"rows": rows}))  # measured up to the cap: nothing more to measure
    with pytest.raises(BadInput, match="up to 90% of its channels.*lower the target, drop residual blocks"):
        prune(_TwoPath().eval(), X, PruneConfig(ratio=0.999, round_to=1, allocation="sensitivity",
                                               sensitivity=str(tmp_path / "s.json")))


def test_the_measured_table_reaches_the_pruners_per_layer_cap(tmp_path):
    assert ratios_up_to(0.9) == (0.25, 0.5, 0.75, 0.9)
    assert ratios_up_to(0.75) == (0.25, 0.5, 0.75)
    assert ratios_up_to(0.6) == (0.25, 0.5, 0.6)
    model = _TwoPath().eval()
    for ratios, reached in (((0.25, 0.5, 0.75), False), (ratios_up_to(0.9), True)):
        rows = [{"group": g, "ratio": r, "drop_points": 10 * r} for g in ("stem", "main1", "side1", "main2") for r in ratios]
        (tmp_path / "s.json").write_text(json.dumps({"rows": rows}))
        # 95 % of MACs: out of reach when no group may lose more than 75 % of its channels
        cfg = PruneConfig(ratio=0.95, round_to=1, allocation="sensitivity", sensitivity=str(tmp_path / "s.json"))
        if reached:
            res = prune(model, X, cfg)
            assert res.macs_after <= 0.05 * res.macs_before and max(res.allocation["group_ratios"].values()) > 0.75
        else:
            with pytest.raises(BadInput, match="up to 75% of its channels"):
                prune(model, X, cfg)


def test_export_measures_the_table_on_the_validation_split_and_records_the_ratios(tmp_path):
    from edgecompress.config import BenchConfig, DataConfig, DistillConfig, ModelConfig, QuantConfig
    from edgecompress.pipeline import run

    from .conftest import make_npz

    out = tmp_path / "o"
    cfg = RunConfig(model=ModelConfig(name="resnet8-tiny", num_classes=4),
                    data=DataConfig(data=str(make_npz(tmp_path / "d.npz", n=300)), max_eval=60, val_fraction=0.2),
                    prune=PruneConfig(ratio=0.4, round_to=2, allocation="sensitivity"),
                    distill=DistillConfig(epochs=0), quant=QuantConfig(mode="none"),
                    bench=BenchConfig(runs=3, warmup=1), out=str(out))
    res = run(cfg, log=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert res.exit_code == 0 and m["status"] == "complete"
    alloc = m["stage_results"]["prune"]["sensitivity_allocation"]
    table = json.loads((out / "sensitivity.json").read_text())
    assert set(alloc["group_ratios"]) == {r["group"] for r in table["rows"]}
    assert table["val_samples"] == 48  # 20 % of the 240 training samples, never the eval set
    assert table["ratios"] == [0.25, 0.5, 0.75, 0.9]  # up to PruneConfig.max_layer_ratio
    assert m["artifacts"]["pruned"]["macs"] <= 0.6 * m["artifacts"]["original"]["macs"]


def test_groups_the_table_does_not_cover_are_recorded_and_warned_about(tmp_path):
    """A table measured on another version of the model can miss a group: that group is left whole
    (and the others thinned harder), so the manifest must say which and how to fix it."""
    from edgecompress.config import BenchConfig, DataConfig, DistillConfig, ModelConfig, QuantConfig
    from edgecompress.pipeline import run

    from .conftest import make_npz

    base = RunConfig(model=ModelConfig(name="resnet8-tiny", num_classes=4),
                     data=DataConfig(data=str(make_npz(tmp_path / "d.npz", n=300)), max_eval=60, val_fraction=0.2),
                     prune=PruneConfig(ratio=0.3, round_to=2, allocation="sensitivity"),
                     distill=DistillConfig(epochs=0), quant=QuantConfig(mode="none"),
                     bench=BenchConfig(runs=3, warmup=1), out=str(tmp_path / "full"))
    assert run(base, log=lambda m: None).exit_code == 0
    full = json.loads((tmp_path / "full" / "sensitivity.json").read_text())
    assert json.loads((tmp_path / "full" / "manifest.json").read_text())["warnings"] == []
    left_out = full["rows"][0]["group"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(full | {"rows": [r for r in full["rows"] if r["group"] != left_out]}))
    lines: list[str] = []
    cfg = replace(base, prune=replace(base.prune, sensitivity=str(partial)), out=str(tmp_path / "partial"))
    assert run(cfg, log=lines.append).exit_code == 0
    m = json.loads((tmp_path / "partial" / "manifest.json").read_text())
    alloc = m["stage_results"]["prune"]["sensitivity_allocation"]
    assert alloc["groups_without_curve"] == [left_out] and left_out not in alloc["group_ratios"]
    assert alloc["inherited_curves"] == {}
    assert len(m["warnings"]) == 1 and left_out in m["warnings"][0] and "edgecompress sensitivity" in m["warnings"][0]
    assert any(line.startswith("warning:") and left_out in line for line in lines)
    assert m["artifacts"]["pruned"]["macs"] <= 0.7 * m["artifacts"]["original"]["macs"]  # the target is still met


def test_cli_flags_reach_the_config(capsys):
    from edgecompress.cli import main

    assert main(["export", "resnet8-tiny", "--allocation", "sensitivity", "--sensitivity", "s.json", "--dry-run"]) == 0
    prune_cfg = json.loads(capsys.readouterr().out)["config"]["prune"]
    assert prune_cfg["allocation"] == "sensitivity" and prune_cfg["sensitivity"] == "s.json"
    assert main(["export", "resnet8-tiny", "--sensitivity", "s.json", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--allocation sensitivity" in err and err.count("\n") == 1


def test_a_group_whose_root_was_dropped_gets_the_tables_curve():
    """After depth pruning, a residual stage's coupled group can lose its (full-model) root with the
    dropped block; the table still measured that group, and its new root is one of its members."""
    from edgecompress.config import ModelConfig
    from edgecompress.models import load_model
    from edgecompress.prune import output_layers
    from edgecompress.prune.allocation import table_curves_for

    model = load_model(ModelConfig(name="mobilenetv2-small"), data_shape=(1, 28, 28)).model.eval()
    x = torch.zeros(1, 1, 28, 28)
    data = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    table = sensitivity(model, x, Dataset(data, np.zeros(8, dtype=np.int64), "noise"), SensitivityConfig(ratios=(0.5,)))
    measured = {r["group"] for r in table["rows"]}
    assert "features.6.conv.2.0" in measured and "features.4.conv.2.0" not in measured  # the stage's root: its last block
    model.features[5], model.features[6] = nn.Identity(), nn.Identity()  # what --drop-blocks does to two blocks
    match = table_curves_for(model, x, output_layers(model, x), table)
    curves = match.curves
    assert curves["features.4.conv.2.0"] == drop_curves(table)["features.6.conv.2.0"]
    assert match.inherited == {"features.4.conv.2.0": "features.6.conv.2.0"} and match.missing == []
    assert "features.6.conv.2.0" not in curves and "features.5.conv.1.0" not in curves  # gone with their blocks
    assert {g for g in measured if not g.startswith(("features.5.", "features.6."))} <= set(curves)


def test_a_group_is_thinned_to_round_to_channels_not_left_whole(tmp_path):
    """torch-pruning rounds the kept count down to a multiple of round-to and leaves the group whole
    when that is 0; a ratio that keeps fewer than round-to channels must keep round-to instead."""
    rows = [{"group": g, "ratio": r, "drop_points": r} for g in ("stem", "main1", "side1", "main2") for r in (0.5, 0.9)]
    (tmp_path / "s.json").write_text(json.dumps({"rows": rows}))
    res = prune(_TwoPath().eval(), X, PruneConfig(ratio=0.7, round_to=8, allocation="sensitivity",
                                                 sensitivity=str(tmp_path / "s.json")))
    assert res.macs_after <= 0.3 * res.macs_before
    widths = [m.out_channels for m in (res.model.stem, res.model.main1, res.model.side1)]
    assert set(widths) <= {8, 16} and 8 in widths
