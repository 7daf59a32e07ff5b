"""``edgecompress bench --remote DEST``: against an sshd on 127.0.0.1 that the test starts itself
(tests/_sshd.py). The device's python is this venv's (the remote PATH's python3 has no
onnxruntime); the device runs the runtime code shipped as a zip, not the installed package.
Speed is never asserted: the remote ratios must match a local bench of the same files within
loose bounds, and the JSON must have the local one's structure plus the device's identity."""

from __future__ import annotations

import glob
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.errors import BadInput
from edgecompress.runtime.kernels import origin_keys
from edgecompress.runtime.remote import Device, scp_target
from tests._onnx_models import cnn
from tests._sshd import loopback_sshd

PY = sys.executable  # the device's python: this venv's, which has numpy, onnx and onnxruntime


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("remote-models")
    (d / "a").mkdir()
    (d / "b").mkdir()
    # same file name in two folders (they must not overwrite each other on the device); the second
    # has ~16x fewer conv MACs, so the ratio between them is well above the timing noise
    return [cnn(d / "a" / "m.onnx", hw=48, hidden=64), cnn(d / "b" / "m.onnx", hw=48, hidden=4)]


def _bench(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["bench", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _remote(sshd, dest: str | None = None, python: str = PY) -> list[str]:
    return ["--remote", dest or "device", "--ssh-config", str(sshd.config), "--remote-python", python]


def _device_dirs() -> set[str]:
    return set(glob.glob("/tmp/edgecompress-device-*"))


def test_scp_target_of_each_destination_form():
    assert scp_target("pi@board", "/tmp/x/m.onnx") == "pi@board:/tmp/x/m.onnx"
    assert scp_target("board", "/tmp/x") == "board:/tmp/x"
    assert scp_target("ssh://pi@board:2222", "/tmp/x") == "scp://pi@board:2222//tmp/x"


def test_remote_ratios_match_local(sshd, files, capsys):
    before = _device_dirs()
    # CPU time per run: the ratio is then about the files, not about who else used the 2 cores meanwhile
    common = [*map(str, files), "--json", "--runs", "200", "--rounds", "5", "--warmup", "10", "--clock", "cpu"]
    rc, out, err = _bench(capsys, *common, *_remote(sshd))
    assert rc == 0, err
    remote = json.loads(out)
    rc, out, err = _bench(capsys, *common)
    assert rc == 0, err
    local = json.loads(out)

    assert set(remote) == set(local) >= {"models", "cpu", "baseline", "results", "device"}
    assert remote["models"] == local["models"]  # the same files, named by their local paths, same sizes
    assert remote["baseline"] == local["baseline"] == str(files[0])
    dev = remote["device"]
    assert dev["dest"] == "device" and local["device"]["dest"] == "local"
    assert dev["key"] == f"{platform.node()} / {remote['cpu']['model']}" == local["device"]["key"]
    assert dev["cpu"] == remote["cpu"] and set(dev["cpu"]["isa"]) >= {"avx2", "asimd"}
    assert "runtime.zip" in dev["runtime_from"]  # the shipped code ran, not the installed package
    (rr,), (lr,) = remote["results"], local["results"]
    assert (rr["threads"], rr["batch"], rr["rounds"]) == (lr["threads"], lr["batch"], lr["rounds"]) == (1, 1, 5)
    assert rr["clock"] == lr["clock"] == "cpu"
    assert [f["model"] for f in rr["files"]] == [str(p) for p in files]
    for f in rr["files"]:
        assert 0 < f["p50_ms"] <= f["p90_ms"]
    ratio_remote, ratio_local = rr["files"][1]["speedup"], lr["files"][1]["speedup"]
    assert 0.7 < ratio_remote / ratio_local < 1 / 0.7, (ratio_remote, ratio_local)
    assert _device_dirs() == before  # the device's temporary directory was removed


def test_remote_one_file_with_profile_by_url(sshd, files, capsys):
    rc, out, err = _bench(capsys, str(files[0]), "--json", "--runs", "5", "--warmup", "1", "--profile",
                          *_remote(sshd, dest=sshd.url))
    assert rc == 0, err
    res = json.loads(out)
    assert res["model"] == str(files[0]) and res["bytes"] == files[0].stat().st_size
    assert res["device"]["dest"] == sshd.url
    (row,) = res["results"]
    assert row["runs"] == 5
    ops = {o["op"] for o in row["profile"]["ops"]}
    assert any("Conv" in op for op in ops), ops
    rc, out, err = _bench(capsys, str(files[0]), "--runs", "5", "--warmup", "1", *_remote(sshd))  # the table
    assert rc == 0, err
    assert f"on {platform.node()} / " in out.splitlines()[0]


def _pythons_without_onnxruntime(tmp: Path) -> list[str]:
    stripped = tmp / "python-no-site"  # this python without its site-packages: no numpy, onnx, onnxruntime
    stripped.write_text(f'#!/bin/sh\nexec {PY} -S "$@"\n')
    stripped.chmod(0o755)
    found = [str(stripped)]
    for p in ("/usr/bin/python3",):
        r = subprocess.run([p, "-c", "import onnxruntime"], capture_output=True) if Path(p).exists() else None
        if r is not None and r.returncode != 0:
            found.append(p)  # the system python, as a fresh board has it
    return found


def test_missing_onnxruntime_names_the_install_line(sshd, files, capsys, tmp_path):
    for python in _pythons_without_onnxruntime(tmp_path):
        before = _device_dirs()
        rc, out, err = _bench(capsys, str(files[0]), *_remote(sshd, python=python))
        assert rc == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: device: "), err
        assert f"{python} -m pip install " in err and "onnxruntime" in err and "--remote-python" in err, err
        assert _device_dirs() == before  # nothing was left on the device


def test_no_python_and_no_login_are_one_line_errors(sshd, files, capsys):
    rc, _, err = _bench(capsys, str(files[0]), *_remote(sshd, python="/no/such/python"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "/no/such/python" in err and "--remote-python" in err
    rc, _, err = _bench(capsys, str(files[0]), *_remote(sshd, dest=f"ssh://{sshd.user}@127.0.0.1:1"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ssh failed" in err, err


def test_device_error_names_the_local_file(sshd, tmp_path, capsys):
    dyn = cnn(tmp_path / "dyn.onnx", hw="S")  # symbolic spatial dims: the device asks for --input-shape
    rc, out, err = _bench(capsys, str(dyn), "--runs", "3", *_remote(sshd))
    assert rc == 2 and out == ""
    assert "--input-shape" in err and str(dyn) in err and "edgecompress-device-" not in err, err


def test_device_api_layer_times_and_reuse(sshd, files):
    """The measurement counterparts a pass can call: per-layer kernel times named like local ones,
    latency, side-by-side p50s; an unchanged file is copied once; close() removes the directory."""
    keys = origin_keys(__import__("onnx").load(str(files[0])))
    with Device("device", python=PY, ssh_config=sshd.config) as dev:
        assert dev.info["key"].startswith(platform.node())
        t = dev.layer_times(files[0], keys, threads=1, batch=1, runs=5)
        assert set(t) == {"conv", "fc"} and all(v > 0 for v in t.values())
        lat = dev.measure_latency(files[0], runs=5, warmup=1)
        assert lat.runs == 5 and 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms
        p50s = dev.round_robin_p50(files, runs=5, rounds=2)
        assert len(p50s) == 2 and all(p > 0 for p in p50s)
        copied = dict(dev._uploaded)
        dev.round_robin_p50(files, runs=5, rounds=1)
        assert dev._uploaded == copied  # not copied again
        where = dev.dir
    assert where is not None and not Path(where).exists()


def test_bad_destination_is_refused():
    with pytest.raises(BadInput, match="ssh destination"):
        Device("-oProxyCommand=x")
