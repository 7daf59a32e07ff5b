"""Target CPU classes: detection, the QuantConfig settings per class, and their effect on the file."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecompress.config import QuantConfig, RunConfig
from edgecompress.errors import ConfigError
from edgecompress.quantize import target
from tests._onnx_models import cnn


def _isa(*on: str) -> dict[str, bool]:
    from edgecompress.runtime.cpu import INT8_FLAGS

    return {f: f in on for f in INT8_FLAGS}


@pytest.mark.parametrize("info, expected", [
    ({"machine": "x86_64", "isa": _isa("avx2", "avx512f", "avx512bw", "avx512_vnni")}, "x86-vnni"),
    ({"machine": "x86_64", "isa": _isa("avx2", "avx_vnni")}, "x86-vnni"),  # Alder Lake: VNNI without AVX-512
    ({"machine": "x86_64", "isa": _isa("avx2", "avx512f", "amx_int8", "amx_tile")}, "x86-vnni"),
    ({"machine": "AMD64", "isa": _isa("avx2", "avx512_vnni")}, "x86-vnni"),  # Windows spelling
    ({"machine": "x86_64", "isa": _isa("avx2")}, "x86-avx2"),
    ({"machine": "x86_64", "isa": _isa("avx2", "avx512f", "avx512bw")}, "x86-avx2"),  # Skylake-SP: no VNNI
    ({"machine": "x86_64", "isa": _isa()}, "generic"),  # SSE-only x86
    ({"machine": "aarch64", "isa": _isa("asimd", "asimddp")}, "arm64"),
    ({"machine": "arm64", "isa": _isa()}, "arm64"),  # macOS spelling, no /proc/cpuinfo
    ({"machine": "riscv64", "isa": _isa()}, "generic"),
    ({"machine": "", "isa": {}}, "generic"),
    ({"machine": "x86_64", "flags": "fpu sse4_1 avx2 avx512_vnni"}, "x86-vnni"),  # raw flags string
    ({"machine": "x86_64", "flags": ["avx2", "fma"]}, "x86-avx2"),
])  # fmt: skip
def test_detect_target(info, expected):
    assert target.detect_target(info) == expected


def test_detect_this_machine():
    from edgecompress.runtime import cpu_info

    assert target.detect_target(cpu_info()) in target.TARGETS
    assert target.build_machine_target() == target.detect_target(cpu_info())


def test_settings_per_target():
    assert target.settings_for("x86-avx2") == {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True}
    assert target.settings_for("x86-vnni") == {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False}
    assert target.settings_for("arm64") == {"activation_type": "int8", "weight_type": "int8", "reduce_range": False}
    assert target.settings_for("generic")["reduce_range"] is True  # safe on every kernel
    for t in target.TARGETS:
        assert set(target.settings_for(t)) <= {f.name for f in __import__("dataclasses").fields(QuantConfig)}
    with pytest.raises(ValueError, match="unknown target"):
        target.settings_for("x86")


def test_config_validates_and_round_trips_target():
    cfg = RunConfig(quant=QuantConfig(target="arm64", mode="dynamic")).validate()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="--target 'x86'"):
        RunConfig.from_dict({"quant": {"target": "x86"}}).validate()
    with pytest.raises(ConfigError, match="generic"):  # detection-only class, not requestable
        QuantConfig(target="generic").validate()


def test_export_flag_reaches_the_config(capsys):
    from edgecompress.cli import main

    assert main(["export", "--dry-run", "--target", "x86-avx2", "--quant", "dynamic"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["quant"]["target"] == "x86-avx2" and out["config"]["quant"]["mode"] == "dynamic"
    assert "dynamic" in out["stages"]
    assert main(["export", "--dry-run", "--target", "sparc"]) == 2
    assert "--target 'sparc'" in capsys.readouterr().err


# --- effect on quantize_ptq ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return cnn(tmp_path_factory.mktemp("tgt") / "fp32.onnx", hidden=16, weight_std=1.0)


CALIB = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)


def _quantized_weights(path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8]  # fmt: skip


def _activation_zero_point_types(path) -> set[int]:
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    return {inits[n.input[2]].data_type for n in m.graph.node if n.op_type == "QuantizeLinear"
            and len(n.input) > 2 and n.input[2] in inits}  # fmt: skip


@pytest.fixture
def build_machine(monkeypatch):
    def set_(cls: str) -> None:
        monkeypatch.setattr(target, "build_machine_target", lambda: cls)

    return set_


def test_avx2_target_gives_7bit_weights_and_vnni_does_not(fp32, tmp_path, build_machine):
    from edgecompress.quantize import quantize_ptq

    build_machine("x86-vnni")
    avx2 = quantize_ptq(fp32, tmp_path / "avx2.onnx", CALIB, QuantConfig(target="x86-avx2"))
    vnni = quantize_ptq(fp32, tmp_path / "vnni.onnx", CALIB, QuantConfig(target="x86-vnni"))
    w_avx2, w_vnni = _quantized_weights(avx2.path), _quantized_weights(vnni.path)
    assert len(w_avx2) == len(w_vnni) == 2  # conv and fc weights
    # 7-bit: onnxruntime's reduced int8 range is [-64, 64]; 2*255*64 = 32640 fits VPMADDUBSW's int16.
    assert all(w.min() >= -64 and w.max() <= 64 for w in w_avx2)
    assert max(int(np.abs(w).max()) for w in w_vnni) == 127  # full 8-bit range
    assert avx2.settings["reduce_range"] is True and vnni.settings["reduce_range"] is False
    assert avx2.settings["target"] == "x86-avx2" and avx2.settings["target_requested"] == "x86-avx2"
    assert avx2.settings["build_machine_target"] == "x86-vnni"
    assert avx2.settings["target_settings"] == target.settings_for("x86-avx2")
    assert any("not the target's" in w for w in avx2.settings["warnings"])  # built on another CPU class
    assert vnni.settings["warnings"] == []  # same class as this (simulated) machine


def test_auto_uses_the_build_machine_class(fp32, tmp_path, build_machine):
    from edgecompress.quantize import quantize_ptq

    build_machine("x86-avx2")
    r = quantize_ptq(fp32, tmp_path / "auto.onnx", CALIB, QuantConfig())
    assert r.settings["target"] == "x86-avx2" and r.settings["target_requested"] == "auto"
    assert r.settings["reduce_range"] is True and r.settings["warnings"] == []
    assert all(np.abs(w).max() <= 64 for w in _quantized_weights(r.path))


def test_arm64_target_is_s8s8(fp32, tmp_path, build_machine):
    from edgecompress.quantize import quantize_ptq

    build_machine("x86-vnni")
    arm = quantize_ptq(fp32, tmp_path / "arm.onnx", CALIB, QuantConfig(target="arm64"))
    x86 = quantize_ptq(fp32, tmp_path / "x86.onnx", CALIB, QuantConfig(target="x86-vnni"))
    assert _activation_zero_point_types(arm.path) == {onnx.TensorProto.INT8}
    assert _activation_zero_point_types(x86.path) == {onnx.TensorProto.UINT8}
    assert arm.settings["activation_type"] == "int8" and arm.settings["warnings"]


def test_explicit_user_value_wins_and_is_reported(fp32, tmp_path, build_machine):
    from edgecompress.quantize import quantize_ptq

    build_machine("x86-avx2")
    r = quantize_ptq(fp32, tmp_path / "u.onnx", CALIB, QuantConfig(target="x86-avx2", activation_type="int8"))
    assert r.settings["user_overrides"] == {"activation_type": "int8"}
    assert r.settings["activation_type"] == "int8" and r.settings["reduce_range"] is True
    assert any("activation_type='int8' set explicitly" in w for w in r.settings["warnings"])
    assert _activation_zero_point_types(r.path) == {onnx.TensorProto.INT8}
    assert Counter(n.op_type for n in onnx.load(str(r.path)).graph.node)["DequantizeLinear"] > 0
