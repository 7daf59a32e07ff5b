"""Distillation options: early stopping, feature KD, cached teacher logits, mixup."""

import copy
import json
import math

import pytest
import torch

from edgecompress.config import DistillConfig, RunConfig
from edgecompress.data import Dataset
from edgecompress.errors import BadInput, ConfigError
from edgecompress.models.zoo import create_model
from edgecompress.train.distill import distill
from edgecompress.train.loop import TrainConfig, cross_entropy, fit, mixed_targets, mixup

from .conftest import quadrants, run_cli


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights():
    torch.manual_seed(0)
    model = create_model("resnet8-tiny", num_classes=4)
    train = quadrants(128, 0)  # 4 steps per epoch at batch 32
    scores, states = iter([0.5, 0.9, 0.8, 0.7, 0.95]), []

    def validate(m):
        states.append(_state(m))
        return next(scores)

    res = fit(model, train, TrainConfig(epochs=10, batch_size=32), cross_entropy, validate=validate, patience=2)
    assert res.stopped_early and res.steps == 4 * 4 and res.planned_steps == 40
    assert res.val_top1 == [0.5, 0.9, 0.8, 0.7] and res.val_steps == [4, 8, 12, 16]
    assert res.best_step == 8
    now = _state(model)
    assert all(torch.equal(now[k], states[1][k]) for k in now)  # round 2's weights, not the last ones
    assert not all(torch.equal(now[k], states[3][k]) for k in now if now[k].is_floating_point())


def test_fractional_epochs_validate_once_at_the_end():
    model = create_model("resnet8-tiny", num_classes=4)
    res = fit(model, quadrants(128, 0), TrainConfig(epochs=0.5, batch_size=32), cross_entropy,
              validate=lambda m: 0.5, patience=1)  # fmt: skip
    assert res.val_steps == [2] and not res.stopped_early and res.best_step == 2


def test_distill_records_the_validation_history_on_the_training_split():
    torch.manual_seed(0)
    teacher = create_model("resnet8-tiny", num_classes=4)
    fit(teacher, quadrants(512, 0), TrainConfig(epochs=2, lr=0.05, augment_shift=0, augment_flip=False), cross_entropy)
    student = copy.deepcopy(teacher)
    val = quadrants(128, 5)
    res = distill(student, teacher, quadrants(256, 0), DistillConfig(epochs=2.5, batch_size=64, patience=3), val=val)
    assert [h["epoch"] for h in res.val_history] == [1.0, 2.0, 2.5]
    assert res.best_epoch in (1.0, 2.0, 2.5)
    best = max(h["val_top1"] for h in res.val_history)
    assert res.val_top1_after == best  # the kept weights are the best round's
    plain = distill(copy.deepcopy(teacher), teacher, quadrants(256, 0), DistillConfig(epochs=0.5), val=val)
    assert plain.val_history == [] and plain.best_epoch is None  # patience 0: no per-epoch validation


def test_patience_without_labelled_validation_data_is_bad_input():
    m = create_model("resnet8-tiny", num_classes=4)
    unlabelled = Dataset(quadrants(64, 0).x, None, "x")
    with pytest.raises(BadInput, match="kd-patience"):
        distill(m, copy.deepcopy(m), unlabelled, DistillConfig(epochs=1, alpha=1.0, patience=1), val=unlabelled)
    with pytest.raises(ConfigError, match="kd-patience"):
        RunConfig.from_dict({"distill": {"patience": -1}}).validate()


