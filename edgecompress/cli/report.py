"""``edgecompress report DIR``: regenerate report.md (and report.png) from a run's manifest.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecompress.files import atomic_write_text
from edgecompress.report.manifest import load_manifest
from edgecompress.report.plots import have_matplotlib, plot_run
from edgecompress.report.render import render_report


def add_arguments(sub, name: str, help_: str) -> None:
    r = sub.add_parser(name, help=help_)
    r.add_argument("out_dir")
    r.add_argument("--no-plots", action="store_true", help="write report.md only")


def run(args: argparse.Namespace) -> int:
    d = Path(args.out_dir)
    m = load_manifest(d)
    md = render_report(m)
    if args.no_plots or not have_matplotlib():
        if not args.no_plots:
            print("note: matplotlib is not installed; report.png skipped (pip install matplotlib)", file=sys.stderr)
    else:
        plot_run(m, d / "report.png")
        md += "\n![accuracy vs latency, size and channels kept](report.png)\n"
        print(f"wrote {d / 'report.png'}")
    atomic_write_text(d / "report.md", md)
    print(f"wrote {d / 'report.md'}")
    return 0
