"""--latency-aware-int8 auto, the default (edgecompress.quantize.ort): the latency-aware pass runs
when the INT8 file is not faster than its FP32 parent on the measuring device, and for models of
>= 200M MACs; never for another CPU class. The timings are injected (a fake meter), so no test
depends on this machine's speed."""

import shutil
from types import SimpleNamespace

import pytest
import torch

from edgecompress.config import ExportOnnxConfig, QuantConfig
from edgecompress.export import export_onnx
from edgecompress.models.zoo import create_model
from edgecompress.quantize import latency_aware as la_mod
from edgecompress.quantize import ort as ortq
from edgecompress.quantize import quantize_ptq
from edgecompress.quantize.ptq import QuantResult
from edgecompress.quantize.registry import QuantJob
from edgecompress.runtime import kernel_report
from edgecompress.runtime.meter import LOCAL

from .conftest import quadrants


class FakeMeter:
    """This machine's identity, injected p50s: [parent, INT8] for every side-by-side comparison."""

    dest = "local"

    def __init__(self, parent_ms: float, int8_ms: float) -> None:
        self.parent_ms, self.int8_ms, self.calls = parent_ms, int8_ms, []

    @property
    def info(self):
        return LOCAL.info

    def measure_latency(self, path, **kw):
        return SimpleNamespace(p50_ms=self.parent_ms)

    def round_robin_p50(self, paths, **kw):
        self.calls.append([p.name for p in paths])
        return [self.parent_ms, self.int8_ms]

    def layer_times(self, *a, **kw):
        raise AssertionError("the pass itself is replaced in these tests")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("auto") / "pruned.onnx"
    export_onnx(create_model("resnet8-tiny", num_classes=4).eval(), torch.zeros(1, 1, 16, 16), path, ExportOnnxConfig())
    return path


@pytest.fixture
def pass_calls(monkeypatch):
    """Replaces the latency-aware pass: records how it was called, ships its start (or plain INT8)."""
    calls = []

    def fake(src, dst, calib, cfg, *, start=None, **kw):
        calls.append({"start": start, "cfg": cfg})
        res = start or quantize_ptq(src, dst, calib, cfg, quiet=True)
        if res.path != dst:
            shutil.copyfile(res.path, dst)
        return QuantResult(dst, res.calib_samples, res.settings), {"fp32_nodes": [], "ran": True}

    monkeypatch.setattr(ortq, "latency_aware_ptq", fake)
    return calls


def job(fp32, tmp_path, meter, macs=1_000_000, **quant):
    return QuantJob(src=fp32, dst=tmp_path / "int8.onnx", cfg=QuantConfig(**quant), calib_x=quadrants(16, 0).x,
                    input_shape=(1, 1, 16, 16), meter=meter, model_macs=macs)


def test_auto_runs_the_pass_when_int8_is_not_faster_than_its_parent(fp32, tmp_path, pass_calls):
    meter = FakeMeter(parent_ms=1.0, int8_ms=1.2)
    out = ortq.run_static(job(fp32, tmp_path, meter))
    auto = out.stage_results["latency_aware_auto"]
    assert auto["runs"] and "1.2000 ms is not below its FP32 parent's 1.0000 ms" in auto["why"]
    assert meter.calls == [["pruned.onnx", "int8.onnx"]]  # side by side, parent first
    # the pass starts from the INT8 file already made (no second calibration) and its record is kept
    assert len(pass_calls) == 1 and pass_calls[0]["start"].path == tmp_path / "int8.onnx"
    assert out.stage_results["latency_aware"]["ran"]


def test_auto_leaves_a_faster_int8_file_alone(fp32, tmp_path, pass_calls):
    meter = FakeMeter(parent_ms=1.0, int8_ms=0.5)
    out = ortq.run_static(job(fp32, tmp_path, meter))
    auto = out.stage_results["latency_aware_auto"]
    assert not auto["runs"] and auto["p50_ms_int8"] == 0.5 and auto["p50_ms_parent"] == 1.0
    assert pass_calls == [] and "latency_aware" not in out.stage_results
    assert kernel_report(out.result.path).int8_op_fraction == 1.0


