"""The quantizer of a run comes from one table keyed by (mode, backend)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgecompress.config import QuantBackend, QuantConfig, QuantMode
from edgecompress.errors import ConfigError
from edgecompress.quantize import quantize_ptq, registry
from tests._onnx_models import cnn


def test_every_registered_pair_resolves_to_a_quantizer():
    for mode, backend in registry.QUANTIZERS:
        fn = registry.quantizer_for(mode, backend)
        assert callable(fn) and fn.__module__.startswith("edgecompress.quantize.")


def test_an_unregistered_pair_is_a_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="--quant dynamic --quant-backend ort"):
        registry.quantizer_for(QuantMode.DYNAMIC, QuantBackend.INC)


def test_ort_static_quantizer_writes_an_int8_file(tmp_path):
    fp32 = cnn(tmp_path / "m.onnx", classes=4)
    calib = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    job = registry.QuantJob(src=fp32, dst=tmp_path / "int8.onnx", cfg=QuantConfig(), calib_x=calib)
    out = registry.quantizer_for(QuantMode.PTQ, QuantBackend.ORT)(job)
    assert out.result.path.exists() and out.result.calib_samples == 16 and out.check_float_layers


def test_quantization_leaves_the_root_logger_level_alone(tmp_path):
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        fp32 = cnn(tmp_path / "m.onnx", classes=4)
        quantize_ptq(fp32, tmp_path / "q.onnx", np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32),
                     QuantConfig())
        assert root.level == logging.INFO and not root.filters
    finally:
        root.setLevel(before)
