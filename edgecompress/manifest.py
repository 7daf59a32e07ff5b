"""The record of a run: versions, CPU, config, seeds, per-artifact metrics and lineage.

Everything a run measures lands in ``manifest.json``; ``report.md`` is generated from it
(``render_report``), so ``edgecompress report DIR`` can regenerate it at any time.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

SCHEMA = "edgecompress-manifest/1"
ARTIFACT_ORDER = ("original", "pruned", "int8")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("torch-pruning", "torch_pruning"), ("onnxscript", "onnxscript"),
                      ("numpy", "numpy"), ("neural-compressor-pt", "neural_compressor"),
                      ("torchao", "torchao"), ("edgecompress", "edgecompress")):  # fmt: skip
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def load_manifest(out_dir: Path) -> dict[str, Any]:
    from edgecompress.errors import BadInput

    p = Path(out_dir) / "manifest.json"
    if not p.is_file():
        raise BadInput(f"{out_dir}: no manifest.json; pass the --out directory of an export run")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{p}: not valid JSON ({e}); re-run the export to regenerate it") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        schema = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise BadInput(f"{p}: not an edgecompress manifest (schema {schema!r}, expected {SCHEMA!r}); pass the "
                       "--out directory of an export run")
    missing = [k for k in ("artifacts", "cpu", "versions", "bench") if not isinstance(m.get(k), dict)]
    if missing:
        raise BadInput(f"{p}: incomplete manifest (no {', '.join(missing)}); re-run the export to regenerate it")
    return m


def _fmt(v: Any, spec: str, dash: str = "–") -> str:
    return dash if v is None else format(v, spec)


def render_report(m: dict[str, Any]) -> str:
    arts = m["artifacts"]
    base = arts.get("original", {})
    lines = [
        f"# edgecompress report — {m.get('model', {}).get('ref', '?')}",
        "",
        f"Status: **{m.get('status', '?')}**. Stages: {' → '.join(m.get('stages', []))}. "
        f"Seed {m.get('seed')}. CPU: {m['cpu']['model']} "
        f"({', '.join(k for k, v in m['cpu']['isa'].items() if v) or 'no INT8 ISA flags'}).",
        "",
        f"Latency: onnxruntime {m['versions'].get('onnxruntime')}, graph optimisation ALL, "
        f"{m['bench']['threads']} thread(s), batch {m['bench']['batch']}, {m['bench']['runs']} timed runs "
        f"after {m['bench']['warmup']} warm-up. Top-1 on {m.get('data', {}).get('eval_source', 'the eval set')} "
        f"({m.get('data', {}).get('eval', '?')} samples).",
        "",
        "| artifact | MACs | params | bytes | top-1 | p50 ms | p90 ms | speed-up | size ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ARTIFACT_ORDER + tuple(k for k in arts if k not in ARTIFACT_ORDER):
        a = arts.get(name)
        if a is None:
            continue
        speed = base.get("latency_ms_p50", 0) / a["latency_ms_p50"] if a.get("latency_ms_p50") else None
        size = base.get("bytes", 0) / a["bytes"] if a.get("bytes") else None
        top1 = None if a.get("top1") is None else 100 * a["top1"]
        label = f"`{a['path']}`" + (" (FAILED gate)" if a.get("status") == "failed" else "")
        lines.append(
            f"| {name} {label} | {_fmt(a.get('macs'), ',')} | {_fmt(a.get('params'), ',')} | "
            f"{a['bytes']:,} | {_fmt(top1, '.2f')} | {_fmt(a.get('latency_ms_p50'), '.3f')} | "
            f"{_fmt(a.get('latency_ms_p90'), '.3f')} | {_fmt(speed, '.2f')}× | {_fmt(size, '.1f')}× |"
        )
    st = m.get("stage_results", {})
    if "prune" in st:
        p = st["prune"]
        lines += ["", f"**Pruning**: {p['macs_removed']:.1%} of MACs removed ({p['importance']} importance, "
                  f"{p['allocation']} allocation, round-to {p['round_to']}); params "
                  f"{p['params_before']:,} → {p['params_after']:,}."]
        if p.get("dropped_blocks"):
            lines += [f"**Depth pruning**: {len(p['dropped_blocks'])} residual block(s) replaced by the identity: "
                      + ", ".join(f"`{b['name']}` (KL {b['kl']:.4f})" for b in p["dropped_blocks"]) + "."]
    if "distill" in st:
        d = st["distill"]
        lines += [f"**Distillation**: {d['epochs']} epoch(s), {d['steps']} steps. Top-1 on the eval set "
                  f"right after pruning {_fmt(d.get('eval_top1_after_prune'), '.4f')}, after distillation "
                  f"{_fmt(d.get('eval_top1_after_distill'), '.4f')}."]
    if "quantize" in st:
        q = st["quantize"]
        k = q.get("kernels", {})
        stg = m.get("stages", [])
        kind = "dynamic quantization" if "dynamic" in stg else "QAT" if "qat" in stg else "static PTQ"
        lines += [f"**INT8**: onnxruntime {kind} ({q['settings'].get('format', 'QOperator')}, per-channel "
                  f"{q['settings']['per_channel']}, {q['settings']['method']} calibration on {q['calib_samples']} "
                  f"training samples); int8 compute kernels after optimisation: "
                  f"{k.get('int8_ops', '?')}/{k.get('int8_ops', 0) + k.get('float_ops', 0)} "
                  f"(int8_op_fraction {_fmt(k.get('int8_op_fraction'), '.2f')})."]
        if k.get("float_islands"):
            lines.append(f"Float compute left: {', '.join(k['float_islands'][:20])}.")
        fb = st.get("accuracy_fallback")
        if fb:
            kept = fb.get("fp32_nodes") or []
            lines.append(f"Accuracy-aware PTQ (bound {fb['max_drop']} points on {fb['val_samples']} validation samples): "
                         + (f"kept in FP32, most sensitive first: {', '.join(kept)}; " if kept else "no layer needed FP32; ")
                         + f"final validation drop {fb['steps'][-1]['val_drop']:.2f} points"
                         + ("" if fb.get("met") else " — bound NOT met") + ".")
        la = st.get("latency_aware")
        if la:
            kept = la.get("fp32_nodes") or []
            if not la.get("candidates"):
                lines.append("Latency-aware INT8: every layer's INT8 kernel is at least as fast as its FP32 one here; "
                             "all stay INT8.")
            elif kept:
                lines.append(f"Latency-aware INT8: kept in FP32 because faster here: {', '.join(kept)}; p50 "
                             f"{la['p50_ms_all_int8']:.4f} ms all-INT8 → {la['p50_ms_final']:.4f} ms "
                             f"({la['threads']} thread(s), batch {la['batch']})"
                             + ("; their weights are stored as int8 (folded to float at load)."
                                if la.get("fp32_node_weights") == "int8" else "."))
            else:
                lines.append(f"Latency-aware INT8: {len(la['candidates'])} layer(s) had a slower INT8 kernel, but "
                             "leaving them in FP32 did not make the model faster end to end; all stay INT8.")
        if q.get("agreement_with_fp32") is not None:
            lines.append(f"INT8 vs FP32 top-1 agreement on the eval set: {q['agreement_with_fp32']:.2%}.")
    gates = m.get("gates", [])
    if gates:
        lines += ["", "| gate | value | bound | result |", "|---|---:|---:|---|"]
        for g in gates:
            lines.append(f"| {g['name']} | {g['value']:.3g} | {g['bound']:.3g} | {'pass' if g['passed'] else '**FAIL**'} |")
    for w in m.get("warnings", []):
        lines.append(f"\n> warning: {w}")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}.",
              f"Wall time: {m.get('wall_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["edgecompress", *sys.argv[1:]])
