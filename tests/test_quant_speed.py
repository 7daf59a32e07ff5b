"""Latency-aware mixed precision (edgecompress.quantize.latency_aware). The decisions are tested with
injected timings, so no test depends on this machine's speed; the real profiler is tested for
what it must always do: name every compute layer of both files."""

import onnx
import pytest
import torch

from edgecompress.config import DataConfig, ExportOnnxConfig, ModelConfig, QuantConfig, RunConfig
from edgecompress.export import export_onnx
from edgecompress.models.zoo import create_model
from edgecompress.quantize import compute_nodes, latency_aware_ptq, layer_times, preprocessed_model, quantize_ptq
from edgecompress.runtime import kernel_report
from edgecompress.runtime.kernels import origin_keys

from .conftest import quadrants


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet8-tiny", num_classes=4).eval()
    path = tmp_path_factory.mktemp("ls") / "fp32.onnx"
    export_onnx(model, torch.zeros(1, 1, 16, 16), path, ExportOnnxConfig())
    return path


@pytest.fixture(scope="module")
def calib():
    return quadrants(32, 0).x


def fp32_layers(path) -> set[str]:
    """Compute nodes of a QDQ file whose weight is not a DequantizeLinear output: a float
    initializer, or an int8 one restored by Cast -> Mul (float kernels either way)."""
    m = onnx.load(str(path))
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] not in dq}


