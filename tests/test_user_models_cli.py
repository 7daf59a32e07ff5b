"""Models and commands a new user brings, through the real CLI (slow: seconds each, tiny models)."""

import json

import pytest

from .conftest import make_npz, run_cli

pytestmark = pytest.mark.slow

VIEW_NET = """
import torch.nn as nn


class ViewNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16 * 4 * 4, 4)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))  # needs standard strides


def build():
    return ViewNet()
"""

SMALL_NET = """
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""


def _check_delivery(out, m):
    """fastest_artifact names the faster of int8.onnx and its FP32 parent, and an INT8 file that
    is slower says so right under the report's title."""
    a = m["artifacts"]
    parent = a["int8"]["parent"]
    faster = "int8" if a["int8"]["latency_ms_p50"] < a[parent]["latency_ms_p50"] else parent
    assert m["fastest_artifact"] == faster
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# edgecompress report")
    warned = lines[2].startswith("**Warning: the INT8 file is slower than its FP32 parent on this CPU**")
    assert warned == (faster != "int8"), lines[:5]
    assert any(line.startswith(f"Delivered: `{a[m['delivered_artifact']]['path']}`") for line in lines[2:5])


def test_one_channel_model_that_flattens_with_view_exports(tmp_path):
    """Before the fix: exit 3, "view size is not compatible with input tensor's size and stride" in KD."""
    (tmp_path / "net.py").write_text(VIEW_NET)
    make_npz(tmp_path / "d.npz", n=300, shape=(1, 16, 16), classes=4)
    out = tmp_path / "out"
    p = run_cli(["export", "net.py:build", "--data", "d.npz", "--distill-epochs", "1", "--calib-samples", "32",
                 "--exporter", "torchscript", "--runs", "20", "--min-agreement", "0", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"] == ["prune", "distill", "ptq"] and m["stage_results"]["distill"]["steps"] > 0
    assert m["artifacts"]["pruned"]["macs"] < m["artifacts"]["original"]["macs"]
    assert m["delivered_artifact"] == "int8"  # the default, whichever file is faster
    _check_delivery(out, m)


def test_deliver_fastest_names_the_faster_file(tmp_path):
    (tmp_path / "net.py").write_text(VIEW_NET)
    make_npz(tmp_path / "d.npz", n=200, shape=(1, 16, 16), classes=4)
    out = tmp_path / "out"
    p = run_cli(["export", "net.py:build", "--data", "d.npz", "--stages", "prune,ptq", "--calib-samples", "32",
                 "--exporter", "torchscript", "--runs", "20", "--min-agreement", "0", "--deliver", "fastest",
                 "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["delivered_artifact"] == m["fastest_artifact"] and m["config"]["verify"]["deliver"] == "fastest"
    assert f"delivered: {m['artifacts'][m['delivered_artifact']]['path']}" in p.stdout
    _check_delivery(out, m)


def test_readme_random_data_command_with_defaults(tmp_path):
    """`edgecompress export FACTORY --input-shape ... --data random` as the README shows it: the default
    --calib-samples (512) is more than the 256 random samples, so calibration takes all 256."""
    (tmp_path / "net.py").write_text(SMALL_NET)
    out = tmp_path / "out"
    p = run_cli(["export", "net.py:build", "--input-shape", "1,3,32,32", "--data", "random", "--out", str(out)],
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("calibrating INT8 on all 256 training samples") == 1, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    q = m["stage_results"]["quantize"]
    assert q["calib_samples"] == 256 and q["calib_samples_source"] == "default 512 capped at the 256 training samples"
    assert m["config"]["quant"].get("calib_samples") is None  # the user did not set it
    # an explicit count the data cannot give stays a one-line error
    p = run_cli(["export", "net.py:build", "--input-shape", "1,3,32,32", "--data", "random", "--calib-samples", "512",
                 "--stages", "ptq", "--out", str(tmp_path / "o2")], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --calib-samples 512 exceeds")