def test_auto_runs_the_pass_on_a_large_model_without_comparing_first(fp32, tmp_path, pass_calls):
    meter = FakeMeter(parent_ms=1.0, int8_ms=0.5)
    out = ortq.run_static(job(fp32, tmp_path, meter, macs=300_000_000))
    assert out.stage_results["latency_aware_auto"] == {"runs": True, "why": "the model has 300M MACs >= 200M"}
    assert meter.calls == [] and len(pass_calls) == 1 and pass_calls[0]["start"] is None


def test_off_and_on(fp32, tmp_path, pass_calls):
    slower = FakeMeter(parent_ms=1.0, int8_ms=2.0)
    out = ortq.run_static(job(fp32, tmp_path, slower, latency_aware="off"))
    assert pass_calls == [] and slower.calls == [] and out.stage_results == {}
    out = ortq.run_static(job(fp32, tmp_path, FakeMeter(1.0, 0.5), latency_aware="on"))
    assert len(pass_calls) == 1 and "latency_aware_auto" not in out.stage_results


def test_auto_does_not_measure_for_another_cpu_class(fp32, tmp_path, pass_calls):
    from edgecompress.quantize.target import detect_target

    other = "arm64" if detect_target(LOCAL.info["cpu"]) != "arm64" else "x86-vnni"
    meter = FakeMeter(parent_ms=1.0, int8_ms=2.0)
    out = ortq.run_static(job(fp32, tmp_path, meter, target=other))
    auto = out.stage_results["latency_aware_auto"]
    assert not auto["runs"] and "another CPU class" in auto["why"]
    assert meter.calls == [] and pass_calls == []
    assert not any("--latency-aware-int8" in w for w in out.result.settings.get("warnings", []))  # auto: no warning


def test_the_pass_reuses_the_int8_file_it_starts_from(fp32, tmp_path, monkeypatch):
    """``start``: the all-INT8 file is not calibrated again (a 224-px model calibrates for minutes)."""
    calib = quadrants(16, 0).x
    start = quantize_ptq(fp32, tmp_path / "int8.onnx", calib, QuantConfig())
    calls = []
    real = la_mod.quantize_ptq
    monkeypatch.setattr(la_mod, "quantize_ptq", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    res, rec = la_mod.latency_aware_ptq(fp32, tmp_path / "out.onnx", calib, QuantConfig(), start=start,
                                        times=lambda p: {}, compare=lambda paths: [2.0, 1.0])
    assert calls == [] and rec["candidates"] == {} and not rec["parent"]["all_fp32"]
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "int8.onnx").read_bytes()


@pytest.mark.slow
def test_cli_default_records_the_auto_decision(tmp_path):
    """With defaults the run times INT8 against its parent and records why the pass ran or not;
    when it ran, its record (and, if every layer went back to FP32, the report's first lines) say so."""
    import json

    from .conftest import run_cli

    out = tmp_path / "o"
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--stages", "ptq",
                 "--calib-samples", "16", "--runs", "5", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    auto = m["stage_results"]["latency_aware_auto"]
    assert m["config"]["quant"]["latency_aware"] == "auto"
    assert auto["runs"] == (auto["p50_ms_int8"] >= auto["p50_ms_parent"])
    assert ("latency_aware" in m["stage_results"]) == auto["runs"]
    report = (out / "report.md").read_text()
    assert f"Latency-aware INT8 (auto): {'ran' if auto['runs'] else 'not run'}: " in report
    if auto["runs"] and m["stage_results"]["latency_aware"]["parent"]["all_fp32"]:
        assert m["artifacts"]["int8"]["int8_op_fraction"] == 0.0
        assert "computes in FP32" in report.split("Status: ")[0]  # in the first lines