def test_kd_flags_reach_the_resolved_config(tmp_path):
    p = run_cli(["export", "resnet8-tiny", "--kd-patience", "2", "--val-fraction", "0.2", "--dry-run"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)["config"]
    assert cfg["distill"]["patience"] == 2 and cfg["data"]["val_fraction"] == 0.2
    p = run_cli(["export", "resnet8-tiny", "--kd-patience", "-1", "--dry-run"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "kd-patience" in p.stderr


@pytest.fixture(scope="module")
def pruned_pair():
    from edgecompress.config import PruneConfig
    from edgecompress.prune import prune

    torch.manual_seed(0)
    teacher = create_model("resnet8-tiny", num_classes=4)
    fit(teacher, quadrants(512, 0), TrainConfig(epochs=2, lr=0.05, augment_shift=0, augment_flip=False), cross_entropy)
    teacher.eval()
    student = prune(copy.deepcopy(teacher), torch.zeros(1, 1, 16, 16), PruneConfig(ratio=0.5, round_to=2)).model
    return teacher, student


def test_feature_hints_build_adapters_from_student_to_teacher_channels(pruned_pair):
    from edgecompress.train.features import FeatureHints

    teacher, student = pruned_pair
    names = ("layer1", "layer2", "layer3")
    hints = FeatureHints(student, teacher, names, torch.zeros(1, 1, 16, 16))
    for rec in hints.record:
        s_ch = dict(student.named_modules())[rec["name"]][-1].bn2.num_features
        t_ch = dict(teacher.named_modules())[rec["name"]][-1].bn2.num_features
        assert (rec["student_channels"], rec["teacher_channels"]) == (s_ch, t_ch)
        a = hints.adapters[rec["name"]]
        if s_ch != t_ch:
            assert isinstance(a, torch.nn.Conv2d) and tuple(a.weight.shape) == (t_ch, s_ch, 1, 1)
        else:
            assert isinstance(a, torch.nn.Identity)
    assert sum(r["adapter"] for r in hints.record) >= 2  # pruning at 50% changed most block widths


def test_feature_kd_runs_on_a_pruned_student_and_the_feature_loss_falls(pruned_pair):
    teacher, pruned = pruned_pair
    student = copy.deepcopy(pruned)
    cfg = DistillConfig(epochs=3, lr=0.05, batch_size=64, features=("layer1", "layer2", "layer3"), feature_weight=1.0)
    res = distill(student, teacher, quadrants(512, 0), cfg, val=quadrants(128, 3))
    assert res.steps == 24 and [h["name"] for h in res.feature_hints] == list(cfg.features)
    assert res.feature_loss_last < 0.7 * res.feature_loss_first, (res.feature_loss_first, res.feature_loss_last)
    # the hooks are gone and the student's architecture is unchanged (adapters are discarded)
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    assert student.state_dict().keys() == pruned.state_dict().keys()


def test_unknown_feature_name_lists_close_names(pruned_pair):
    teacher, student = pruned_pair
    with pytest.raises(BadInput, match="layer2") as e:
        distill(copy.deepcopy(student), teacher, quadrants(64, 0), DistillConfig(epochs=0.5, features=("layr2",)))
    assert "\n" not in str(e.value) and "--kd-features layr2" in str(e.value)


def test_cached_teacher_logits_run_the_teacher_once_per_sample(pruned_pair):
    teacher, pruned = pruned_pair
    train = quadrants(300, 0)
    base = dict(epochs=3, lr=0.05, batch_size=50, augment_shift=0, augment_flip=False)
    a, b = copy.deepcopy(pruned), copy.deepcopy(pruned)
    ra = distill(a, teacher, train, DistillConfig(**base, cache_teacher=True), seed=1)
    rb = distill(b, teacher, train, DistillConfig(**base), seed=1)
    assert ra.steps == rb.steps == 18
    assert ra.teacher_forward_batches == 1 and rb.teacher_forward_batches == 18  # 300 samples: one 512-batch
    # same batches, same targets (up to float batch-size effects): the students agree
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, b.state_dict()[k], atol=1e-3), k


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"cache_teacher": True}, "kd-augment-shift 0 --no-kd-augment-flip"),
        ({"cache_teacher": True, "augment_shift": 0, "augment_flip": False, "features": ["layer1"]}, "kd-features"),
        ({"feature_weight": -1.0}, "kd-feature-weight"),
        ({"mixup": -0.2}, "kd-mixup"),
        ({"mixup": float("nan")}, "kd-mixup"),
        ({"mixup": 0.2, "cache_teacher": True, "augment_shift": 0, "augment_flip": False}, "kd-mixup"),
    ],
)
def test_kd_option_conflicts_are_one_line_config_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        RunConfig.from_dict({"distill": kw}).validate()
    assert "\n" not in str(e.value)


def test_kd_feature_flags_reach_the_resolved_config(tmp_path):
    args = ["export", "resnet8-tiny", "--kd-features", "layer1,layer2", "--kd-feature-weight", "0.5",
            "--kd-cache-teacher", "--kd-augment-shift", "0", "--no-kd-augment-flip", "--dry-run"]  # fmt: skip
    p = run_cli(args, cwd=tmp_path)
    assert p.returncode == 2 and "kd-features" in p.stderr  # cache + features conflict
    p = run_cli([a for a in args if a != "--kd-cache-teacher"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)["config"]["distill"]
    assert d["features"] == ["layer1", "layer2"] and d["feature_weight"] == 0.5
    assert d["augment_shift"] == 0 and d["augment_flip"] is False and d["cache_teacher"] is False


def test_mixup_blends_each_image_with_one_other_and_the_labels_alike():
    g = torch.Generator().manual_seed(3)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1) * torch.ones(8, 1, 2, 2)
    out, perm, lam = mixup(x, g, 0.4)
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(out, lam * x + (1 - lam) * x[perm])
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    t = mixed_targets(y, perm, lam, 5)
    assert t.shape == (8, 5) and torch.allclose(t.sum(1), torch.ones(8)) and torch.all(t[:, 4] == 0)
    for i in range(8):
        a, b = int(y[i]), int(y[perm[i]])
        assert t[i, a] == pytest.approx(1.0 if a == b else lam) and t[i, b] == pytest.approx(1.0 if a == b else 1 - lam)
    # the same generator state draws the same blend (a resumed run repeats it)
    again = mixup(x, torch.Generator().manual_seed(3), 0.4)
    assert again[2] == lam and torch.equal(again[1], perm)
    # small a: blends near the ends; large a: near the middle
    g = torch.Generator().manual_seed(0)
    lo = [mixup(x, g, 0.05)[2] for _ in range(200)]
    hi = [mixup(x, g, 50.0)[2] for _ in range(200)]
    assert sum(abs(v - 0.5) > 0.4 for v in lo) > 150 and all(abs(v - 0.5) < 0.2 for v in hi)


