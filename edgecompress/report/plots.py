"""Plots of a run, drawn from its manifest.json alone (``edgecompress report OUT_DIR``).

report.png: top-1 vs p50 latency of every artifact (the run's own accuracy/latency trade-off),
file size per artifact, and the channels each prunable layer kept (layers of removed blocks
at zero). matplotlib is optional: without it the report is text only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.files import atomic_write
from edgecompress.report.manifest import ARTIFACT_ORDER


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_run(m: dict[str, Any], path: Path) -> Path:
    """Writes the run's figure to ``path`` (atomically) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    arts = m["artifacts"]
    names = [n for n in ARTIFACT_ORDER + tuple(k for k in arts if k not in ARTIFACT_ORDER) if n in arts]
    layers = m.get("stage_results", {}).get("prune", {}).get("layers") or []
    ncols = 3 if layers else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    ax = axes[0]
    for n in names:
        a = arts[n]
        if a.get("latency_ms_p50") is not None and a.get("top1") is not None:
            ax.scatter(a["latency_ms_p50"], 100 * a["top1"], s=50)
            ax.annotate(n, (a["latency_ms_p50"], 100 * a["top1"]), xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("p50 latency, ms")
    ax.set_ylabel("top-1, %")
    ax.set_title("accuracy vs latency" if any(arts[n].get("top1") is not None for n in names) else
                 "accuracy vs latency (no labelled eval data)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.bar(names, [arts[n].get("bytes", 0) / 1e3 for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.annotate(f"{arts[n].get('bytes', 0) / 1e3:,.0f} kB", (i, arts[n].get("bytes", 0) / 1e3),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("file size, kB")
    ax.set_title("size")
    if layers:
        ax = axes[2]
        idx = range(len(layers))
        ax.bar(idx, [r["before"] for r in layers], color="lightgray", label="before")
        ax.bar(idx, [r["after"] for r in layers], color="tab:green", label="kept")
        ax.set_xlabel("prunable layer (in model order)")
        ax.set_ylabel("output channels")
        ax.set_title("channels kept per layer")
        ax.legend(fontsize=8)
    fig.suptitle(f"edgecompress — {m.get('model', {}).get('ref', '?')}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