def weight_dtypes(path, nodes) -> dict[str, str]:
    """Node -> how its weight is stored: 'float' (an initializer) or 'int8' (int8 initializer -> Cast -> Mul)."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    made_by = {o: n for n in m.graph.node for o in n.output}
    out = {}
    for n in m.graph.node:
        if n.name not in nodes:
            continue
        w = n.input[1]
        if w in inits:
            out[n.name] = "float" if inits[w].data_type == onnx.TensorProto.FLOAT else "?"
        elif made_by[w].op_type == "Mul" and made_by[made_by[w].input[0]].op_type == "Cast":
            cast_in = made_by[made_by[w].input[0]].input[0]
            out[n.name] = "int8" if inits[cast_in].data_type == onnx.TensorProto.INT8 else "?"
    return out


def test_profiler_names_every_layer_of_both_files(fp32, calib, tmp_path):
    q = quantize_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig()).path
    keys = origin_keys(preprocessed_model(fp32))
    nodes = set(compute_nodes(fp32))
    t32 = layer_times(fp32, keys, threads=1, batch=1, runs=5)
    t8 = layer_times(q, keys, threads=1, batch=1, runs=5)
    assert len(nodes) >= 8
    assert set(t32) == nodes  # the float kernels (NCHWc Conv, fused Gemm) map back by name/output
    assert set(t8) == nodes  # the int8 kernels (QLinearConv, QGemm) map back by quantized weight
    assert all(v > 0 for v in [*t32.values(), *t8.values()])


def _fake_times(slow: dict[str, float]):
    """Every layer 1.0 ms in FP32 and 0.5 ms in INT8, except ``slow`` (INT8 ms); FP32 layers of a
    trial file are reported at their FP32 time."""

    def times(path):
        names = compute_nodes_cache["nodes"]
        if path.name == "fp32.onnx":
            return dict.fromkeys(names, 1.0)
        f = fp32_layers(path)
        return {n: 1.0 if n in f else slow.get(n, 0.5) for n in names}

    return times


compute_nodes_cache: dict = {}


def _fake_compare(effect: dict[str, float], calls: list):
    """p50 of a file = 1.0 + the effect of each layer it keeps in FP32 (negative = faster)."""

    def compare(paths):
        calls.append([sorted(fp32_layers(p)) for p in paths])
        return [1.0 + sum(effect.get(n, 0.0) for n in fp32_layers(p)) for p in paths]

    return compare


def test_keeps_only_the_fp32_layers_that_make_the_model_faster(fp32, calib, tmp_path):
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    a, b, c = nodes[0], nodes[1], nodes[4]
    calls = []
    # per layer: a, b, c all slower in INT8; end to end, a helps a lot, b a little, c hurts (its borders)
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(),
                                 times=_fake_times({a: 4.0, b: 3.0, c: 1.5}),
                                 compare=_fake_compare({a: -0.3, b: -0.1, c: +0.02}, calls))  # fmt: skip
    assert list(rec["candidates"]) == [a, b, c]  # by per-layer gain, largest first
    assert rec["trials"][0]["fp32_nodes"] == [a, b, c] and rec["trials"][0]["against"] == "all-int8"
    assert sorted(rec["fp32_nodes"]) == sorted([a, b])  # c went back to INT8, a and b are needed
    assert fp32_layers(res.path) == {a, b}  # the file written is the chosen one
    assert rec["p50_ms_final"] == pytest.approx(0.6) and rec["p50_ms_all_int8"] == pytest.approx(1.0)
    # all three to FP32; then back to INT8, smallest per-layer gain first: c yes, b no, a no; then
    # the final set against all-INT8
    assert [t["kept"] for t in rec["trials"]] == [None, True, False, False, True]
    assert rec["trials"][-1]["against"] == "all-int8" and rec["trials"][-1]["fp32_nodes"] == [a, b]
    assert res.settings["latency_aware"]["fp32_nodes"] == rec["fp32_nodes"]
    assert len(calls) == 6  # 5 trials, then the result against its FP32 parent (0.6 < 0.62 ms: kept)
    assert calls[-1][0] == sorted(fp32_layers(fp32)) and not rec["parent"]["all_fp32"]
    # by default the FP32 layers store int8 weights (Cast -> Mul, folded to float at load)
    assert weight_dtypes(res.path, {a, b}) == {a: "int8", b: "int8"}
    assert rec["fp32_node_weights"] == res.settings["latency_aware"]["fp32_node_weights"] == "int8"


def test_not_faster_end_to_end_means_all_int8(fp32, calib, tmp_path):
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    calls = []
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(),
                                 times=_fake_times({nodes[0]: 2.0, nodes[2]: 3.0}),
                                 compare=_fake_compare({nodes[0]: -0.01, nodes[2]: +0.05}, calls))  # fmt: skip
    assert list(rec["candidates"]) == [nodes[2], nodes[0]]
    # nodes[0] (smaller gain) goes back to INT8 first: nodes[2] alone is 5% slower than all-INT8
    assert [t["fp32_nodes"] for t in rec["trials"]] == [[nodes[2], nodes[0]], [nodes[2]], [nodes[2]]]
    assert rec["trials"][-1]["against"] == "all-int8" and rec["trials"][-1]["kept"] is False
    assert not rec["kept"] and rec["fp32_nodes"] == [] and len(calls) == 4  # 3 trials + the parent check
    assert rec["p50_ms_final"] == rec["p50_ms_all_int8"] == pytest.approx(1.0)
    assert fp32_layers(res.path) == set()
    assert kernel_report(res.path).int8_op_fraction == 1.0


def test_float_weights_when_asked(fp32, calib, tmp_path):
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    cfg = QuantConfig(latency_aware="on", latency_aware_weights="float", exclude_nodes=(nodes[2],))
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, cfg, times=_fake_times({nodes[1]: 2.0}),
                                 compare=_fake_compare({nodes[1]: -0.1}, []))  # fmt: skip
    assert rec["fp32_nodes"] == [nodes[1]] and rec["fp32_node_weights"] == "float"
    # the user's exclusion keeps float weights in either setting; the speed pass's layer does here
    assert weight_dtypes(res.path, {nodes[1], nodes[2]}) == {nodes[1]: "float", nodes[2]: "float"}


def test_a_single_candidate_is_decided_by_one_trial(fp32, calib, tmp_path):
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    calls = []
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(),
                                 times=_fake_times({nodes[1]: 2.0}), compare=_fake_compare({nodes[1]: -0.1}, calls))
    # one trial; then against the parent: a tie (0.9 ms), so the all-FP32 file is timed too, and is no faster
    assert len(calls) == 3 and len(rec["trials"]) == 1 and rec["trials"][0]["kept"] is True
    assert rec["parent"]["p50_ms_all_fp32"] == pytest.approx(0.9) and not rec["parent"]["all_fp32"]
    assert rec["fp32_nodes"] == [nodes[1]] and fp32_layers(res.path) == {nodes[1]}


def test_no_slower_layer_means_no_trial(fp32, calib, tmp_path):
    compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))

    calls = []

    def only_the_parent(paths):
        calls.append(paths)
        assert paths == [fp32, paths[1]], "with every INT8 layer faster, only the parent check times files"
        return [2.0, 1.0]

    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(), times=_fake_times({}),
                                 compare=only_the_parent)
    assert rec["candidates"] == {} and rec["trials"] == [] and rec["fp32_nodes"] == [] and len(calls) == 1
    assert kernel_report(res.path).int8_op_fraction == 1.0


def test_user_excluded_layers_stay_fp32_and_are_not_candidates(fp32, calib, tmp_path):
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    calls = []
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(exclude_nodes=(nodes[0],)),
                                 times=_fake_times({nodes[0]: 9.0, nodes[3]: 2.0}),
                                 compare=_fake_compare({nodes[3]: -0.2}, calls))  # fmt: skip
    assert list(rec["candidates"]) == [nodes[3]]
    assert rec["fp32_nodes"] == [nodes[3]]
    assert fp32_layers(res.path) == {nodes[0], nodes[3]}
    # excluded by the user (e.g. for accuracy): its float weights are left alone
    assert weight_dtypes(res.path, {nodes[0], nodes[3]}) == {nodes[0]: "float", nodes[3]: "int8"}


def test_only_the_largest_gains_are_searched(fp32, calib, tmp_path):
    """Each candidate costs an end-to-end trial: past ``max_candidates`` the smaller gains stay INT8."""
    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    calls = []
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(), max_candidates=2,
                                 times=_fake_times({nodes[0]: 2.0, nodes[1]: 4.0, nodes[2]: 3.0}),
                                 compare=_fake_compare({nodes[1]: -0.2, nodes[2]: -0.1, nodes[0]: +0.5}, calls))
    assert list(rec["candidates"]) == [nodes[1], nodes[2]] and list(rec["candidates_left_int8"]) == [nodes[0]]
    assert all(nodes[0] not in t["fp32_nodes"] for t in rec["trials"])
    # all in FP32, each of the 2 offered back (both stay FP32), the final set against all-INT8
    assert sorted(rec["fp32_nodes"]) == sorted([nodes[1], nodes[2]]) and len(rec["trials"]) == 4


@pytest.mark.parametrize("weights", ["int8", "float"])
def test_an_int8_file_slower_than_its_parent_is_not_shipped(fp32, calib, tmp_path, weights):
    """No layer is slower per layer, yet the INT8 file is slower end to end than its FP32 parent
    (every FP32 layer 0.05 ms faster): the file shipped computes every layer in FP32, at the
    parent's outputs, with int8-stored weights by default."""
    import numpy as np

    from edgecompress.runtime import make_session

    nodes = compute_nodes_cache.setdefault("nodes", compute_nodes(fp32))
    calls = []
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(latency_aware_weights=weights),
                                 times=_fake_times({}), compare=_fake_compare(dict.fromkeys(nodes, -0.05), calls))
    parent_layers = fp32_layers(fp32)
    assert rec["trials"] == [] and len(calls) == 2  # the parent check, then the all-FP32 file beside both
    assert rec["parent"]["all_fp32"] and rec["parent"]["p50_ms_all_fp32"] < rec["parent"]["p50_ms_int8_again"]
    assert rec["p50_ms_final"] == rec["parent"]["p50_ms_all_fp32"]
    assert fp32_layers(res.path) == parent_layers and set(rec["fp32_nodes"]) == parent_layers
    assert set(res.settings["exclude_nodes"]) == parent_layers and res.settings["latency_aware"]["all_fp32"]
    assert kernel_report(res.path).int8_op_fraction == 0.0
    assert set(weight_dtypes(res.path, parent_layers).values()) == {weights}
    x = calib[:8]
    sa, sb = make_session(fp32), make_session(res.path)
    a = sa.run(None, {sa.get_inputs()[0].name: x})[0]
    b = sb.run(None, {sb.get_inputs()[0].name: x})[0]
    tol = 0.05 * np.abs(a).max() if weights == "int8" else 1e-5 * max(1.0, np.abs(a).max())
    assert np.abs(a - b).max() <= tol
    if weights == "int8":
        assert res.path.stat().st_size < 0.6 * fp32.stat().st_size  # graph and biases stay: a tiny model