def test_mixup_label_out_of_range_is_one_line_bad_input():
    with pytest.raises(BadInput, match="label 7 but the model has 4 outputs"):
        mixed_targets(torch.tensor([0, 7]), torch.tensor([1, 0]), 0.5, 4)


def test_distill_with_mixup_shows_the_teacher_the_blended_batch(pruned_pair, monkeypatch):
    import edgecompress.train.distill as dmod

    teacher, pruned = pruned_pair
    train = quadrants(256, 0)
    seen, targets = [], []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    real = dmod.kd_loss

    def spy(s, t, y, alpha, temperature):
        targets.append(y)
        return real(s, t, y, alpha, temperature)

    monkeypatch.setattr(dmod, "kd_loss", spy)
    cfg = DistillConfig(epochs=1, lr=0.05, batch_size=64, augment_shift=0, augment_flip=False, mixup=1.0)
    try:
        res = distill(copy.deepcopy(pruned), teacher, train, cfg, seed=0)
    finally:
        hook.remove()
    assert res.steps == 4 and len(seen) == 4 and len(targets) == 4
    originals = torch.from_numpy(train.x)
    for xb in seen:  # each teacher batch is a blend, not a batch of training images
        exact = (xb[:, None] == originals[None]).flatten(2).all(2).any(1)
        assert not exact.all()
    for y in targets:  # soft targets: the CE term gets the blended labels
        assert y.dtype == torch.float32 and y.shape == (64, 4) and torch.allclose(y.sum(1), torch.ones(64))
        assert (y.max(1).values < 1).any()
    assert math.isfinite(res.final_loss)


def test_kd_mixup_flag_reaches_the_resolved_config(tmp_path):
    p = run_cli(["export", "resnet8-tiny", "--kd-mixup", "0.2", "--dry-run"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["config"]["distill"]["mixup"] == 0.2
    p = run_cli(["export", "resnet8-tiny", "--kd-mixup", "-1", "--dry-run"], cwd=tmp_path)
    assert p.returncode == 2 and "--kd-mixup -1.0: must be >= 0" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"distill": {"patience": 2}}, "--kd-patience 2"),
        ({"verify": {"max_accuracy_drop": 0.5}}, "--max-accuracy-drop 0.5"),
        ({"prune": {"allocation": "sensitivity"}}, "--allocation sensitivity without --sensitivity FILE"),
    ],
)
def test_val_fraction_zero_refuses_what_needs_a_validation_split(extra, needle):
    with pytest.raises(ConfigError, match="--val-fraction 0 leaves no validation split") as e:
        RunConfig.from_dict({"data": {"val_fraction": 0.0}} | extra).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)
    RunConfig.from_dict({"data": {"val_fraction": 0.1}} | extra).validate()  # with a split: fine


def test_val_fraction_zero_distils_on_all_the_training_data(tmp_path):
    """--val-fraction 0: every non-eval sample trains; a table given as a file still works."""
    from edgecompress.config import BenchConfig, DataConfig, ModelConfig, PruneConfig, QuantConfig
    from edgecompress.data import load_splits
    from edgecompress.pipeline import run

    from .conftest import make_npz

    data = make_npz(tmp_path / "d.npz", n=300)
    s = load_splits(str(data), None, input_shape=(1, 16, 16), val_fraction=0.0)
    assert len(s.train) == 240 and len(s.val) == 0 and len(s.eval) == 60  # 20% held out for eval, nothing for val
    assert len(load_splits(str(data), None, input_shape=(1, 16, 16), val_fraction=0.1).train) == 216
    out = tmp_path / "o"
    cfg = RunConfig(model=ModelConfig(name="resnet8-tiny", num_classes=4),
                    data=DataConfig(data=str(data), val_fraction=0.0),
                    prune=PruneConfig(ratio=0.4, round_to=2), distill=DistillConfig(epochs=1, batch_size=64),
                    quant=QuantConfig(mode="ptq", calib_samples=32), bench=BenchConfig(runs=3, warmup=1),
                    out=str(out))  # fmt: skip
    res = run(cfg, log=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert res.exit_code == 0 and m["status"] == "complete", m.get("warnings")
    assert m["data"]["train"] == 240 and m["data"]["val"] == 0
    d = m["stage_results"]["distill"]
    assert d["steps"] == 4  # 240 samples at batch 64: all of them trained
    assert d["schedule"][0]["val_top1_before"] is None and d["schedule"][0]["val_top1_after"] is None
