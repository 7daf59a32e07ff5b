"""``edgecompress export --bench-on DEST``: every latency of the run measured on the device, against
an sshd on 127.0.0.1 that the test starts itself (tests/_sshd.py). The device's python is a
wrapper around this venv's python that logs the jobs it is sent, so the tests can tell that the
measurements ran there, not on the build host."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecompress.cli import main
from edgecompress.config import ExportOnnxConfig
from edgecompress.pipeline.probe import latency_criterion
from edgecompress.runtime.meter import LOCAL
from edgecompress.runtime.remote import Device
from tests._sshd import loopback_sshd
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


def _counting_python(d: Path) -> tuple[Path, Path]:
    log = d / "device-jobs.log"
    py = d / "device-python"
    py.write_text(f'#!/bin/sh\ntee -a {log} | {sys.executable} "$@"\n')  # the jobs come on stdin
    py.chmod(0o755)
    return py, log


def _calls(log: Path, name: str) -> int:
    """How many jobs called ``name`` on the device."""
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(json.loads(line).get("call") == name for line in lines if line.startswith("{"))


def test_latency_probe_measures_on_the_device_with_the_build_host_beside(sshd, tmp_path):
    py, log = _counting_python(tmp_path)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    with Device("device", python=str(py), ssh_config=sshd.config) as dev:
        crit = latency_criterion(torch.zeros(1, 1, 12, 12), None, onnx=ExportOnnxConfig(exporter="torchscript"),
                                 quant=None, runs=5, meter=dev)
        assert crit.criterion(1e9)(model, 1000, 100)  # met: one measurement, then 3 to confirm
        assert _calls(log, "latency") == 4  # each of them ran on the device
        assert dev.info["key"] in crit.description
    (entry,) = crit.history
    assert entry["p50_ms"] > 0 and entry["build_host_p50_ms"] > 0 and entry["first_p50_ms"] > 0
    local = latency_criterion(torch.zeros(1, 1, 12, 12), None, onnx=ExportOnnxConfig(exporter="torchscript"),
                              quant=None, runs=5, meter=LOCAL)
    assert local.criterion(1e9)(model, 1000, 100) and "build_host_p50_ms" not in local.history[0]


_NET = ("import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))\n")


@pytest.mark.slow
def test_export_bench_on_measures_latency_aware_int8_and_benchmark_on_the_device(sshd, tmp_path):
    """Three compute layers keep the latency-aware pass (at most 5 trials) short."""
    py, log = _counting_python(tmp_path)
    (tmp_path / "net.py").write_text(_NET)
    out = tmp_path / "o"
    p = run_cli(["export", "net.py:build", "--data", "random", "--input-shape", "1,3,16,16", "--prune-ratio", "0.3",
                 "--distill-epochs", "0", "--calib-samples", "16", "--runs", "20", "--exporter", "torchscript",
                 "--latency-aware-int8", "--bench-on", "device", "--ssh-config", str(sshd.config),
                 "--bench-on-python", str(py), "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    dev = m["bench"]["measured_on"]
    assert dev["dest"] == "device" and dev["key"] == m["bench"]["build_host"]  # the loopback device is this host
    la = m["stage_results"]["latency_aware"]
    assert la["measured_on"] == dev["key"]
    # on the device: the pass's estimate and the benchmark of the 3 artifacts, the profiles of both
    # files, every trial side by side (+ the final one against all-INT8 when there was more than one)
    assert _calls(log, "latency") == 1 + 3
    assert _calls(log, "layer_times") == 2 * la["profile_rounds"]
    # + the result against its FP32 parent (and the all-FP32 file beside both when it was not faster)
    assert _calls(log, "p50s") == len(la["trials"]) + (2 if "p50_ms_all_fp32" in la["parent"] else 1)
    assert set(m["artifacts"]) == {"original", "pruned", "int8"}
    for a in m["artifacts"].values():
        by = a["latency_by_device"]
        assert sorted(v["role"] for v in by.values()) == ["build host", "device"]
        assert by[dev["key"]]["p50_ms"] == a["latency_ms_p50"] > 0  # the artifact's latency is the device's
        assert all(v["p50_ms"] > 0 and v["p90_ms"] >= v["p50_ms"] for v in by.values())
    report = (out / "report.md").read_text()
    assert f"measured on the device **{dev['key']}**" in report and "(build host)" in report
    where = dev.pop("runtime_from")  # the shipped runtime ran there, from the device's temporary directory
    assert "runtime.zip" in where and "edgecompress-device-" not in json.dumps(m)  # no other device path leaks


def test_bench_on_unreachable_device_fails_before_the_model_is_loaded(sshd, tmp_path, capsys):
    rc = main(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28",
               "--bench-on", f"ssh://{sshd.user}@127.0.0.1:1", "--ssh-config", str(sshd.config),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "ssh failed" in err[-1], err
    assert not any("model resnet8-tiny" in line for line in err)  # nothing was loaded
    assert not (tmp_path / "o").exists()
    rc = main(["export", "resnet8-tiny", "--ssh-config", str(sshd.config), "--dry-run"])
    assert rc == 2 and "--bench-on" in capsys.readouterr().err
