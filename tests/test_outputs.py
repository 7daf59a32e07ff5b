"""Models that are not one classifier output (issue 22): output structures, names and kinds,
ONNX export with named outputs and per-output parity, fidelity figures and gates, and the
distillation losses per kind."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from edgecompress.config import ExportOnnxConfig, ModelConfig
from edgecompress.errors import BadInput, ConfigError
from edgecompress.export import export_onnx, parity
from edgecompress.models import load_model
from edgecompress.models.outputs import flatten
from edgecompress.prune.channels import output_layers
from edgecompress.runtime.fidelity import GateBounds, channel_axis, fidelity, fidelity_gates, miou, snr_db
from edgecompress.runtime.outputs import (
    OutputKind,
    describe_outputs,
    infer_kind,
    is_classifier,
    parse_kind_overrides,
)
from edgecompress.train.distill import kd_loss
from edgecompress.train.losses import output_loss, relative_mse, sigmoid_bce

from ._task_models import TinyDetector, TinyUNet, TwoHead, multilabel

TM = "tests/_task_models.py"


# ------------------------------------------------------------------ structures and names

def test_flatten_names_dict_keys_tuple_indices_and_single_logits():
    t = torch.zeros(2, 3)
    assert flatten(t)[0] == ("logits",)
    assert flatten((t, t))[0] == ("output_0", "output_1")
    assert flatten([t])[0] == ("logits",)  # one tensor, whatever holds it
    assert flatten({"boxes": t, "scores": t})[0] == ("boxes", "scores")
    with pytest.raises(BadInput, match="tensors only"):
        flatten((t, [t]))
    with pytest.raises(BadInput, match="non-float"):
        flatten({"labels": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(BadInput, match="returned str"):
        flatten("x")


def test_two_head_and_dense_models_load_where_they_were_refused():
    """Symptoms 1 and 2 of issue 22: a dict of two heads and an (N, C, H, W) output load."""
    lm = load_model(ModelConfig(name=f"{TM}:two_head", input_shape=(1, 1, 32, 32)))
    assert lm.output_names == ("scores", "boxes") and lm.num_classes == 4
    lm = load_model(ModelConfig(name=f"{TM}:tiny_unet", input_shape=(1, 1, 32, 32)))
    assert lm.output_names == ("logits",) and lm.num_classes == 4  # background + 3 shapes


# ------------------------------------------------------------------ kinds

def test_kind_inference_from_values():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (16, 5))
    assert infer_kind(logits, "logits", only=True)[0] == OutputKind.LOGITS
    sm = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert infer_kind(sm, "logits", only=True)[0] == OutputKind.SOFTMAX
    assert infer_kind(1 / (1 + np.exp(-logits)), "logits", only=True)[0] == OutputKind.SIGMOID
    assert infer_kind(rng.normal(0, 1, (4, 3, 8, 8)), "logits", only=True)[0] == OutputKind.DENSE
    assert infer_kind(rng.normal(0, 1, (4, 64, 7)), "logits", only=True)[0] == OutputKind.REGRESSION
    assert infer_kind(rng.normal(0, 50, (4, 4)), "boxes", only=False)[0] == OutputKind.REGRESSION
    assert infer_kind(rng.normal(0, 1, (4, 1)), "output_1", only=False)[0] == OutputKind.REGRESSION


def test_kind_overrides_are_checked_and_recorded():
    names = ("scores", "boxes")
    assert parse_kind_overrides(("boxes=logits",), names) == {"boxes": OutputKind.LOGITS}
    with pytest.raises(BadInput, match="no output 'box'"):
        parse_kind_overrides(("box=regression",), names)
    with pytest.raises(BadInput, match="NAME=KIND"):
        parse_kind_overrides(("regression",), names)
    with pytest.raises(ConfigError, match="not one of"):
        ModelConfig(output_kinds=("boxes=bbox",)).validate()
    rng = np.random.default_rng(0)
    infos = describe_outputs(names, [rng.normal(size=(8, 4)), rng.normal(size=(8, 4))],
                             parse_kind_overrides(("boxes=regression",), names))
    assert [(i.kind, i.source) for i in infos] == [(OutputKind.LOGITS, "inferred"), (OutputKind.REGRESSION, "set")]
    assert not is_classifier(infos) and is_classifier(infos[:1])
    with pytest.raises(BadInput, match="dense needs"):
        describe_outputs(("x",), [rng.normal(size=(8, 4))], {"x": OutputKind.DENSE})


# ------------------------------------------------------------------ export and parity

@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_names_outputs_keeps_dynamic_batch_and_checks_parity_per_output(tmp_path, exporter):
    torch.manual_seed(0)
    m = TwoHead().eval()
    path = export_onnx(m, torch.zeros(1, 1, 32, 32), tmp_path / "m.onnx", ExportOnnxConfig(exporter=exporter))
    sess = ort.InferenceSession(str(path))
    assert [o.name for o in sess.get_outputs()] == ["scores", "boxes"]
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    got = sess.run(None, {"input": x})
    assert got[0].shape == (5, 4) and got[1].shape == (5, 4)  # a batch of 5 through a batch-2 export
    par = parity(m, path, x, 1e-4)
    assert par.passed and set(par.to_dict()["outputs"]) == {"scores", "boxes"}

    class Broken(nn.Module):  # the ONNX file's second output is wrong: its own parity fails
        def forward(self, x):
            out = m(x)
            return {"scores": out["scores"], "boxes": out["boxes"] + 1.0}

    par = parity(Broken(), path, x, 1e-4)
    assert not par.passed and par.outputs["scores"]["passed"] and not par.outputs["boxes"]["passed"]


def test_single_tensor_export_keeps_logits_name_and_no_per_output_record(tmp_path):
    m = TinyUNet().eval()
    path = export_onnx(m, torch.zeros(1, 1, 32, 32), tmp_path / "u.onnx", ExportOnnxConfig(exporter="torchscript"))
    sess = ort.InferenceSession(str(path))
    assert [o.name for o in sess.get_outputs()] == ["logits"] and sess.get_outputs()[0].shape[0] == "batch"
    assert "outputs" not in parity(m, path, np.zeros((2, 1, 32, 32), np.float32), 1e-4).to_dict()


def test_output_layers_of_every_head_are_left_unpruned():
    m = TwoHead().eval()
    assert {id(h) for h in output_layers(m, torch.zeros(2, 1, 32, 32))} == {id(m.cls), id(m.box)}
    d = TinyDetector().eval()  # heads reached through sigmoid, exp, cat, flatten and transpose
    assert {id(h) for h in output_layers(d, torch.zeros(2, 1, 32, 32))} == {id(d.box), id(d.cls)}


# ------------------------------------------------------------------ fidelity

def test_fidelity_figures():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (64, 10)).astype(np.float32)
    assert snr_db(ref, ref) == 200.0
    noisy = ref + rng.normal(0, 0.1, ref.shape).astype(np.float32)
    assert snr_db(ref, noisy) == pytest.approx(20.0, abs=0.5)  # signal power 1, noise power 0.01
    f = fidelity(ref, noisy, OutputKind.LOGITS)
    assert 0.99 < f["cosine"] < 1 and 0.2 < f["max_abs"] < 0.6 and 0.5 < f["top1_agreement"] < 1
    probs = 1 / (1 + np.exp(-ref))
    f = fidelity(probs, np.clip(probs + 0.3, 0, 1), OutputKind.SIGMOID)
    assert f["label_agreement"] == pytest.approx(np.mean((probs > 0.5) == (probs + 0.3 > 0.5)))
    assert f["exact_set_agreement"] <= f["label_agreement"]
    seg = rng.normal(0, 1, (4, 3, 8, 8))
    got = seg.copy()
    got[:, 0] += 10  # every pixel becomes class 0
    f = fidelity(seg, got, OutputKind.DENSE)
    assert f["pixel_agreement"] == pytest.approx(np.mean(seg.argmax(1) == 0))
    assert f["miou_vs_original"] == pytest.approx(miou(got.argmax(1), seg.argmax(1), 3))
    assert miou(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_worst_channel_snr_sees_scores_wiped_out_next_to_boxes():
    """[N, A, 4 + C]: box coordinates in pixels next to scores in [0, 1]. INT8 with one scale
    (step ~1.2 px) wipes the scores; the overall SNR hides it, the worst channel does not."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 300, (8, 64, 4)), rng.uniform(0, 1, (8, 64, 3))], 2)
    step = ref.max() / 255
    got = np.round(ref / step) * step
    assert channel_axis(ref) == 2
    f = fidelity(ref, got, OutputKind.REGRESSION)
    assert f["snr_db"] > 40 and f["min_channel_snr_db"] < 5
    infos = describe_outputs(("boxes",), [ref], {})
    (g,) = fidelity_gates({"boxes": f}, infos, GateBounds())
    assert g.metric == "min_channel_snr_db" and not g.passed and "worst-channel SNR" in g.name


