"""``edgecompress export model.onnx``: a model that arrives as an ONNX file gets INT8, verification,
benchmark, manifest and report, where torch is not installed.

The model is built here with onnx.helper (a Conv whose classifier is fitted by ridge regression on
separable synthetic data, ``tests._onnx_models.fitted_cnn``), not by edgecompress, so top-1 and the
INT8-vs-input agreement mean something. The end-to-end runs are subprocesses with torch,
torch_pruning, onnxscript, neural_compressor and torchao unimportable (``tests._no_torch``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompress.cli import main
from edgecompress.config import QuantConfig
from edgecompress.quantize import quantize_ptq
from edgecompress.runtime.macs import macs_params
from edgecompress.runtime.session import make_session, run_batched
from tests._no_torch import attempts_by_edgecompress, no_torch_env
from tests._onnx_models import cnn, edgecompress_metadata, fitted_cnn, separable_data

QUICK = ("--calib-samples", "64", "--runs", "5")
# modules that import torch (or need it) and must stay unloaded on the ONNX path
TORCH_SIDE = ("edgecompress.pipeline.runner", "edgecompress.pipeline.inputs", "edgecompress.pipeline.stages",
              "edgecompress.models.loading", "edgecompress.export.onnx_export", "edgecompress.train",
              "edgecompress.prune")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx-in")
    x, y = separable_data(600, seed=1)
    xe, ye = separable_data(300, seed=2)
    np.savez(d / "train.npz", x=x, y=y)
    np.savez(d / "eval.npz", x=xe, y=ye)
    meta = edgecompress_metadata([1, 1, 8, 8], ["a", "b", "c", "d", "e"]) | {"author.note": "kept"}
    models = {"dynamic": fitted_cnn(d / "dynamic.onnx", x, y, metadata=meta),
              "batch1": fitted_cnn(d / "batch1.onnx", x, y, batch=1),
              "batch3": fitted_cnn(d / "batch3.onnx", x, y, batch=3)}
    env, log = no_torch_env(d)
    return d, models, env, log, xe.astype(np.float32)[:, None] / 255.0, ye


def _export(case, model: str, *args: str, out: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    d, models, env, log, _, _ = case
    log.unlink(missing_ok=True)
    loaded = d / f"{out}.modules"
    r = subprocess.run([sys.executable, "-m", "edgecompress", "export", str(models[model]), "--data",
                        str(d / "train.npz"), "--eval-data", str(d / "eval.npz"), *QUICK, *args, "--out", str(d / out)],
                       cwd=d, env=env | {"EDGECOMPRESS_TEST_MODULES_LOG": str(loaded)}, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert not attempts_by_edgecompress(log), "edgecompress tried to import torch & co."
    mods = set(loaded.read_text().split())
    assert "edgecompress.pipeline.onnx_input" in mods  # the log was written, and the ONNX path ran
    assert not [m for m in mods if m.startswith(TORCH_SIDE)], mods
    m = json.loads((d / out / "manifest.json").read_text()) if (d / out / "manifest.json").exists() else None
    return r, m


def _top1(path: Path, x: np.ndarray) -> np.ndarray:
    """Predictions computed here with onnxruntime, one sample at a time (any batch dim of 1 or N)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, n = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    n = n if isinstance(n, int) else 1
    return np.array([sess.run(None, {name: np.repeat(x[i : i + 1], n, 0)})[0][0].argmax() for i in range(len(x))])


