"""End-to-end runs of the real CLI in a subprocess (slow: minutes; run in CI)."""

import json

import numpy as np
import pytest
import torch

from .conftest import make_npz, needs_fmnist, run_cli

pytestmark = pytest.mark.slow


@needs_fmnist
def test_default_export_reduced_budget(tmp_path):
    """`edgecompress export` with no MODEL: the shipped teacher on Fashion-MNIST."""
    out = tmp_path / "out"
    p = run_cli(["export", "--max-train", "16000", "--max-eval", "2000", "--distill-epochs", "0.5",
                 "--calib-samples", "128", "--runs", "30", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    a = m["artifacts"]
    assert m["model"]["ref"] == "resnet20" and m["data"]["eval_source"] == "official 10k test split"
    assert a["pruned"]["macs"] <= 0.55 * a["original"]["macs"]
    assert a["int8"]["bytes"] <= a["original"]["bytes"] / 5
    assert a["original"]["top1"] > 0.92  # the shipped teacher, measured under onnxruntime
    assert a["original"]["top1"] - a["int8"]["top1"] < 0.04  # reduced budget; README has the full run
    assert m["stage_results"]["quantize"]["agreement_with_fp32"] > 0.97
    assert "int8" in p.stdout and "faster" in p.stdout


def test_user_model_file_weights_and_npz(tmp_path):
    """A user's own factory + state_dict + .npz data go through the same command."""
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
        "                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build().state_dict(), tmp_path / "net.pt")
    make_npz(tmp_path / "d.npz", n=400, shape=(3, 16, 16), classes=4)
    out = tmp_path / "out"
    p = run_cli(["export", "net.py:build", "--weights", "net.pt", "--data", "d.npz", "--distill-epochs", "2",
                 "--calib-samples", "32", "--runs", "10", "--min-agreement", "0", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["kind"] == "factory" and m["model"]["input_shape"] == [1, 3, 16, 16]
    assert m["data"]["eval"] == 80 and "held-out" in m["data"]["eval_source"]
    assert m["artifacts"]["pruned"]["macs"] <= 0.5 * m["artifacts"]["original"]["macs"]
    for name in ("original", "pruned", "int8"):
        assert (out / m["artifacts"][name]["path"]).exists()
    # the pruned checkpoint reloads from the user's factory without pickle
    code = ("import edgecompress, torch; m = edgecompress.load_pruned('out/pruned.pt'); "
            "print(m(torch.zeros(2, 3, 16, 16)).shape[1])")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.stdout.strip() == "4", r.stderr[-1000:]


def test_random_data_keeps_parity_gates_and_skips_accuracy(tmp_path):
    out = tmp_path / "o"
    p = run_cli(["export", "mobilenetv2-small", "--data", "random", "--input-shape", "1,1,28,28",
                 "--distill-epochs", "0.5", "--calib-samples", "16", "--runs", "5", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert all(a.get("top1") is None for a in m["artifacts"].values())
    assert sum(g["name"].startswith("parity") and g["passed"] for g in m["gates"]) == 2


def test_joint_macs_params_target_and_compact_names_reach_the_artifacts(tmp_path):
    import onnx

    out = tmp_path / "o"
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--prune-ratio", "0.3",
                 "--target-params", "0.6", "--round-to", "1", "--distill-epochs", "0.2", "--calib-samples", "16",
                 "--runs", "5", "--compact-names", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    pr = m["stage_results"]["prune"]
    assert pr["macs_target"] == 0.3 and pr["target_params"] == 0.6
    assert pr["params_after"] <= 0.4 * pr["params_before"] and pr["macs_removed"] >= 0.3
    g = onnx.load(str(out / "int8.onnx")).graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert max(len(t.name) for t in g.initializer) <= 3
    assert m["config"]["onnx"]["compact_names"] is True


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    p = run_cli(["export", "resnet20", "--stages", "prune,kd", "--dry-run", "--out", str(tmp_path / "x")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["stages"][:4] == ["export original", "prune", "distill", "export pruned"]
    assert "ptq" not in plan["stages"] and not (tmp_path / "x").exists()


@needs_fmnist
def test_inc_backend_runs_end_to_end(tmp_path):
    out = tmp_path / "inc"
    p = run_cli(["export", "resnet8-tiny", "--quant-backend", "inc", "--max-train", "512", "--max-eval", "256",
                 "--round-to", "2", "--distill-epochs", "0.2", "--calib-samples", "64", "--runs", "5", "--min-agreement", "0",
                 "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage_results"]["quantize"]["settings"]["backend"] == "inc"
    assert np.isfinite(m["artifacts"]["int8"]["top1"])


@needs_fmnist
def test_qat_export_runs_int8_kernels(tmp_path):
    out = tmp_path / "qat"
    p = run_cli(["export", "resnet8-tiny", "--quant", "qat", "--stages", "prune,qat", "--qat-epochs", "0.3", "--max-train", "1024",
                 "--max-eval", "500", "--round-to", "2", "--runs", "5", "--min-agreement", "0", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"] == ["prune", "qat"]
    assert m["artifacts"]["int8"]["int8_op_fraction"] >= 0.95
    assert any(g["name"].startswith("parity int8.onnx") and g["passed"] for g in m["gates"])
