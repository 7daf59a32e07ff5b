"""The package as a user installs it: a wheel built from the repo, installed into a fresh venv,
runs the default export on the shipped teacher from a directory that is not the repo (slow).

The fresh venv gets no copy of torch & co. (gigabytes): a ``.pth`` file in its site-packages
adds the site-packages of the interpreter running the tests, after its own. A plain path line
in a ``.pth`` does not process that directory's own ``.pth`` files, so the editable install of
the repo there stays inactive and ``edgecompress`` resolves to the wheel (asserted below)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT, needs_fmnist

pytestmark = pytest.mark.slow


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy, so the build leaves nothing in the repo
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "edgecompress", src / "edgecompress", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("edgecompress-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    purelib = Path(subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, text=True)
    return env


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wheel, not the repo, must run
    env.update({"HOME": str(home), "OMP_NUM_THREADS": "1"})
    return env


def test_wheel_carries_the_shipped_teachers(venv, tmp_path):
    code = ("import edgecompress.models.loading as l, json; "
            "print(json.dumps([l.__file__, [str(l.shipped_checkpoint(n)[0]) for n in l.SHIPPED_TEACHERS]]))")
    p = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    module, pts = json.loads(p.stdout)
    assert Path(module).is_relative_to(venv), module  # the installed wheel, not the repo
    for pt in map(Path, pts):
        assert pt.is_relative_to(venv) and pt.stat().st_size > 100_000
        assert _sha256(pt) == json.loads(pt.with_suffix(".json").read_text())["sha256"]


@needs_fmnist
def test_wheel_default_export_uses_the_shipped_teacher(venv, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([str(venv / "bin" / "edgecompress"), "export", "--max-train", "2000", "--max-eval", "2000",
                        "--distill-epochs", "0.1",
                        "--calib-samples", "128", "--exporter", "torchscript", "--runs", "20", "--min-agreement", "0",
                        "--max-drop-vs-original", "0",  # 0.1 epoch of KD does not recover the pruned net: not the point here
                        "--out", str(out)], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    weights = Path(m["model"]["weights"])
    assert m["model"]["ref"] == "resnet20" and weights.is_relative_to(venv), weights
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert m["model"]["weights_sha256"] == sidecar["sha256"] == _sha256(weights)
    # a seeded 2,000 of the official test split (the sidecar's 93.54% is on all 10k)
    assert m["data"]["eval_source"] == "official 10k test split" and m["data"]["eval"] == 2000
    assert m["artifacts"]["original"]["top1"] >= 0.92  # the trained teacher, not a random init (~10%)