def test_real_measurements_give_a_consistent_record(fp32, calib, tmp_path):
    """On this machine's real timings: whatever is chosen, the record and the file agree."""
    res, rec = latency_aware_ptq(fp32, tmp_path / "q.onnx", calib, QuantConfig(), rounds=1)
    assert set(rec["fp32_nodes"]) <= set(rec["candidates"]) or rec["parent"]["all_fp32"]
    assert fp32_layers(res.path) == set(rec["fp32_nodes"])
    assert all(t["p50_ms"] > 0 and t["against_p50_ms"] > 0 for t in rec["trials"])
    assert all(v["int8"] > 0 and v["fp32"] > 0 for v in rec["layer_ms"].values())
    assert bool(rec["trials"]) == bool(rec["candidates"])


def test_config_rejects_latency_aware_without_ort_ptq():
    from edgecompress.errors import ConfigError

    for q in (QuantConfig(mode="dynamic", latency_aware="on"), QuantConfig(backend="inc", latency_aware="on")):
        with pytest.raises(ConfigError, match="--latency-aware-int8"):
            RunConfig(model=ModelConfig(name="resnet8-tiny"), data=DataConfig(), quant=q).validate()


@pytest.mark.slow
def test_cli_records_latency_aware_int8(tmp_path):
    import json

    from .conftest import run_cli

    out = tmp_path / "o"
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--stages", "ptq",
                 "--calib-samples", "16", "--runs", "5", "--latency-aware-int8", "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "latency-aware INT8: timing every layer" in p.stderr
    m = json.loads((out / "manifest.json").read_text())
    la = m["stage_results"]["latency_aware"]
    assert m["config"]["quant"]["latency_aware"] == "on" and m["config"]["quant"]["latency_aware_weights"] == "int8"
    assert la["fp32_node_weights"] == "int8"
    assert (set(la["fp32_nodes"]) <= set(la["candidates"]) or la["parent"]["all_fp32"]) and la["layer_ms"]
    assert m["stage_results"]["quantize"]["settings"]["latency_aware"]["fp32_nodes"] == la["fp32_nodes"]
    assert "Latency-aware INT8:" in (out / "report.md").read_text()


