"""QAT with KD -> QDQ ONNX that onnxruntime runs with int8 kernels (tiny 4-class problem)."""

import math

import onnx
import pytest
import torch

from edgecompress.config import QatConfig
from edgecompress.errors import ConfigError
from edgecompress.models.zoo import create_model
from edgecompress.quantize.qat import (
    PARITY_STEPS,
    _Phases,
    check_qat_parity,
    export_qat_onnx,
    freeze_bn_stats,
    prepare,
    qat,
    qat_parity,
)  # fmt: skip
from edgecompress.runtime import kernel_report, make_session, run_batched
from edgecompress.train.loop import TrainConfig, cross_entropy, fit, top1

from .conftest import quadrants as _quadrants


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    train, test = _quadrants(1024, 0), _quadrants(512, 1)
    teacher = create_model("resnet8-tiny", num_classes=4)
    fit(teacher, train, TrainConfig(epochs=3, lr=0.05, augment_flip=False, augment_shift=0), cross_entropy)
    teacher_top1 = top1(teacher, test)
    before = _state(teacher)
    example = torch.from_numpy(train.x[:1])
    # Same data, same quantizer: PTQ (calibrate + convert) and KD-QAT on top of it.
    ptq = qat(teacher, teacher, train, example, QatConfig(epochs=0, calib_samples=256))
    cfg = QatConfig(epochs=2, lr=0.01, augment_flip=False, augment_shift=1)
    res = qat(teacher, teacher, train, example, cfg)
    path = export_qat_onnx(res.model, example, tmp_path_factory.mktemp("qat") / "int8.onnx")
    return dict(train=train, test=test, teacher=teacher, teacher_top1=teacher_top1, before=before,
                ptq=ptq, res=res, cfg=cfg, path=path)  # fmt: skip


def test_config_validation_one_line_errors():
    assert QatConfig().validate() == QatConfig()
    bad = [dict(epochs=-1), dict(lr=0), dict(alpha=1.5), dict(temperature=0), dict(batch_size=1),
           dict(calib_samples=0), dict(freeze_bn_after=1.5), dict(freeze_observers_after=-0.1),
           dict(weight_decay=-1), dict(augment_shift=-1), dict(epochs=float("nan"))]  # fmt: skip
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            QatConfig(**kw).validate()
        msg = str(e.value)
        assert "\n" not in msg and next(iter(kw)) in msg, msg


def test_qat_trains_with_the_configured_freeze_schedule(run):
    res, cfg = run["res"], run["cfg"]
    assert res.steps == 2 * math.ceil(len(run["train"]) / cfg.batch_size) == 16
    assert res.bn_frozen_at == 8 and res.observers_frozen_at == 12
    assert math.isfinite(res.final_loss) and res.final_loss >= 0
    assert run["ptq"].steps == 0 and run["ptq"].bn_frozen_at is None and math.isnan(run["ptq"].final_loss)
    # neither the student's source nor the teacher is modified
    after = run["teacher"].state_dict()
    assert all(torch.equal(v, after[k]) for k, v in run["before"].items())
    assert not run["teacher"].training


def test_onnx_is_valid_qdq_with_dynamic_batch(run):
    m = onnx.load(str(run["path"]))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert ops.count("DequantizeLinear") >= ops.count("Conv") + ops.count("Gemm")  # every compute op fed by DQ
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, batch
    sess = make_session(run["path"])
    for n in (1, 7):
        assert run_batched(sess, run["test"].x[:n]).shape == (n, 4)


def test_onnxruntime_runs_int8_kernels(run):
    rep = kernel_report(run["path"])
    assert rep.int8_op_fraction >= 0.9, rep
    assert rep.op_counts.get("QLinearConv", 0) == 9, rep.op_counts  # ResNet-8: every conv in int8
    assert rep.float_ops == 0, rep.float_islands


def test_int8_accuracy_close_to_teacher_and_not_worse_than_ptq(run):
    test = run["test"]
    ort_top1 = float((run_batched(make_session(run["path"]), test.x).argmax(1) == test.y).mean())
    assert run["teacher_top1"] > 0.95
    assert ort_top1 >= run["teacher_top1"] - 0.03, (ort_top1, run["teacher_top1"])
    qat_top1, ptq_top1 = top1(run["res"].model, test), top1(run["ptq"].model, test)
    assert qat_top1 >= ptq_top1 - 0.02, (qat_top1, ptq_top1)  # 0.02 = 10 of 512 samples


def test_parity_pytorch_converted_vs_onnxruntime(run):
    res, test = run["res"], run["test"]
    max_abs, mean_abs = qat_parity(res.model, run["path"], test.x)
    assert res.output_scale is not None and res.output_scale > 0
    assert max_abs <= PARITY_STEPS * res.output_scale, (max_abs, res.output_scale)
    assert mean_abs <= max_abs
    p = check_qat_parity(res.model, run["path"], test.x)
    assert p.passed and p.top1_agreement >= 0.99, p
    assert p.max_abs == max_abs and p.bound == PARITY_STEPS * res.output_scale
    # the gate compares the right things: the PTQ model against the QAT file does not pass
    other = check_qat_parity(run["ptq"].model, run["path"], test.x)
    assert not other.passed and other.max_abs > other.bound, other


def test_frozen_batchnorm_stays_frozen_across_train_eval_calls(run):
    # torchao's train/eval rewrite matches batch norm whatever its `training` literal, so a plain
    # move_exported_model_to_train() would un-freeze it; qat()'s train()/eval() re-apply the freeze.
    gm = prepare(create_model("resnet8-tiny", num_classes=4), torch.zeros(1, 1, 16, 16))
    phases = _Phases(gm)
    phases.install()
    x = torch.from_numpy(run["train"].x[:32])
    rm = next(v for k, v in gm.state_dict().items() if k.endswith("running_mean"))
    gm.train()
    before = rm.clone()
    gm(x)
    assert not torch.equal(rm, before)  # training-mode BN updates its statistics
    phases.freeze_bn()
    assert freeze_bn_stats(gm) == 9  # ResNet-8: 9 batch norms
    frozen = rm.clone()
    gm(x)
    assert torch.equal(rm, frozen)
    gm.eval()
    gm.train()
    gm(x)
    assert torch.equal(rm, frozen)