# ------------------------------------------------------------------ distillation losses

def test_kl_on_probabilities_carries_no_signal_bce_does():
    """Symptom 3's cause: probabilities treated as logits give KL gradients ~100x weaker than the
    BCE on recovered logits that sigmoid outputs get now."""
    torch.manual_seed(0)
    t = torch.sigmoid(torch.randn(32, 20) * 3)
    s_logit = torch.zeros(32, 20, requires_grad=True)
    kd_loss(torch.sigmoid(s_logit), t, None, 1.0, 4.0).backward()
    g_kl = s_logit.grad.abs().mean().item()
    s_logit.grad = None
    sigmoid_bce(torch.sigmoid(s_logit), t).backward()
    g_bce = s_logit.grad.abs().mean().item()
    assert g_bce > 20 * g_kl


def test_losses_are_zero_at_the_teacher_and_positive_elsewhere():
    torch.manual_seed(0)
    for kind, t in ((OutputKind.LOGITS, torch.randn(8, 5)), (OutputKind.DENSE, torch.randn(2, 3, 4, 4)),
                    (OutputKind.SOFTMAX, torch.softmax(torch.randn(8, 5), 1)),
                    (OutputKind.REGRESSION, torch.randn(8, 16, 6) * 100)):
        assert output_loss(t, t, kind, 4.0).item() == pytest.approx(0, abs=1e-5), kind
        assert output_loss(t.flip(0), t, kind, 4.0).item() > 1e-3, kind
    t = torch.sigmoid(torch.randn(8, 5))
    assert output_loss(t.flip(0), t, OutputKind.SIGMOID, 1.0) > output_loss(t, t, OutputKind.SIGMOID, 1.0)