@pytest.mark.slow
def test_onnx_file_in_without_torch(case):
    d, models, _, _, xe, ye = case
    r, m = _export(case, "dynamic", out="dyn")
    assert r.returncode == 0, r.stderr[-2000:]
    assert m["status"] == "complete" and m["stages"] == ["ptq"]  # no pruning, no distillation
    assert set(m["artifacts"]) == {"original", "int8"} and m["artifacts"]["int8"]["parent"] == "original"
    assert m["model"]["kind"] == "onnx" and m["model"]["batch"] == "dynamic" and m["model"]["num_classes"] == 5
    ref = _top1(models["dynamic"], xe)  # the input file, run here
    assert (ref == ye).mean() >= 0.95  # the task is learnt: agreement below is not agreement on noise
    int8 = _top1(d / "dyn" / "int8.onnx", xe)
    agree = float((int8 == ref).mean())
    assert agree >= 0.99
    assert m["stage_results"]["quantize"]["agreement_with_fp32"] == pytest.approx(agree)
    assert m["artifacts"]["original"]["top1"] == pytest.approx((ref == ye).mean())
    assert m["artifacts"]["int8"]["top1"] == pytest.approx((int8 == ye).mean())
    # every layer INT8 unless --latency-aware-int8 auto (run here without torch) kept some in FP32
    # because the INT8 file was not faster than the input file on this CPU
    auto, la = m["stage_results"]["latency_aware_auto"], m["stage_results"].get("latency_aware")
    assert auto["runs"] == (la is not None) == (auto["p50_ms_int8"] >= auto["p50_ms_parent"])
    assert m["artifacts"]["int8"]["int8_op_fraction"] == 1 - len((la or {}).get("fp32_nodes", [])) / 2  # conv, fc
    assert m["artifacts"]["original"]["macs"] == 16 * 9 * 64 + 5 * 16 * 64
    gate = next(g for g in m["gates"] if "agreement" in g["name"])
    assert gate["passed"] and gate["bound"] == 0.99
    for name in ("original", "int8"):
        a = m["artifacts"][name]
        assert a["latency_ms_p50"] > 0 and a["latency_ms_p90"] >= a["latency_ms_p50"]
        onnx.checker.check_model(str(d / "dyn" / a["path"]), full_check=True)
        props = {p.key: p.value for p in onnx.load(str(d / "dyn" / a["path"])).metadata_props}
        assert json.loads(props["classes"]) == ["a", "b", "c", "d", "e"] and props["author.note"] == "kept"
        assert props["edgecompress.artifact"] == name and props["source.weights_sha256"] == m["model"]["sha256"]
    report = (d / "dyn" / "report.md").read_text()
    assert "| int8 `int8.onnx`" in report and "INT8 vs original top-1 agreement" in report
    assert "int8" in r.stdout and "original" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model,batch", [("batch1", 1), ("batch3", 3)])
def test_fixed_batch_inputs(case, model, batch):
    """A graph whose batch dimension is fixed is evaluated, calibrated and timed at that batch size."""
    d, models, _, _, xe, _ = case
    r, m = _export(case, model, "--max-eval", "100", out=model)  # 100 = 33 batches of 3 and a padded one
    assert r.returncode == 0, r.stderr[-2000:]
    assert m["model"]["batch"] == batch and m["model"]["input_shape"] == [batch, 1, 8, 8]
    assert m["bench"]["batch"] == batch and m["data"]["eval"] == 100
    int8 = onnx.load(str(d / model / "int8.onnx"))
    assert int8.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    assert m["stage_results"]["quantize"]["agreement_with_fp32"] >= 0.99
    assert m["artifacts"]["original"]["top1"] >= 0.95
    if batch != 1:
        assert any(f"fixes its batch size to {batch}" in w for w in m["warnings"])


@pytest.mark.slow
def test_accuracy_and_latency_aware_int8_on_an_onnx_input(case):
    r, m = _export(case, "dynamic", "--max-accuracy-drop", "0.5", "--latency-aware-int8", "--max-train", "200",
                   "--max-eval", "100", out="aware")
    assert r.returncode == 0, r.stderr[-2000:]
    st = m["stage_results"]
    assert st["accuracy_fallback"]["met"] and st["accuracy_fallback"]["max_drop"] == 0.5
    assert set(st["latency_aware"]["layer_ms"]) == {"conv", "fc"}  # both layers of the input were timed
    assert any(g["name"].startswith("INT8 top-1 drop") and g["passed"] for g in m["gates"])


