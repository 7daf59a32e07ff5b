"""report.md, generated from a run's manifest (so ``edgecompress report DIR`` regenerates it)."""

from __future__ import annotations

from typing import Any

from edgecompress.report.manifest import ARTIFACT_ORDER


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
    lines += _stage_lines(m)
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


def _stage_lines(m: dict[str, Any]) -> list[str]:
    """What each stage did: pruning, depth, distillation, INT8 (with its mixed-precision passes)."""
    st, lines = m.get("stage_results", {}), []
    if "prune" in st:
        p = st["prune"]
        lines += ["", f"**Pruning**: {p['macs_removed']:.1%} of MACs removed ({p['importance']} importance, "
                  f"{p['allocation']} allocation, round-to {p['round_to']}); params "
                  f"{p['params_before']:,} → {p['params_after']:,}."]
        if p.get("dropped_blocks"):
            lines += [f"**Depth pruning**: {len(p['dropped_blocks'])} residual block(s) replaced by the identity: "
                      + ", ".join(f"`{b['name']}` (KL {b['kl']:.4f})" for b in p["dropped_blocks"]) + "."]
        if p.get("protected"):
            lines += [f"**Protected from pruning**: {len(p['protected'])} layer group(s) left whole because pruning "
                      "them breaks the model (its code relies on their channel counts): "
                      + "; ".join(f"`{x['layer']}` ({x['reason']})" for x in p["protected"]) + "."]
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
    return lines
