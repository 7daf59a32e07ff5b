"""The top of report.md for models that are not one classifier output: what the outputs are, the
gates on them, and every artifact's fidelity to the FP32 original, per output."""

from __future__ import annotations

from typing import Any

from edgecompress.report.manifest import ARTIFACT_ORDER

_EXTRA = {"top1_agreement": "top-1 agr.", "label_agreement": "label agr.", "exact_set_agreement": "exact-set agr.",
          "pixel_agreement": "pixel agr.", "miou_vs_original": "mIoU vs orig."}  # fmt: skip


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def fidelity_lines(m: dict[str, Any]) -> list[str]:
    """Outputs (kinds and why), gates, then a table of fidelity vs the original per artifact and output."""
    model = m.get("model", {})
    outputs = [] if model.get("classifier", True) else model.get("outputs") or []
    arts = m.get("artifacts", {})
    rows = [(n, arts[n]) for n in (*ARTIFACT_ORDER, *(k for k in arts if k not in ARTIFACT_ORDER))
            if n in arts and arts[n].get("fidelity")]
    if not outputs and not rows and not any(a.get("metric") is not None for a in arts.values()):
        return []
    lines = [""]
    if outputs:
        lines.append("Outputs: " + "; ".join(f"`{o['name']}` {o['shape']} **{o['kind']}** ({o['source']}: {o['why']})"
                                             for o in outputs) + ".")
    metric = m.get("config", {}).get("verify", {}).get("metric")
    scores = [(n, a["metric"]) for n, a in ((n, arts[n]) for n in (*ARTIFACT_ORDER,) if n in arts)
              if a.get("metric") is not None]
    if scores:
        lines.append(f"Metric `{metric}` on the eval set: " + ", ".join(f"{n} {100 * v:.2f}" for n, v in scores) + ".")
    elif outputs:
        lines.append("No labels for these outputs: fidelity to the FP32 original replaces accuracy.")
    gates = m.get("gates", []) if outputs else []
    if gates:
        lines += ["", "| gate | value | bound | result |", "|---|---:|---:|---|"]
        lines += [f"| {g['name']} | {g['value']:.4g} | {g['bound']:.4g} | {'pass' if g['passed'] else '**FAIL**'} |"
                  for g in gates]
    if rows:
        lines += ["", "Fidelity to the FP32 original (onnxruntime, eval samples), per output:", "",
                  "| artifact | output | SNR dB | worst-channel SNR dB | cosine | max-abs | kind-specific |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for name, a in rows:
            for out, f in a["fidelity"].items():
                extra = ", ".join(f"{_EXTRA[k]} {_pct(v)}" for k, v in f.items() if k in _EXTRA)
                lines.append(f"| {name} | `{out}` | {f['snr_db']:.1f} | {f['min_channel_snr_db']:.1f} | "
                             f"{f['cosine']:.5f} | {f['max_abs']:.4g} | {extra or '–'} |")
    return lines
