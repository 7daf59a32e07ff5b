"""--nproc: KD over 2 CPU processes with torch.distributed (gloo) ends with identical weights."""

import json

import pytest

from edgecompress.config import (
    BenchConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    PruneConfig,
    QuantConfig,
    RunConfig,
    VerifyConfig,
)
from edgecompress.errors import ConfigError
from edgecompress.pipeline import run

from .conftest import make_npz


def test_nproc_needs_a_kd_stage():
    with pytest.raises(ConfigError, match="--nproc 2 spreads KD") as e:
        RunConfig.from_dict({"nproc": 2, "quant": {"mode": "qat"}, "stages": ["prune", "qat"]}).validate()
    assert "\n" not in str(e.value)
    assert RunConfig.from_dict({"nproc": 2, "stages": ["prune", "kd", "qat"]}).validate().plan()[1] == "distill"


@pytest.mark.slow
def test_two_gloo_processes_finish_with_identical_weights(tmp_path):
    out = tmp_path / "o"
    cfg = RunConfig(
        model=ModelConfig(name="resnet8-tiny", num_classes=4),
        data=DataConfig(data=str(make_npz(tmp_path / "d.npz", n=600)), max_eval=100),
        prune=PruneConfig(ratio=0.4, round_to=2),
        distill=DistillConfig(epochs=2, batch_size=64, patience=2, features=("layer2",)),
        quant=QuantConfig(calib_samples=32),
        bench=BenchConfig(runs=3, warmup=1),
        # the teacher is randomly initialised: its accuracy says nothing, so the drop gate only reports
        verify=VerifyConfig(min_int8_agreement=0.0, max_drop_vs_original=0.0),
        nproc=2,
        out=str(out),
    )
    res = run(cfg, log=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert res.exit_code == 0 and m["status"] == "complete"
    h = m["stage_results"]["distill"]["schedule"][0]
    assert h["nproc"] == 2 and len(h["rank_state_sha256"]) == 2
    assert h["rank_state_sha256"][0] == h["rank_state_sha256"][1]  # bit-identical on both ranks
    # 432 training samples sharded over 2 ranks, 32 per rank per step: 7 steps per epoch
    assert h["steps"] == 14 and [r["epoch"] for r in h["val_top1_history"]] == [1.0, 2.0]
    assert {"pruned.onnx", "int8.onnx", "pruned.pt"} <= {p.name for p in out.iterdir()}
    assert m["artifacts"]["pruned"]["top1"] is not None and m["artifacts"]["int8"]["parent"] == "pruned"
