"""``edgecompress bench``: table and JSON, thread x batch grid, size with external data, symbolic
input dims, and refusal of files that fail onnx.checker. Runs the CLI in-process (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgecompress.cli import main
from tests._onnx_models import broken, cnn

QUICK = ["--runs", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return cnn(tmp_path_factory.mktemp("bench") / "m.onnx")


def _bench(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["bench", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_grid_has_one_row_per_threads_batch(model, capsys):
    rc, out, err = _bench(capsys, str(model), "--threads", "1,2", "--batch", "1,4", "--json", *QUICK)
    assert rc == 0, err
    res = json.loads(out)  # nothing but JSON on stdout
    rows = res["results"]
    assert len(rows) == 4
    assert {(r["threads"], r["batch"]) for r in rows} == {(1, 1), (1, 4), (2, 1), (2, 4)}
    for r in rows:
        assert r["runs"] == 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"]
        assert r["mean_ms"] > 0
        assert r["throughput_per_s"] == pytest.approx(r["batch"] * 1e3 / r["p50_ms"])
    assert res["bytes"] == model.stat().st_size
    assert set(res["cpu"]) >= {"model", "machine", "cores", "isa"}


def test_table_lists_every_row(model, capsys):
    rc, out, err = _bench(capsys, str(model), "--threads", "1,2", "--batch", "1,4", *QUICK)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert f"{model.stat().st_size:,} bytes" in lines[0]
    assert lines[1].split() == ["threads", "batch", "p50", "ms", "p90", "ms", "mean", "ms", "samples/s"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    for r in rows:
        p50, p90, mean, tput = map(float, r[2:])
        assert 0 < p50 <= p90 and mean > 0 and tput > 0


def test_size_counts_external_data(tmp_path, capsys):
    src = cnn(tmp_path / "src.onnx", hidden=64)
    m = onnx.load(str(src))
    ext = tmp_path / "ext.onnx"
    onnx.save(m, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size > ext.stat().st_size  # the weights really live outside
    rc, out, err = _bench(capsys, str(ext), "--json", *QUICK)
    assert rc == 0, err
    assert json.loads(out)["bytes"] == ext.stat().st_size + data.stat().st_size


def test_symbolic_spatial_dims_need_input_shape(tmp_path, capsys):
    m = cnn(tmp_path / "dyn.onnx", hw="S")  # input N,1,S_h,S_w
    rc, out, err = _bench(capsys, str(m), "--json", *QUICK)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and "--input-shape" in err and len(err.strip().splitlines()) == 1
    rc, out, err = _bench(capsys, str(m), "--json", "--input-shape", "1,1,12,10", "--batch", "1,2", *QUICK)
    assert rc == 0, err
    assert [r["batch"] for r in json.loads(out)["results"]] == [1, 2]


def test_refuses_file_failing_the_checker(tmp_path, capsys):
    bad = broken(tmp_path / "bad.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(bad))
    rc, out, err = _bench(capsys, str(bad), *QUICK)
    assert rc == 2 and out == ""
    assert "not a valid ONNX model" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["missing.onnx"], "no such file"),
    (["{model}", "--threads", "0"], ">= 1"),
    (["{model}", "--batch", "1,x"], "comma-separated"),
])  # fmt: skip
def test_bad_arguments_exit_2(model, capsys, args, needle):
    rc, out, err = _bench(capsys, *[a.format(model=model) for a in args], *QUICK)
    assert rc == 2 and needle in err


def test_profile_splits_kernel_time_by_operator(tmp_path, capsys):
    m = cnn(tmp_path / "dw.onnx", hw=16, hidden=16, depthwise=True)
    rc, out, err = _bench(capsys, str(m), "--threads", "1,2", "--json", "--profile", *QUICK)
    assert rc == 0, err
    rows = json.loads(out)["results"]
    assert len(rows) == 2
    for r in rows:
        pr = r["profile"]
        assert pr["runs"] == 3  # the warm-up run is left out
        assert pr["kernel_ms_per_run"] > 0
        assert sum(o["share"] for o in pr["ops"]) == pytest.approx(1.0)
        assert sum(o["ms_per_run"] for o in pr["ops"]) == pytest.approx(pr["kernel_ms_per_run"])
        by_op = {o["op"]: o for o in pr["ops"]}
        dw = [o for o in by_op if o.endswith("(depthwise)")]
        assert len(dw) == 1 and by_op[dw[0]]["nodes"] == 1, by_op  # the 3x3 group conv, told apart
        assert sum(o["nodes"] for o in pr["ops"] if "Conv" in o["op"]) == 2
        assert "Gemm" in by_op or "FusedGemm" in by_op
    assert [o["ms_per_run"] for o in rows[0]["profile"]["ops"]] == sorted(
        (o["ms_per_run"] for o in rows[0]["profile"]["ops"]), reverse=True)


def test_profile_table_and_no_profile_by_default(model, capsys):
    rc, out, err = _bench(capsys, str(model), *QUICK, "--profile")
    assert rc == 0, err
    head = out.index("where the time goes, threads 1 batch 1")
    assert out[head:].splitlines()[1].split() == ["operator", "nodes", "ms/run", "share"]
    rc, out, err = _bench(capsys, str(model), "--json", *QUICK)
    assert "profile" not in json.loads(out)["results"][0]


def test_conv_kinds_reads_qlinearconv_weights():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgecompress.runtime.kernels import _conv_kinds

    w = lambda name, shape: numpy_helper.from_array(np.zeros(shape, np.int8), name)  # noqa: E731
    q = ["x", "xs", "xz"]
    nodes = [helper.make_node("QLinearConv", [*q, "w_dw", "ws", "wz", "ys", "yz"], ["a"], group=8, name="dw"),
             helper.make_node("QLinearConv", [*q, "w_g", "ws", "wz", "ys", "yz"], ["b"], group=2, name="g"),
             helper.make_node("QLinearConv", [*q, "w_pw", "ws", "wz", "ys", "yz"], ["c"], name="pw")]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 8, 4, 4])], [],
                          [w("w_dw", (8, 1, 3, 3)), w("w_g", (8, 4, 3, 3)), w("w_pw", (8, 8, 1, 1))])
    assert _conv_kinds(helper.make_model(g)) == {"dw": "(depthwise)", "g": "(grouped)"}


def test_profile_without_run_events_counts_every_run(tmp_path, monkeypatch):
    import onnxruntime as ort

    from edgecompress.runtime import profile_ops

    end = ort.InferenceSession.end_profiling

    def no_run_events(self):  # as a build whose profiler writes no model_run events
        p = Path(end(self))
        p.write_text(json.dumps([e for e in json.loads(p.read_text()) if e.get("name") != "model_run"]))
        return str(p)

    monkeypatch.setattr(ort.InferenceSession, "end_profiling", no_run_events)
    pr = profile_ops(cnn(tmp_path / "m.onnx"), warmup=2, runs=3)
    assert pr.runs == 5  # warm-up included: nothing tells the runs apart
    assert pr.kernel_ms_per_run > 0 and sum(o.share for o in pr.ops) == pytest.approx(1.0)


def test_compare_mode_times_files_side_by_side_as_ratios_to_the_first(tmp_path, capsys):
    small, big = cnn(tmp_path / "small.onnx", hidden=8), cnn(tmp_path / "big.onnx", hidden=64)
    rc, out, err = _bench(capsys, str(big), str(small), "--batch", "1,4", "--runs", "6", "--rounds", "3",
                          "--warmup", "1", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert [m["model"] for m in res["models"]] == [str(big), str(small)] and res["baseline"] == str(big)
    assert res["models"][0]["bytes"] == big.stat().st_size and res["models"][0]["smaller"] == 1.0
    assert res["models"][1]["smaller"] == pytest.approx(big.stat().st_size / small.stat().st_size)
    assert res["models"][1]["smaller"] > 1
    assert [(r["threads"], r["batch"]) for r in res["results"]] == [(1, 1), (1, 4)]
    for r in res["results"]:
        assert r["rounds"] == 3 and r["runs_per_round"] == 2
        a, b = r["files"]
        assert a["speedup"] == 1.0 and b["speedup"] == pytest.approx(a["p50_ms"] / b["p50_ms"])
        assert 0 < b["p50_ms"] <= b["p90_ms"] and b["throughput_per_s"] == pytest.approx(r["batch"] * 1e3 / b["p50_ms"])


def test_one_rounds_hiccup_moves_neither_the_p50_nor_the_p90():
    from edgecompress.runtime.latency import Latency, over_rounds

    def lat(p50: float, p90: float) -> Latency:
        return Latency(1, 1, 10, p50, p90, p50, p50, 1e3 / p50)

    assert over_rounds([lat(1.0, 1.2), lat(9.0, 30.0), lat(1.1, 1.3)]) == (1.1, 1.3)  # the middle round stalled
    assert over_rounds([lat(2.0, 2.5)]) == (2.0, 2.5)


def test_compare_mode_table(tmp_path, capsys):
    a, b = cnn(tmp_path / "a.onnx", hidden=8), cnn(tmp_path / "b.onnx", hidden=16)
    rc, out, err = _bench(capsys, str(a), str(b), "--runs", "4", "--rounds", "2", "--warmup", "1", "--profile")
    assert rc == 0, err
    assert out.count("where the time goes, ") == 2 and f"where the time goes, {b}, threads 1 batch 1" in out
    lines = out.strip().splitlines()
    assert lines[0].startswith("2 files side by side") and "2 round(s) of 2 runs" in lines[0]
    i = lines.index("threads 1, batch 1")
    assert lines[i + 1].split() == ["file", "bytes", "smaller", "p50", "ms", "p90", "ms", "speed-up"]
    rows = [line.split() for line in lines[i + 2 : i + 4]]
    assert [r[0] for r in rows] == [str(a), str(b)] and rows[0][2] == "1.00x" and rows[0][5] == "1.00x"
    assert int(rows[1][1].replace(",", "")) == b.stat().st_size


def test_compare_mode_names_a_file_onnxruntime_cannot_run_before_timing(tmp_path, capsys):
    good, symbolic = cnn(tmp_path / "good.onnx"), cnn(tmp_path / "sym.onnx", hw="H")
    rc, out, err = _bench(capsys, str(good), str(symbolic), "--runs", "2", "--rounds", "1")
    assert rc == 2 and "sym.onnx" in err and out == ""


def test_cpu_clock_is_recorded_and_needs_one_thread(model, capsys):
    rc, out, err = _bench(capsys, str(model), str(model), "--json", "--clock", "cpu", "--rounds", "2", *QUICK)
    assert rc == 0, err
    (row,) = json.loads(out)["results"]
    assert row["clock"] == "cpu"
    assert all(0 < f["min_ms"] <= f["p50_ms"] for f in row["files"])
    rc, out, err = _bench(capsys, str(model), "--json", "--clock", "cpu", *QUICK)
    assert rc == 0 and json.loads(out)["results"][0]["clock"] == "cpu", err
    rc, out, err = _bench(capsys, str(model), "--clock", "cpu", "--threads", "1,2", *QUICK)
    assert rc == 2 and "--threads 1" in err
