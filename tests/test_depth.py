"""Depth pruning: residual blocks are found by tracing, ranked by output distortion, removed,
and the removal survives save/reload and ONNX export."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.config import ExportOnnxConfig, PruneConfig
from edgecompress.errors import BadInput
from edgecompress.export import export_onnx, parity
from edgecompress.models import apply_record
from edgecompress.models.zoo import create_model
from edgecompress.prune import count_macs_params, prune
from edgecompress.prune.depth import drop_blocks, residual_blocks

X = torch.zeros(1, 1, 16, 16)


def _resnet20():
    torch.manual_seed(0)
    return create_model("resnet20").eval()


def test_residual_blocks_are_the_shape_preserving_identity_shortcuts():
    names = residual_blocks(_resnet20(), X)
    # stride-2 blocks with 1x1 projection shortcuts change the shape: never candidates
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def test_a_container_of_one_block_is_not_a_second_candidate():
    torch.manual_seed(0)
    # resnet8-tiny: layer1 = Sequential(one identity-shortcut block); layer2/3 change the shape
    assert residual_blocks(create_model("resnet8-tiny").eval(), X) == ["layer1.0"]


def test_a_plain_conv_stack_has_no_removable_block():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))

        def forward(self, x):
            return self.body(x)

    assert residual_blocks(Plain().eval(), X) == []


def test_the_block_whose_removal_changes_nothing_goes_first():
    m = _resnet20()
    with torch.no_grad():  # zero residual branch: the block is exactly relu(x) = x on its input
        m.layer2[2].bn2.weight.zero_()
        m.layer2[2].bn2.bias.zero_()
    calib = np.random.default_rng(0).random((32, 1, 16, 16), dtype=np.float32)
    ref = m(torch.from_numpy(calib)).detach()
    dropped = drop_blocks(m, X, 1, calib)
    assert [d.name for d in dropped] == ["layer2.2"]
    assert dropped[0].kl < 1e-9
    assert isinstance(m.layer2[2], nn.Identity)
    assert torch.allclose(m(torch.from_numpy(calib)), ref, atol=1e-5)


def test_too_many_blocks_is_bad_input_with_the_count():
    with pytest.raises(BadInput, match="has 7 removable residual block"):
        prune(_resnet20(), X, PruneConfig(ratio=0.5, drop_blocks=8))


def test_depth_and_width_together_meet_the_macs_target_and_reload(tmp_path):
    m = _resnet20()
    macs0 = count_macs_params(m, X)[0]
    res = prune(m, X, PruneConfig(ratio=0.8, drop_blocks=3, round_to=4))
    assert len(res.dropped_blocks) == 3
    assert res.macs_after <= 0.2 * macs0
    removed = [n for n, a in res.record.items() if a == {"removed": True}]
    assert sorted(removed) == sorted(b["name"] for b in res.dropped_blocks)
    assert sum(1 for r in res.layers if r.get("removed")) == 6  # two convs per dropped block
    # a fresh model + the record + the weights reproduce the pruned model exactly
    fresh = apply_record(_resnet20(), res.record, res.model.state_dict())
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), res.model(x))
    p = tmp_path / "p.onnx"
    export_onnx(res.model, X, p, ExportOnnxConfig())
    assert parity(res.model, p, x.numpy(), 1e-4).passed


def test_dropping_alone_can_meet_a_small_target():
    res = prune(_resnet20(), X, PruneConfig(ratio=0.05, drop_blocks=2))
    assert res.channel_ratio == 0.0  # no channel pruning was needed
    assert len(res.dropped_blocks) == 2 and res.macs_after < res.macs_before


def test_ignored_layers_protect_their_block():
    res = prune(_resnet20(), X, PruneConfig(ratio=0.0, drop_blocks=6, ignore=("layer3.2.conv1",)))
    assert "layer3.2" not in [b["name"] for b in res.dropped_blocks]
