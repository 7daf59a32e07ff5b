import pytest

from edgecompress.config import PruneConfig, RunConfig, load_recipe, merge
from edgecompress.errors import ConfigError


def test_config_round_trips_through_dict():
    cfg = RunConfig(prune=PruneConfig(ratio=0.7, ignore=("layer1.0.conv1",)), seed=3)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _rich_config() -> RunConfig:
    return RunConfig.from_dict({
        "prune": {"ratio": 0.6, "importance": "taylor", "allocation": "global", "ignore": ["fc"]},
        "quant": {"method": "entropy", "target": "x86-avx2", "activation_type": "int8"},
        "onnx": {"exporter": "torchscript"}, "stages": ["prune", "kd", "ptq"], "seed": 5,
    }).validate()  # fmt: skip


def test_config_round_trips_through_json_and_toml(tmp_path):
    import json

    from edgecompress.config import Importance, Stage

    cfg = _rich_config()
    assert cfg.prune.importance is Importance.TAYLOR and cfg.stages == (Stage.PRUNE, Stage.DISTILL, Stage.PTQ)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    (tmp_path / "r.toml").write_text(cfg.to_toml())
    assert RunConfig.from_dict(load_recipe(tmp_path / "r.toml")) == cfg


def test_config_version_is_checked():
    d = _rich_config().to_dict()
    assert d["config_version"] == 1
    with pytest.raises(ConfigError, match="config_version"):
        RunConfig.from_dict(d | {"config_version": 99})


@pytest.mark.parametrize(
    "d, needle",
    [
        ({"prune": {"ratoi": 0.5}}, "ratoi"),
        ({"prune": {"ratio": "half"}}, "ratio"),
        ({"seed": 1.5}, "seed"),
        ({"quant": {"per_channel": "yes"}}, "per_channel"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_strict_parsing_names_the_key(d, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_rejected(ratio):
    with pytest.raises(ConfigError, match="prune-ratio"):
        RunConfig(prune=PruneConfig(ratio=ratio)).validate()


def test_recipe_then_flags_precedence(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('seed = 7\n[prune]\nratio = 0.6\nimportance = "l1"\n[distill]\nepochs = 2.0\n')
    recipe = load_recipe(r)
    cfg = RunConfig.from_dict(merge(recipe, {"prune": {"ratio": 0.3}}))
    assert cfg.prune.ratio == 0.3 and cfg.prune.importance == "l1"  # flag beats recipe, recipe kept
    assert cfg.distill.epochs == 2.0 and cfg.seed == 7


def test_recipe_bad_toml_is_config_error(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text("[prune\nratio=")
    with pytest.raises(ConfigError, match="TOML"):
        load_recipe(r)


def test_import_edgecompress_stays_light():
    import subprocess
    import sys

    code = "import sys, edgecompress; print(any(m in sys.modules for m in ('torch', 'onnxruntime', 'torch_pruning')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "kw, plan",
    [
        ({}, ("prune", "distill", "ptq")),
        ({"quant": {"mode": "none"}}, ("prune", "distill")),
        ({"distill": {"epochs": 0.0}}, ("prune", "ptq")),
        ({"prune": {"ratio": 0.0}}, ("ptq",)),
        ({"stages": ["ptq"]}, ("ptq",)),
        ({"stages": ["prune", "kd"]}, ("prune", "distill")),  # kd: the short name
        ({"stages": ["prune", "qat"]}, ("prune", "qat")),
        ({"stages": ["prune", "distill", "qat"]}, ("prune", "distill", "qat")),
    ],
)
def test_stage_plan(kw, plan):
    assert RunConfig.from_dict(kw).validate().plan() == plan


@pytest.mark.parametrize("stages", [["ptq", "prune"], ["kd", "ptq"], ["prune", "ptq", "qat"], ["bogus"]])
def test_bad_stage_orders_are_rejected(stages):
    with pytest.raises(ConfigError, match="stages"):
        RunConfig.from_dict({"stages": stages}).validate()


def test_qat_mode_replaces_ptq_after_kd():
    assert RunConfig.from_dict({"quant": {"mode": "qat"}}).validate().plan() == ("prune", "distill", "qat")
    no_kd = {"quant": {"mode": "qat"}, "distill": {"epochs": 0}}
    assert RunConfig.from_dict(no_kd).validate().plan() == ("prune", "qat")
