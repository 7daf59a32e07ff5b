"""report.md, generated from a run's manifest (so ``edgecompress report DIR`` regenerates it)."""

from __future__ import annotations

from typing import Any

from edgecompress.report.fidelity import fidelity_lines
from edgecompress.report.manifest import ARTIFACT_ORDER


def _fmt(v: Any, spec: str, dash: str = "–") -> str:
    return dash if v is None else format(v, spec)


def render_report(m: dict[str, Any]) -> str:
    arts = m["artifacts"]
    base = arts.get("original", {})
    lines = [
        f"# edgecompress report — {m.get('model', {}).get('ref', '?')}",
        "",
        *_failure_lines(m),
        *delivery_lines(m),
        f"Status: **{m.get('status', '?')}**. Stages: {' → '.join(m.get('stages', []))}. "
        f"Seed {m.get('seed')}. CPU: {m['cpu']['model']} "
        f"({', '.join(k for k, v in m['cpu']['isa'].items() if v) or 'no INT8 ISA flags'}).",
        "",
        f"Latency: onnxruntime {m['versions'].get('onnxruntime')}, graph optimisation ALL, "
        f"{m['bench']['threads']} thread(s), batch {m['bench']['batch']}, {m['bench']['runs']} timed runs "
        f"after {m['bench']['warmup']} warm-up. Top-1 on {m.get('data', {}).get('eval_source', 'the eval set')} "
        f"({m.get('data', {}).get('eval', '?')} samples).",
        *fidelity_lines(m),
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
    lines += _device_lines(m)
    lines += _stage_lines(m)
    gates = m.get("gates", [])
    if gates and m.get("model", {}).get("classifier", True):  # other models: fidelity_lines shows them at the top
        lines += ["", "| gate | value | bound | result |", "|---|---:|---:|---|"]
        for g in gates:
            lines.append(f"| {g['name']} | {g['value']:.3g} | {g['bound']:.3g} | {'pass' if g['passed'] else '**FAIL**'} |")
    for w in m.get("warnings", []):
        lines.append(f"\n> warning: {w}")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}.",
              f"Wall time: {m.get('wall_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def delivery_lines(m: dict[str, Any]) -> list[str]:
    """The first lines under the title: which file is delivered, and, loudly, an INT8 file that
    is slower here than its FP32 parent (``fastest_artifact`` of the manifest)."""
    if "delivered_artifact" not in m:  # a manifest from before these fields
        return []
    arts, lines = m["artifacts"], []
    int8 = arts.get("int8") or {}
    parent = arts.get(int8.get("parent") or "") or {}
    fastest, delivered = m.get("fastest_artifact"), m.get("delivered_artifact")
    if int8 and parent and fastest is not None and fastest != "int8":
        lines.append(f"**Warning: the INT8 file is slower than its FP32 parent on this CPU**: `{int8['path']}` p50 "
                     f"{int8['latency_ms_p50']:.3f} ms vs `{parent['path']}` {parent['latency_ms_p50']:.3f} ms "
                     f"({parent['latency_ms_p50'] / int8['latency_ms_p50']:.2f}× the speed). "
                     f"Fastest file: `{arts[fastest]['path']}`.")
        lines.append("")
    if delivered is None:
        lines.append("Delivered: nothing (a gate failed; see below).")
    else:
        note = ("" if fastest is None else " (the fastest file here)" if delivered == fastest else
                f" (`--deliver fastest` delivers `{arts[fastest]['path']}`)")
        lines.append(f"Delivered: `{arts[delivered]['path']}`{note}.")
        whole = (m.get("stage_results", {}).get("latency_aware") or {}).get("parent") or {}
        if delivered == "int8" and whole.get("all_fp32"):
            lines.append(f"Every layer of `{int8['path']}` computes in FP32: all-INT8 ran at "
                         f"{whole['p50_ms_int8_again']:.4f} ms against its FP32 parent's {whole['p50_ms_parent_again']:.4f} "
                         "ms here (latency-aware INT8); its weights are stored as int8.")
    return [*lines, ""]