def test_relative_mse_weighs_channels_alike_whatever_their_unit():
    """Box pixels and [0, 1] scores in one tensor: a 10% error costs the same in either."""
    t = torch.cat([torch.rand(4, 64, 4) * 300, torch.rand(4, 64, 3)], 2)
    err_box, err_score = t.clone(), t.clone()
    err_box[..., 0] *= 1.1
    err_score[..., 5] *= 1.1
    assert relative_mse(err_box, t).item() == pytest.approx(relative_mse(err_score, t).item(), rel=0.3)


def test_multilabel_stand_in_is_inferred_sigmoid():
    m = multilabel().eval()
    lm_outputs = describe_outputs(("logits",), [m(torch.rand(8, 1, 32, 32)).detach().numpy()], {})
    assert lm_outputs[0].kind == OutputKind.SIGMOID and not is_classifier(lm_outputs)


# ------------------------------------------------------------------ mixed-range guard, targets, metric

def test_guard_names_the_tail_of_a_mixed_range_output(tmp_path):
    from edgecompress.quantize.guard import mixed_range_guard

    torch.manual_seed(0)
    path = export_onnx(TinyDetector().eval(), torch.zeros(1, 1, 32, 32), tmp_path / "d.onnx",
                       ExportOnnxConfig(exporter="torchscript"))
    x = np.random.default_rng(0).random((16, 1, 32, 32), dtype=np.float32)
    rec = mixed_range_guard(path, x)
    (g,) = rec["outputs"]
    assert g["output"] == "logits" and g["channel_axis"] == 2 and g["ratio"] >= 100
    assert g["widest_channel"] < 4 <= g["narrowest_channel"]  # a box coordinate vs a class score
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    kept = [ops.get(n) for n in rec["nodes"]]
    assert kept.count("Conv") == 2 and "Concat" in kept  # both heads and what joins them; not the body
    assert len([o for o in ops.values() if o == "Conv"]) > 2
    assert mixed_range_guard(path, x, ratio=1e9)["nodes"] == []


def test_npz_targets_of_any_shape_and_per_output(tmp_path):
    from edgecompress.data.readers import load_npz

    x = np.zeros((6, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.zeros((6, 8, 8), np.int64))
    d = load_npz(tmp_path / "a.npz")
    assert d.y is None and d.targets["y"].shape == (6, 8, 8)
    np.savez(tmp_path / "b.npz", x=x, y_boxes=np.zeros((6, 4)), y_scores=np.zeros((6, 3)))
    d = load_npz(tmp_path / "b.npz")
    assert d.y is None and set(d.targets) == {"boxes", "scores"}
    assert d.take(np.arange(2), "t").targets["boxes"].shape == (2, 4)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(6))
    d = load_npz(tmp_path / "c.npz")
    assert d.y.tolist() == list(range(6)) and d.targets["y"] is d.y  # class ids: labels and targets
    np.savez(tmp_path / "e.npz", x=x, y_boxes=np.zeros((5, 4)))
    with pytest.raises(BadInput, match="y_boxes has shape"):
        load_npz(tmp_path / "e.npz")


def test_user_metric_gets_numpy_outputs_by_name_and_bad_metrics_are_named():
    from edgecompress.pipeline.evaluate import call_metric

    rng = np.random.default_rng(0)
    infos = describe_outputs(("scores", "boxes"), [rng.normal(size=(4, 3)), rng.normal(size=(4, 4)) * 100], {})
    seen = {}

    def fn(outputs, targets):
        seen.update(outputs=outputs, targets=targets)
        return 0.5

    outs = [np.zeros((4, 3)), np.ones((4, 4))]
    assert call_metric(fn, "m.py:fn", outs, infos, {"boxes": np.ones((4, 4))}) == 0.5
    assert set(seen["outputs"]) == {"scores", "boxes"} and set(seen["targets"]) == {"boxes"}
    assert call_metric(fn, "m.py:fn", outs[:1], infos[:1], {"y": np.ones(4)}) == 0.5
    assert isinstance(seen["outputs"], np.ndarray) and isinstance(seen["targets"], np.ndarray)
    with pytest.raises(BadInput, match="--metric m.py:fn raised ZeroDivisionError"):
        call_metric(lambda o, t: 1 / 0, "m.py:fn", outs, infos, None)
    with pytest.raises(BadInput, match="finite"):
        call_metric(lambda o, t: float("nan"), "m.py:fn", outs, infos, None)