@pytest.mark.slow
def test_cli_latency_aware_for_another_cpu_is_skipped_with_a_warning(tmp_path):
    import json

    from .conftest import run_cli

    out = tmp_path / "o"
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--stages", "ptq",
                 "--calib-samples", "16", "--runs", "5", "--latency-aware-int8", "--target", "arm64",
                 "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert "latency_aware" not in m["stage_results"]
    assert any("--latency-aware-int8 skipped" in w for w in m["warnings"])



@pytest.mark.slow
def test_cli_layers_excluded_by_the_recipe_run_as_float(tmp_path):
    """quant.exclude_nodes: the layer is left in float by quantize_static, kept float at load
    (keep_float), keeps its name under --compact-names, and the manifest says that every such
    layer runs as a float kernel."""
    import json

    from edgecompress.quantize import preprocessed_model

    from .conftest import run_cli

    # --compact-names: the FP32 files get short node names too, and those are what exclude_nodes names
    base = ["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,28,28", "--stages", "ptq",
            "--calib-samples", "16", "--runs", "5", "--compact-names", "--latency-aware-int8", "off"]
    # (off: this 28-px model can be slower in INT8 than in FP32 here, and the auto pass would then
    # keep every layer in FP32; this test is about the user's exclusions)
    p = run_cli([*base, "--out", str(tmp_path / "a")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    convs = [n.name for n in preprocessed_model(tmp_path / "a" / "original.onnx").graph.node if n.op_type == "Conv"]
    mid = convs[len(convs) // 2]
    (tmp_path / "r.toml").write_text(f'[quant]\nexclude_nodes = ["{mid}"]\n')
    p = run_cli([*base, "--recipe", str(tmp_path / "r.toml"), "--out", str(tmp_path / "b")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    q = json.loads((tmp_path / "b" / "manifest.json").read_text())["stage_results"]["quantize"]
    assert q["settings"]["exclude_nodes"] == [mid] and q["settings"]["kept_float_inputs"] == [mid]
    assert q["settings"]["fp32_layers_run_as_int8"] == [] and mid in q["kernels"]["float_islands"]
    import onnx

    int8_names = [n.name for n in onnx.load(str(tmp_path / "b" / "int8.onnx")).graph.node]
    assert mid in int8_names and len(int8_names) == len(set(int8_names))  # kept its name, and names stay unique
