import torch

from edgecompress.models.zoo import create_model
from edgecompress.prune.sensitivity import SensitivityConfig, sensitivity, write_outputs

from .conftest import quadrants as _quadrants


def test_sensitivity_table_and_plot(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8-tiny", num_classes=4).eval()
    val = _quadrants(128, 3)
    res = sensitivity(model, torch.zeros(1, 1, 16, 16), val, SensitivityConfig(ratios=(0.25, 0.5)))
    groups = {r["group"] for r in res["rows"]}
    assert "fc" not in groups and len(groups) >= 4  # the classifier is never a candidate
    assert len(res["rows"]) == 2 * len(groups)
    for g in groups:
        a, b = (r for r in res["rows"] if r["group"] == g)
        assert 0 < a["macs_removed"] < b["macs_removed"]  # more channels, more MACs gone
    paths = write_outputs(res, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| group |" in paths[1].read_text()