@pytest.mark.parametrize("flags,named", [
    (["--prune-ratio", "0.5"], "--prune-ratio 0.5"),
    (["--drop-blocks", "1"], "--drop-blocks 1"),
    (["--stages", "prune,distill,ptq"], "--stages prune,distill,ptq"),
    (["--distill-epochs", "1"], "--distill-epochs 1"),  # the default value, but asked for
    (["--kd-features", "layer1"], "--kd-features layer1"),
    (["--quant", "qat"], "--quant qat"),
    (["--quant-backend", "inc"], "--quant-backend inc"),
    (["--target-latency-ms", "1"], "--target-latency-ms 1"),
    (["--weights", "w.pt"], "--weights w.pt"),
])  # fmt: skip
def test_pytorch_only_settings_are_refused_with_an_onnx_input(case, capsys, flags, named):
    d, models, *_ = case
    code = main(["export", str(models["dynamic"]), *flags, "--data", str(d / "train.npz"), "--out", str(d / "no")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {named}") and "ONNX file" in err
    assert not (d / "no").exists()


def test_pytorch_only_recipe_section_is_refused(case, capsys):
    d, models, *_ = case
    (d / "r.toml").write_text("[distill]\nlr = 0.1\n")
    code = main(["export", str(models["dynamic"]), "--recipe", str(d / "r.toml"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: [distill] lr in --recipe") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,plan", [([], ["ptq"]), (["--quant", "dynamic"], ["dynamic"]),
                                        (["--prune-ratio", "0", "--distill-epochs", "0"], ["ptq"]),
                                        (["--quant", "none"], [])])
def test_the_plan_of_an_onnx_input_is_quantization_only(case, capsys, flags, plan):
    d, models, *_ = case
    assert main(["export", str(models["dynamic"]), *flags, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stages"] == ["original (the input file)", *plan, "verify", "bench", "manifest"]


def test_data_that_does_not_fit_the_input_is_one_line(case, tmp_path, capsys):
    d, *_ = case
    fixed = cnn(tmp_path / "rgb.onnx", channels=3, hw=8)
    code = main(["export", str(fixed), "--data", str(d / "train.npz"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "samples have shape (1, 8, 8)" in err and len(err.strip().splitlines()) == 1


def test_symbolic_dims_come_from_the_data_or_input_shape(case, tmp_path, capsys):
    d, *_ = case
    sym = cnn(tmp_path / "sym.onnx", hw="s")  # N,1,s_h,s_w
    code = main(["export", str(sym), "--data", "random", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--input-shape" in err
    code = main(["export", str(sym), "--data", "random", "--input-shape", "1,1,8,8", "--calib-samples", "16",
                 "--runs", "2", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["model"]["input_shape"] == [1, 1, 8, 8] and m["model"]["shape_from"] == "--input-shape"


def test_run_batched_and_calibration_honour_a_fixed_batch(tmp_path):
    fixed = cnn(tmp_path / "b4.onnx", batch=4)
    dyn = cnn(tmp_path / "dyn.onnx")
    x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)  # 2 batches of 4 and one padded
    np.testing.assert_allclose(run_batched(make_session(fixed), x), run_batched(make_session(dyn), x), atol=1e-6)
    q = quantize_ptq(fixed, tmp_path / "q.onnx", x, QuantConfig()).path  # calibration in batches of 4
    assert run_batched(make_session(q), x).shape == (10, 5)


def test_macs_params_of_an_onnx_file(tmp_path):
    path = cnn(tmp_path / "m.onnx", hw="s", hidden=8, classes=5)
    # Conv 8x1x3x3 on 8x8 (pad 1): 8*9*64; Gemm 8 -> 5: 40; params 72 + 8 + 40 + 5
    assert macs_params(path, (1, 1, 8, 8)) == (8 * 9 * 64 + 40, 125)
    assert macs_params(cnn(tmp_path / "b2.onnx", batch=2), (2, 1, 8, 8))[0] == 8 * 9 * 64 + 40  # per sample


@pytest.mark.slow
@pytest.mark.parametrize("flags,key,value", [(("--target", "arm64"), "target", "arm64"),
                                             (("--quant", "dynamic"), "format", "dynamic (integer ops)")])
def test_target_and_dynamic_quantization_on_an_onnx_input(case, flags, key, value):
    r, m = _export(case, "dynamic", *flags, "--max-eval", "100", "--min-agreement", "0", out=f"q-{flags[1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert m["stage_results"]["quantize"]["settings"][key] == value
    assert m["stages"] == (["dynamic"] if value.startswith("dynamic") else ["ptq"])


def test_python_api_takes_an_onnx_file_and_refuses_pruning_it(case, tmp_path):
    from edgecompress import ConfigError, DataConfig, ModelConfig, PruneConfig, QuantConfig, RunConfig, compress

    d, models, *_ = case
    cfg = RunConfig(model=ModelConfig(name=str(models["dynamic"])), data=DataConfig(data=str(d / "train.npz")),
                    quant=QuantConfig(calib_samples=32), out=str(tmp_path / "api"))
    res = compress(cfg, log=lambda m: None)
    assert res.exit_code == 0 and set(res.manifest["artifacts"]) == {"original", "int8"}
    with pytest.raises(ConfigError, match="--prune-ratio 0.5 needs the PyTorch model"):
        compress(cfg.replace(prune=PruneConfig(ratio=0.5)))
