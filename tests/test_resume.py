"""--resume: KD continues from the last checkpoint after an interruption."""

import copy
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from edgecompress.config import DistillConfig, RunConfig
from edgecompress.errors import ConfigError
from edgecompress.models.zoo import create_model
from edgecompress.train.distill import distill
from edgecompress.train.resume import KdCheckpoint, resume_dir

from .conftest import cli_env, make_npz, quadrants, run_cli


class _Boom(Exception):
    pass


def test_interrupted_distillation_resumes_bit_identically(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("resnet8-tiny", num_classes=4).eval()
    start = create_model("resnet8-tiny", num_classes=4)
    train, val = quadrants(200, 0), quadrants(64, 1)
    cfg = DistillConfig(epochs=3, batch_size=32, patience=5, checkpoint_every=4)  # 7 steps per epoch, 21 in all
    ref = copy.deepcopy(start)
    r_ref = distill(ref, teacher, train, cfg, val=val)

    path, calls = tmp_path / "kd-1.ckpt", [0]

    def dying_forward(x, _f=teacher.forward):  # the "kill": an exception in the 11th step
        calls[0] += 1
        if calls[0] == 11:
            raise _Boom()
        return _f(x)

    teacher.forward = dying_forward
    first = copy.deepcopy(start)
    with pytest.raises(_Boom):
        distill(first, teacher, train, cfg, val=val, checkpoint=KdCheckpoint(path, "k", resume=False, every=4))
    del teacher.forward
    assert path.is_file()
    again = copy.deepcopy(start)
    ck = KdCheckpoint(path, "k", resume=True, every=4)
    r = distill(again, teacher, train, cfg, val=val, checkpoint=ck)
    assert r.resumed_from_step == 8  # the last save before step 11: step 8 (every 4)
    assert r.steps == r_ref.steps == 21 and r.val_history == r_ref.val_history
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in again.state_dict().items())
    with pytest.raises(ConfigError, match="--resume") as e:
        distill(copy.deepcopy(start), teacher, train, cfg, val=val, checkpoint=KdCheckpoint(path, "other", resume=True))
    assert "\n" not in str(e.value)


def test_resume_needs_out():
    with pytest.raises(ConfigError, match="--resume needs --out"):
        RunConfig.from_dict({"resume": True}).validate()


@pytest.mark.slow
def test_run_killed_during_kd_resumes_from_its_checkpoint(tmp_path):
    data = make_npz(tmp_path / "d.npz", n=2500)
    (tmp_path / "r.toml").write_text("[distill]\ncheckpoint_every = 5\nbatch_size = 32\n")
    out = tmp_path / "out"
    args = ["export", "resnet8-tiny", "--data", str(data), "--recipe", str(tmp_path / "r.toml"), "--round-to", "2",
            "--distill-epochs", "6", "--quant", "none", "--runs", "3", "--out", str(out)]  # fmt: skip
    ckpt = resume_dir(out) / "kd-1.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress", *args], cwd=tmp_path, env=cli_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), "no checkpoint appeared during KD"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    saved = torch.load(ckpt, weights_only=True)["loop"]["step"]
    assert 0 < saved < 6 * 57  # mid-KD (2000 train -> 1800 after val, 57 steps/epoch)
    p = run_cli([*args, "--lr", "0.02", "--resume"], cwd=tmp_path)  # not the same run: refused
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "--resume" in errors[0], p.stderr[-800:]
    assert p.stderr.rstrip().endswith(errors[0])  # one line, and the last one
    p = run_cli([*args, "--resume"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming KD from step" in p.stderr
    m = json.loads((out / "manifest.json").read_text())
    d = m["stage_results"]["distill"]
    assert d["schedule"][0]["resumed_from_step"] >= saved > 0 and d["steps"] == 6 * 57
    assert m["config"]["resume"] is True and not resume_dir(out).exists()  # removed after success
