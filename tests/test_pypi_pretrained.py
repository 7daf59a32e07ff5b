"""Real pretrained weights from PyPI wheels, compressed end to end through the CLI (slow).

Two MNIST digit classifiers whose state_dicts ship inside their wheels (tests/pypi_digit_models.py;
installed by tools/setup.sh with --no-deps), on printed digits made by a script
(tests/_digits.py): prune 50% of MACs, distil, INT8, and the accuracy change against the
original measured under onnxruntime on held-out digits."""

import json
import os
import shutil

import pytest

from . import pypi_digit_models as pdm
from ._digits import fonts, write_npz
from .conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("factory", ["ccexam", "digit_recognizer"])
def test_wheel_pretrained_digit_classifier_compresses(tmp_path, factory):
    w = pdm.weights(factory)
    if w is None and not os.environ.get("CI"):  # CI installs them (tools/setup.sh): a miss fails there
        pytest.skip(f"pip install --no-deps {'ccexam==1.0.0' if factory == 'ccexam' else 'digit-recognizer-py==0.1.0'}")
    if not fonts():
        pytest.skip("apt-get install fonts-dejavu-core (the digits are rendered from TrueType fonts)")
    assert w is not None and w.is_file(), f"{factory}: the wheel's weights are not installed"
    shutil.copy(ROOT / "tests" / "pypi_digit_models.py", tmp_path / "digits_models.py")
    write_npz(tmp_path / "digits.npz", 2500)
    out = tmp_path / "out"
    p = run_cli(["export", f"digits_models.py:{factory}", "--weights", str(w), "--data", "digits.npz",
                 "--distill-epochs", "2", "--exporter", "torchscript", "--runs", "20", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    a = m["artifacts"]
    assert m["model"]["weights"] == str(w) and m["data"]["eval"] == 500
    assert a["original"]["top1"] >= 0.95  # the wheel's trained weights, on the script's digits
    assert a["pruned"]["macs"] <= 0.55 * a["original"]["macs"]
    assert a["original"]["top1"] - a["int8"]["top1"] <= 0.03, (a["original"]["top1"], a["int8"]["top1"])
    assert m["stage_results"]["quantize"]["agreement_with_fp32"] >= 0.97
