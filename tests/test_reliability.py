"""Interrupted runs, atomic replacement and determinism (slow: real runs in subprocesses)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecompress.pipeline import rundir

from .conftest import ROOT, cli_env, needs_fmnist, run_cli

QUICK = ["resnet8-tiny", "--max-train", "600", "--max-eval", "300", "--round-to", "2", "--distill-epochs", "0.5",
         "--calib-samples", "32", "--runs", "5", "--min-agreement", "0"]  # untrained: near-tied logits
# stage lines on stderr at which the run is killed, in the order they appear
KILL_POINTS = ["exporting original.onnx", "pruning", "distilling", "exporting pruned.onnx", "quantizing",
               "evaluating", "benchmarking"]


def _finished_looking(parent: Path) -> list[Path]:
    """Files outside hidden staging dirs that look like deliverables."""
    return [p for p in parent.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
            p.relative_to(parent).parts) and (p.suffix in (".onnx", ".pt", ".md") or p.name == "manifest.json")]


def _whole(run: Path) -> bool:
    import hashlib

    m = json.loads((run / "manifest.json").read_text())
    return m["status"] == "complete" and all(
        hashlib.sha256((run / a["path"]).read_bytes()).hexdigest() == a["sha256"] for a in m["artifacts"].values())


def _kill_at(marker: str, args: list[str], cwd: Path) -> bool:
    """Runs the CLI and SIGKILLs it right after ``marker`` appears; True if it was killed
    (a tiny run can finish its last stages before the signal lands)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress", *args], cwd=cwd, env=cli_env(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        for line in proc.stderr:
            if marker in line:
                break
            assert time.time() < deadline, f"never saw {marker!r}"
        else:
            pytest.fail(f"run ended before {marker!r}")
        time.sleep(0.05)  # let it get into the stage
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@needs_fmnist
def test_sigkill_at_every_stage_leaves_nothing_finished_and_keeps_previous_run(tmp_path):
    prev = tmp_path / "prev"
    p = run_cli(["export", *QUICK, "--out", str(prev)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-1500:]
    before = {f.name: f.read_bytes() for f in prev.iterdir()}
    killed = 0
    for i, marker in enumerate(KILL_POINTS):
        fresh = tmp_path / f"fresh{i}"
        killed += _kill_at(marker, ["export", *QUICK, "--out", str(fresh)], tmp_path)
        # never half-delivered: absent, or (the kill landed after the final rename) whole
        assert not fresh.exists() or _whole(fresh), marker
        _kill_at(marker, ["export", *QUICK, "--out", str(prev), "--overwrite"], tmp_path)
        now = {f.name: f.read_bytes() for f in prev.iterdir()}
        if now != before:  # the kill landed after the atomic swap: then the new run must be whole
            assert _whole(prev), marker
            before = now
    assert killed >= 5  # most stages really were interrupted
    fresh_dirs = {p.name for p in tmp_path.iterdir() if p.name.startswith("fresh")}
    looking = {p.relative_to(tmp_path).parts[0] for p in _finished_looking(tmp_path)}
    assert looking <= {"prev"} | {d for d in fresh_dirs if (tmp_path / d / "manifest.json").exists()}
    # the next run cleans the staging dirs the killed ones left behind
    assert list(tmp_path.glob(".*partial*"))
    p = run_cli(["export", *QUICK, "--out", str(prev), "--overwrite"], cwd=tmp_path)
    assert p.returncode == 0
    assert not list(tmp_path.glob(".prev.partial*"))


def test_finalize_swaps_atomically(tmp_path):
    out, staging = tmp_path / "out", tmp_path / ".out.partial-1"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    staging.mkdir()
    (staging / "manifest.json").write_text("new")
    rundir.finalize(staging, out)
    assert (out / "manifest.json").read_text() == "new"
    assert not staging.exists() and not list(tmp_path.glob(".out.old*"))


def test_clean_stale_removes_only_dead_runs(tmp_path):
    out = tmp_path / "o"
    dead, alive = tmp_path / ".o.partial-999999999", tmp_path / f".o.partial-{os.getppid()}"
    dead.mkdir()
    alive.mkdir()
    assert rundir.clean_stale(out) == [dead]
    assert alive.exists() and not dead.exists()


@pytest.mark.slow
@needs_fmnist
def test_same_seed_same_structure_and_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        p = run_cli(["export", *QUICK, "--seed", "3", "--out", str(tmp_path / name)], cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-1500:]
        runs.append(json.loads((tmp_path / name / "manifest.json").read_text()))
    a, b = runs
    assert a["seed"] == b["seed"] == 3 and a["versions"] == b["versions"]
    assert a["stage_results"]["prune"]["layers"] == b["stage_results"]["prune"]["layers"]
    for k in ("original", "pruned", "int8"):
        for field in ("macs", "params", "top1", "bytes"):
            assert a["artifacts"][k][field] == b["artifacts"][k][field], (k, field)
    assert a["artifacts"]["pruned"]["sha256"] == b["artifacts"]["pruned"]["sha256"]  # bit-identical weights
    assert (tmp_path / "a" / "pruned.pt").read_bytes() == (tmp_path / "b" / "pruned.pt").read_bytes()
    assert ROOT.exists()