def _failure_lines(m: dict[str, Any]) -> list[str]:
    """First in the report: which artifact lost what (the failed gates, in words where we can)."""
    arts, vs = m["artifacts"], m.get("stage_results", {}).get("vs_original", {})
    lines = []
    for g in m.get("gates", []):
        if g["passed"]:
            continue
        a, name = arts.get(g.get("artifact") or "", {}), g.get("artifact")
        if name in vs and "top1_drop_points" in vs[name] and "top-1 drop" in g["name"]:
            o = arts.get("original", {}).get("top1")
            lines.append(f"**FAILED: {name} (`{a.get('path')}`) lost {g['value']:.2f} points of top-1 against the "
                         f"original** ({_fmt(o and 100 * o, '.2f')}% → {_fmt(a.get('top1') and 100 * a['top1'], '.2f')}"
                         f"%; bound {g['bound']:.2f} points).")
        elif name in vs and "agreement" in g["name"]:
            lines.append(f"**FAILED: {name} (`{a.get('path')}`) agrees with the original on {g['value']:.2%} of the "
                         f"eval samples** (bound {g['bound']:.2%}).")
        else:
            lines.append(f"**FAILED: {g['name']}**: {g['value']:.4g} against a bound of {g['bound']:.4g}.")
    return [*lines, ""] if lines else []


