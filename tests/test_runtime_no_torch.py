"""The runtime side (``edgecompress bench`` / ``predict``) works where torch is not installed.

Each command runs in a subprocess whose PYTHONPATH starts with a directory of fake packages (tests/_no_torch.py)
(torch, torch_pruning, onnxscript, neural_compressor, torchao) that raise ImportError and log
which file tried to import them. For ``bench`` and ``predict``, a ``sitecustomize`` there also
blocks ``onnxruntime.quantization`` (the compression side's) and records which edgecompress
modules the command loaded: the runtime layer only. The models are (a) an ONNX file built here with onnx.helper,
not by edgecompress, and (b) the INT8 file edgecompress.quantize.quantize_ptq makes from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._no_torch import ROOT, attempts_by_edgecompress, no_torch_env
from tests._onnx_models import cnn, ort_probs

CLASSES = 5

# what bench and predict may load of edgecompress: the runtime layer, the error module, and their CLI
RUNTIME_SIDE = ("edgecompress", "edgecompress.__main__", "edgecompress.errors", "edgecompress.cli",
                "edgecompress.cli.common", "edgecompress.cli.bench", "edgecompress.cli.predict")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    return no_torch_env(tmp_path_factory.mktemp("no-torch"))


def _run(env, log: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    log.unlink(missing_ok=True)
    loaded = cwd / "modules.log"
    loaded.unlink(missing_ok=True)
    env = env | {"EDGECOMPRESS_TEST_BLOCK_ORTQ": "1", "EDGECOMPRESS_TEST_MODULES_LOG": str(loaded)}
    r = subprocess.run([sys.executable, "-m", "edgecompress", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    ours = attempts_by_edgecompress(log)
    assert not ours, f"edgecompress tried to import blocked packages: {ours}"
    mods = loaded.read_text().split() if loaded.exists() else []
    assert "edgecompress.runtime.session" in mods, mods  # the log was written: the check below means something
    outside = [m for m in mods if m not in RUNTIME_SIDE and not m.startswith("edgecompress.runtime")]
    assert not outside, f"{args[0]} loaded edgecompress modules outside the runtime layer: {outside}"
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from edgecompress.config import QuantConfig
    from edgecompress.quantize import quantize_ptq

    d = tmp_path_factory.mktemp("rt")
    fp32 = cnn(d / "foreign.onnx", classes=CLASSES)
    calib = np.random.default_rng(1).random((32, 1, 8, 8), dtype=np.float32)
    int8 = quantize_ptq(fp32, d / "foreign.int8.onnx", calib, QuantConfig()).path
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (7, 8, 8)).astype(np.uint8)  # N,H,W uint8: scaled by 1/255, channel added
    np.savez(d / "data.npz", x=x)
    return d, {"fp32": fp32, "int8": int8}, x.astype(np.float32)[:, None] / 255.0


def test_blocker_really_blocks_torch(no_torch, tmp_path):
    env, _ = no_torch
    r = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "blocked by the test" in r.stderr
    r = subprocess.run([sys.executable, "-c", "import edgecompress.cli, sys; print(edgecompress.cli.__file__)"],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(ROOT), r.stderr  # the repo's code


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_bench_without_torch(no_torch, models, kind):
    env, log = no_torch
    d, paths, _ = models
    r = _run(env, log, "bench", str(paths[kind]), "--json", "--runs", "5", "--warmup", "1", cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["bytes"] == paths[kind].stat().st_size
    (row,) = out["results"]
    assert row["p50_ms"] > 0 and row["runs"] == 5 and row["threads"] == 1 and row["batch"] == 1


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_predict_without_torch(no_torch, models, kind):
    env, log = no_torch
    d, paths, x = models
    r = _run(env, log, "predict", str(paths[kind]), str(d / "data.npz"), "--json", "--top-k", str(CLASSES),
             "--batch", "3", cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    preds = out["predictions"]
    assert out["count"] == len(preds) == len(x)
    for i, p in enumerate(preds):
        assert p["index"] == i and p["source"].endswith(f"data.npz[{i}]")
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == CLASSES and all(0 <= q <= 1 for q in probs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert probs == sorted(probs, reverse=True)
        assert sorted(t["class"] for t in p["top"]) == list(range(CLASSES))
    ref = ort_probs(paths[kind], x)  # same scaling (uint8 / 255), computed without edgecompress
    got = np.array([[t["prob"] for t in sorted(p["top"], key=lambda t: t["class"])] for p in preds])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_predict_bad_model_without_torch(no_torch, models):
    env, log = no_torch
    d, _, _ = models
    (d / "notes.onnx").write_text("not a model")
    r = _run(env, log, "predict", str(d / "notes.onnx"), str(d / "data.npz"), cwd=d)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_latency_aware_int8_runs_on_the_device_without_torch(no_torch, models):
    """--latency-aware-int8 decides from timings, so it is worth running on the target board:
    the quantizer and its measurements need no torch."""
    env, log = no_torch
    d, paths, _ = models
    code = ("import json, numpy as np; from pathlib import Path; from edgecompress.config import QuantConfig; "
            "from edgecompress.quantize.latency_aware import latency_aware_ptq; "
            "calib = np.random.default_rng(1).random((16, 1, 8, 8), dtype=np.float32); "
            f"res, rec = latency_aware_ptq(Path({str(paths['fp32'])!r}), Path('la.onnx'), calib, QuantConfig(), rounds=1); "
            "import onnx; from edgecompress.quantize import store_weights_int8; "  # its FP32 layers' int8 weights
            f"stored = store_weights_int8(onnx.load({str(paths['fp32'])!r}), ['conv', 'fc']); "
            "print(json.dumps({'nodes': sorted(rec['layer_ms']), 'fp32': rec['fp32_nodes'], 'stored': sorted(stored)}))")
    log.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", code], cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not attempts_by_edgecompress(log)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["nodes"] == ["conv", "fc"]  # both compute layers of the foreign model were timed
    assert out["stored"] == ["conv", "fc"]
    assert (d / "la.onnx").exists()
