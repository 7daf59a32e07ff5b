"""Stage order prune -> kd -> qat: QAT starts from the distilled student."""

import json

import pytest
import torch

from edgecompress.config import (
    BenchConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    PruneConfig,
    QatConfig,
    RunConfig,
    VerifyConfig,
)
from edgecompress.pipeline import run

from .conftest import make_npz


@pytest.mark.slow
def test_prune_kd_qat_starts_qat_from_the_distilled_student(tmp_path, monkeypatch):
    import edgecompress.quantize.qat as qatm

    seen = {}
    real = qatm.qat

    def spy(model, teacher, *a, **kw):
        seen["student"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(model, teacher, *a, **kw)

    monkeypatch.setattr(qatm, "qat", spy)
    out = tmp_path / "o"
    cfg = RunConfig(
        model=ModelConfig(name="resnet8-tiny", num_classes=4),
        data=DataConfig(data=str(make_npz(tmp_path / "d.npz", n=300)), max_eval=60),
        prune=PruneConfig(ratio=0.3, round_to=2),
        distill=DistillConfig(epochs=1, batch_size=32),
        qat=QatConfig(epochs=0.2, batch_size=32, calib_samples=32),
        bench=BenchConfig(runs=3, warmup=1),
        # the teacher is randomly initialised: its accuracy says nothing, so the drop gate only reports
        verify=VerifyConfig(min_int8_agreement=0.0, max_drop_vs_original=0.0),
        stages=("prune", "kd", "qat"),
        out=str(out),
    )
    res = run(cfg, log=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert res.exit_code == 0 and m["stages"] == ["prune", "distill", "qat"]
    assert m["stage_results"]["distill"]["steps"] > 0
    assert m["stage_results"]["quantize"]["qat"]["started_from"] == "pruned (distilled)"
    assert m["artifacts"]["int8"]["parent"] == "pruned"
    # the model handed to QAT holds exactly the distilled weights saved in pruned.pt
    saved = torch.load(out / "pruned.pt", weights_only=True)["state_dict"]
    assert saved.keys() == seen["student"].keys()
    assert all(torch.equal(saved[k], seen["student"][k]) for k in saved)