def _device_lines(m: dict[str, Any]) -> list[str]:
    """With --bench-on: where the latencies above were measured, and the build host's beside them."""
    dev = m.get("bench", {}).get("measured_on")
    if not dev:
        return []
    arts = [(n, a) for n, a in m["artifacts"].items() if a.get("latency_by_device")]
    keys = list(dict.fromkeys(k for _, a in arts for k in a["latency_by_device"]))
    lines = ["", f"Latency above measured on the device **{dev['key']}** (`{dev['dest']}` over ssh; onnxruntime "
             f"{dev.get('onnxruntime')}, python {dev.get('python')}); every latency of the run (latency-aware INT8, "
             "--target-latency-ms, this table) was measured there. p50 ms by machine:", "",
             "| artifact | " + " | ".join(f"{k} ({arts[0][1]['latency_by_device'][k]['role']})" for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name, a in arts:
        lines.append(f"| {name} | " + " | ".join(_fmt(a["latency_by_device"].get(k, {}).get("p50_ms"), ".3f")
                                                 for k in keys) + " |")
    return lines


def _stage_lines(m: dict[str, Any]) -> list[str]:
    """What each stage did: pruning, depth, distillation, INT8 (with its mixed-precision passes)."""
    st, lines = m.get("stage_results", {}), []
    if "prune" in st:
        p = st["prune"]
        rt = ", ".join(p.get("round_to_by_kind") or []) or p["round_to"]
        lines += ["", f"**Pruning**: {p['macs_removed']:.1%} of MACs removed ({p['importance']} importance, "
                  f"{p['allocation']} allocation, round-to {rt}); params "
                  f"{p['params_before']:,} → {p['params_after']:,}."]
        ss = p.get("structure") or {}
        if ss.get("candidates"):
            wts = ss.get("width_tables") or {"dense": ss.get("width_table", {})}
            tabs = "; ".join(f"{k}: round-to {wt.get('round_to')} (MMAC/ms " + ", ".join(
                f"multiples of {g}: {v:.0f}" for g, v in wt.get("mmac_per_ms_by_multiple", {}).items())
                + (", cached" if wt.get("cached") else "") + ")" for k, wt in wts.items())
            device = next(iter(wts.values()), {}).get("device", "?")

            def rounding(c: dict[str, Any]) -> str:
                return "round-to " + (", ".join(c["round_to_by_kind"]) if c.get("round_to_by_kind") else str(c.get("round_to")))

            cands = "; ".join(f"{c['drop_blocks']} dropped, {rounding(c)}: skipped" if "skipped" in c else
                              f"{c['drop_blocks']} dropped, {rounding(c)}: {c['p50_ms']:.3f} ms "
                              f"({c['macs_removed']:.1%} of MACs)" for c in ss["candidates"])
            lines += [f"**Structure chosen by measured latency** ({ss.get('why', '')}): {rounding(ss)}, "
                      f"{ss['drop_blocks']} residual block(s) dropped; width tables of {device} ({tabs}); "
                      f"the fastest of the candidates timed as {ss.get('measured', 'shipped')}: {cands}."]
        elif ss:
            lines += [f"**Structure**: fixed (--round-to, --drop-blocks as given; {ss.get('why', '')})."]
        if p.get("dropped_blocks"):
            lines += [f"**Depth pruning**: {len(p['dropped_blocks'])} residual block(s) replaced by the identity: "
                      + ", ".join(f"`{b['name']}` (KL {b['kl']:.4f})" for b in p["dropped_blocks"]) + "."]
        if p.get("protected"):
            lines += [f"**Protected from pruning**: {len(p['protected'])} layer group(s) left whole because pruning "
                      "them breaks the model (its code relies on their channel counts): "
                      + "; ".join(f"`{x['layer']}` ({x['reason']})" for x in p["protected"]) + "."]
    for e in st.get("equivalence", []):
        lines.append(f"**Structural check, pruning step {e['step']}** (pruned = original with the removed channels "
                     f"zeroed): {e['status']}" + (f", max-abs {e['max_abs']:.3g} (bound {e['bound']:.3g})"
                                                  if e.get("max_abs") is not None else "")
                     + (f", first differs at `{e['layer']}`" if e.get("layer") else "")
                     + (f": {e['reason']}" if e.get("reason") else "") + ".")
    if st.get("vs_original"):
        lines.append("**Against the original**: " + "; ".join(
            f"{k}: " + (f"top-1 drop {v['top1_drop_points']:+.2f} points (noise ±{v['noise_points']:.2f}), "
                       if "top1_drop_points" in v else "") + f"top-1 agreement {v['agreement']:.2%}"
            for k, v in st["vs_original"].items()) + ".")
    if "distill" in st:
        d = st["distill"]
        lines += [f"**Distillation**: {d['epochs']} epoch(s), {d['steps']} steps. Top-1 on the eval set "
                  f"right after pruning {_fmt(d.get('eval_top1_after_prune'), '.4f')}, after distillation "
                  f"{_fmt(d.get('eval_top1_after_distill'), '.4f')}."]
        if d.get("augmentation"):
            lines.append(f"KD augmentation: {d['augmentation']['reason']}.")
    if "quantize" in st:
        q = st["quantize"]
        k = q.get("kernels", {})
        stg = m.get("stages", [])
        kind = "dynamic quantization" if "dynamic" in stg else "QAT" if "qat" in stg else "static PTQ"
        lines += [""] if not lines else []  # a paragraph of its own after the table
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
        auto, la = st.get("latency_aware_auto"), st.get("latency_aware")
        if auto:
            lines.append(f"Latency-aware INT8 (auto): {'ran' if auto['runs'] else 'not run'}: {auto['why']}.")
        whole = (la or {}).get("parent") or {}
        if la:
            kept = la.get("fp32_nodes") or []
            if whole.get("all_fp32"):
                lines.append(f"Latency-aware INT8: the INT8 file ({whole['p50_ms_int8_again']:.4f} ms) was not faster "
                             f"than its FP32 parent ({whole['p50_ms_parent_again']:.4f} ms) here, so every layer "
                             f"computes in FP32 ({whole['p50_ms_all_fp32']:.4f} ms)"
                             + ("; the weights are stored as int8 (folded to float at load)."
                                if la.get("fp32_node_weights") == "int8" else "."))
            elif not la.get("candidates"):
                lines.append("Latency-aware INT8: every layer's INT8 kernel is at least as fast as its FP32 one here; "
                             "all stay INT8.")
            elif kept:
                lines.append(f"Latency-aware INT8: kept in FP32 because faster here: {', '.join(kept)}; p50 "
                             f"{la['p50_ms_all_int8']:.4f} ms all-INT8 → {la['p50_ms_final']:.4f} ms "
                             f"({la['threads']} thread(s), batch {la['batch']}"
                             + (f", on {la['measured_on']}" if la.get("measured_on") else "")
                             + (f"; build host {la['build_host']['p50_ms_all_int8']:.4f} → "
                                f"{la['build_host']['p50_ms_final']:.4f} ms" if la.get("build_host") else "") + ")"
                             + ("; their weights are stored as int8 (folded to float at load)."
                                if la.get("fp32_node_weights") == "int8" else "."))
            else:
                lines.append(f"Latency-aware INT8: {len(la['candidates'])} layer(s) had a slower INT8 kernel, but "
                             "leaving them in FP32 did not make the model faster end to end; all stay INT8.")
        if q.get("agreement_with_fp32") is not None:
            lines.append(f"INT8 vs FP32 top-1 agreement on the eval set: {q['agreement_with_fp32']:.2%}.")
    return lines
