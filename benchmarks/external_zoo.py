"""Models this project never saw: a corpus of timm architectures through `edgecompress export`.

Each architecture is written to a one-function factory file, as a user would write it
(``timm.create_model(NAME, pretrained=False)``: random init, timm's 1000-class head, no
download), and compressed by the CLI exactly as the README documents it, one subprocess per
model with a timeout:

    edgecompress export model.py:model --input-shape 1,3,64,64 --data random

Defaults for everything else: 50 % of MACs removed (l2, uniform, round-to 8; ``--structure
auto`` is fixed at these sizes), one epoch of distillation, INT8 static QDQ calibrated on what
the data holds (at most 512 samples), parity and equivalence gates. ``--args`` runs it with other
flags (e.g. ``--args="--distill-epochs 0"`` for a quicker pass). 64 px except for the
architectures whose attention or positional tables are built for 224 px (``PX``).

A model passes when the run completes (exit 0, manifest status "complete"): the INT8 file ran
under onnxruntime (it has a measured latency), every parity gate passed and at least the
target fraction of MACs is gone. The table (docs/zoo.md) lists per model: pass/fail, the
failing stage and its one-line message, MACs kept, INT8 speed-up over the FP32 original and
over its FP32 parent (the pruned file), INT8 size and the layers pruning protected.

    python benchmarks/external_zoo.py                  # the whole corpus (hours)
    python benchmarks/external_zoo.py --fast           # the CI subset (tests/test_external_zoo.py)
    python benchmarks/external_zoo.py --models mixnet_s,fastvit_t8 --timeout 900
    python benchmarks/external_zoo.py --failed         # re-run the models that failed last time

timm is pinned (pyproject extra ``dev``, constraints.txt); where ``import torchvision`` fails, the subprocesses
get the test shim first on PYTHONPATH (tests/timm_shim.py, tests/shims/torchvision).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.timm_shim import TIMM_VERSION, timm_available, timm_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "external_zoo.json"
TABLE = ROOT / "docs" / "zoo.md"
WORK = ROOT / "benchmarks" / "cache" / "external_zoo"

# family -> architectures (timm names); the families edge deployments use
FAMILIES: dict[str, tuple[str, ...]] = {
    "ResNet-D / ResNet-T": ("resnet18d", "resnet26d", "resnet10t"),
    "RegNet": ("regnetx_002", "regnety_002"),
    "EfficientNet / -V2": ("efficientnet_b0", "efficientnet_lite0", "tf_efficientnetv2_b0"),
    "MobileNet V1-V4": ("mobilenetv1_100", "mobilenetv2_050", "mobilenetv3_small_100", "mobilenetv3_large_100",
                        "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"),
    "GhostNet / RepGhost": ("ghostnet_100", "ghostnetv2_100", "repghostnet_050"),
    "RepVGG": ("repvgg_a0",),
    "MobileOne": ("mobileone_s0",),
    "FastViT": ("fastvit_t8",),
    "MobileViT": ("mobilevit_xxs", "mobilevitv2_050"),
    "EfficientFormer / V2": ("efficientformer_l1", "efficientformerv2_s0"),
    "EdgeNeXt": ("edgenext_xx_small",),
    "LCNet": ("lcnet_050", "lcnet_100"),
    "MixNet": ("mixnet_s",),
    "TinyNet": ("tinynet_a", "tinynet_e"),
    "ReXNet": ("rexnet_100",),
    "DLA": ("dla34", "dla46_c"),
    "CSPNet": ("cspresnet50", "cs3darknet_s"),
    "HRNet": ("hrnet_w18_small",),
    "ConvNeXt-V2": ("convnextv2_atto",),
    "NAS nets": ("mnasnet_100", "fbnetc_100", "spnasnet_100", "hardcorenas_a"),
    "VoVNet": ("ese_vovnet19b_dw",),
    "RepViT": ("repvit_m1",),
    "EfficientViT (MIT / MSRA)": ("efficientvit_b0", "efficientvit_m0"),
    "GENet": ("gernet_s",),
}
CORPUS = [n for names in FAMILIES.values() for n in names]
FAMILY = {n: f for f, names in FAMILIES.items() for n in names}
PX = {"efficientformer_l1": 224, "efficientformerv2_s0": 224}  # attention sized for 224 px inputs
# CI subset: EdgeNeXt needs protection; MixNet's mixed convs split by a list of sizes (crossed
# channels and exit 3 before); ReXNet's slice-add residual grows a dependency group without end
# (never finished pruning before the group bound)
FAST = ("mobilenetv3_small_100", "lcnet_050", "edgenext_xx_small", "mixnet_s", "rexnet_100")
ARGS = ("--data", "random")
STAGE_OF = {"exporting original": "export", "pruning": "prune", "distilling": "distill", "exporting pruned": "export",
            "quantizing": "quantize", "evaluating": "evaluate", "benchmarking": "bench", "model ": "load"}

FACTORY = '''import timm


def model():
    return timm.create_model({name!r}, pretrained=False)
'''


def command(name: str, factory: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    px = PX.get(name, 64)
    return [sys.executable, "-m", "edgecompress", "export", f"{factory.name}:model", "--input-shape",
            f"1,3,{px},{px}", *ARGS, *extra, "--out", str(out), "--overwrite"]


def _stage(log: str) -> str:
    """The stage a failed run was in: its last progress line."""
    last = "load"
    for line in log.splitlines():
        if line.startswith("edgecompress: "):
            for prefix, stage in STAGE_OF.items():
                if line[len("edgecompress: "):].startswith(prefix):
                    last = stage
    return last


def _message(log: str, rc: int | None) -> str:
    if rc is None:
        return "timeout"
    errors = [ln for ln in log.splitlines() if ln.startswith("error") or ln.startswith("edgecompress: error")]
    lines = errors or [ln for ln in log.splitlines() if ln.strip()] or [f"exit {rc}"]
    return re.sub(r"\s+", " ", lines[-1])[:300]


def run_one(name: str, work: Path, timeout: float, env: dict[str, str],
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    factory = d / "model.py"
    factory.write_text(FACTORY.format(name=name))
    out = d / "run"
    cmd = command(name, factory, out, extra)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=d, env=env | {"HOME": str(d)}, capture_output=True, text=True, timeout=timeout)
        rc, log = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = None, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    (d / "log.txt").write_text(log)
    row: dict[str, Any] = {"model": name, "family": FAMILY.get(name, ""), "px": PX.get(name, 64),
                           "exit": rc, "seconds": round(time.time() - t0, 1)}
    man = out / "manifest.json"
    if rc == 0 and man.exists():
        row |= _from_manifest(json.loads(man.read_text()))
    if not row.get("passed"):
        row.update(passed=False, stage=row.get("stage") or _stage(log), message=row.get("message") or _message(log, rc))
    return row


def _from_manifest(m: dict[str, Any]) -> dict[str, Any]:
    arts, prune = m["artifacts"], m.get("stage_results", {}).get("prune", {})
    o, p, q = arts.get("original", {}), arts.get("pruned", {}), arts.get("int8", {})
    gates_ok = all(g["passed"] for g in m.get("gates", []))
    ran = q.get("latency_ms_p50") is not None
    row = {"macs_kept": round(prune["macs_after"] / prune["macs_before"], 4) if prune else None,
           "protected": prune.get("protected", []),
           "int8_bytes": q.get("bytes"), "fp32_bytes": o.get("bytes"),
           "speedup_vs_original": _ratio(o, q), "speedup_vs_parent": _ratio(p, q),
           "warnings": m.get("warnings", [])}
    target = 1 - float(m["config"]["prune"].get("ratio") or 0.5)
    if m.get("status") != "complete" or not ran or not gates_ok:
        row |= {"passed": False, "stage": "verify", "message": f"status {m.get('status')}, int8 ran: {ran}, "
                f"gates passed: {gates_ok}"}
    elif row["macs_kept"] is None or row["macs_kept"] > target + 1e-6:
        row |= {"passed": False, "stage": "prune", "message": f"MACs kept {row['macs_kept']} > {target}"}
    else:
        row["passed"] = True
    return row


def _ratio(slow: dict[str, Any], fast: dict[str, Any]) -> float | None:
    a, b = slow.get("latency_ms_p50"), fast.get("latency_ms_p50")
    return round(a / b, 2) if a and b else None


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    n, ok = len(rows), sum(r["passed"] for r in rows)
    # rows that ran with other code than the rest (``code`` says which): a footnote mark each
    marks = {c: "†‡§¶"[i] for i, c in enumerate(dict.fromkeys(r["code"] for r in rows if r.get("code")))}
    lines = [
        "# External model corpus: timm architectures through `edgecompress export`",
        "",
        f"Generated by `python benchmarks/external_zoo.py` ({meta['date']}, timm {meta['timm']}, "
        f"{meta['cpu']}); raw rows in `benchmarks/results/external_zoo.json`.",
        "",
        "Each architecture: `timm.create_model(NAME, pretrained=False)` in a factory file, then",
        f"`edgecompress export model.py:model --input-shape 1,3,PX,PX {' '.join((*ARGS, *meta.get('args', ())))}` "
        "with every other",
        "option at its default (50 % of MACs removed, INT8 static QDQ, parity gates). Random weights and",
        "random data: the table measures *coverage* (does the run complete, does the INT8 file run, is",
        "parity kept), MACs and speed, not accuracy. Latency: onnxruntime, 1 thread, batch 1, p50,",
        f"on a machine shared with other work and {meta.get('jobs', 1)} model(s) compressed at once: speed-ups are",
        "ratios within one run and noisy (the FP32 original and the INT8 file are not timed side by side).",
        "",
        f"**{ok} of {n} pass ({ok / n:.0%}).**" if n else "",
        "",
        *[f"{mark} {code}" for code, mark in marks.items()], *([""] if marks else []),
        *([f"Not run yet: {', '.join(missing)}.", ""] if (missing := [c for c in CORPUS if c not in
                                                                       {r['model'] for r in rows}]) else []),
        "| model | family | px | result | stage | message | MACs kept | INT8 vs FP32 original | INT8 vs FP32 parent "
        "| INT8 size | protected layers |",
        "|---|---|--:|---|---|---|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        prot = "; ".join(f"`{p['layer']}` ({p['reason']})" for p in r.get("protected", [])) or ""
        size = f"{r['int8_bytes'] / 1e6:.2f} MB" if r.get("int8_bytes") else ""
        kept = f"{r['macs_kept']:.1%}" if r.get("macs_kept") is not None else ""
        sp = lambda k, r=r: f"{r[k]:.2f}×" if r.get(k) else ""  # noqa: E731
        msg = (r.get("message") or "").replace("|", "\\|")
        lines.append(f"| {r['model']}{' ' + marks[r['code']] if r.get('code') else ''} | {r['family']} | {r['px']} | {'pass' if r['passed'] else '**fail**'} | "
                     f"{'' if r['passed'] else r.get('stage', '')} | {'' if r['passed'] else msg} | {kept} | "
                     f"{sp('speedup_vs_original')} | {sp('speedup_vs_parent')} | {size} | {prot.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated timm names (default: the whole corpus)")
    ap.add_argument("--fast", action="store_true", help=f"the CI subset: {', '.join(FAST)}")
    ap.add_argument("--failed", action="store_true", help="re-run the models that failed in the results file")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model (default 900)")
    ap.add_argument("--jobs", type=int, default=1, help="models compressed at once (default 1; latency is "
                    "measured while the others run)")
    ap.add_argument("--args", default="", help="more export flags for every model, e.g. --args=\"--distill-epochs 0\"")
    ap.add_argument("--work", type=Path, default=WORK, help="factory files, runs and logs")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--table", type=Path, default=TABLE)
    a = ap.parse_args()
    why = timm_available()
    if why:
        sys.exit(f"timm does not import ({why}); pip install -c constraints.txt timm=={TIMM_VERSION}")
    old = {r["model"]: r for r in json.loads(a.results.read_text())["rows"]} if a.results.exists() else {}
    names = (a.models.split(",") if a.models else list(FAST) if a.fast else
             [n for n in CORPUS if not old.get(n, {}).get("passed")] if a.failed else CORPUS)
    env = timm_env(dict(os.environ) | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)})
    extra = tuple(shlex.split(a.args))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "timm": TIMM_VERSION,
            "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "timeout_s": a.timeout,
            "jobs": a.jobs, "args": list(extra)}
    rows = dict(old) if (a.models or a.failed) else {}
    with ThreadPoolExecutor(a.jobs) as pool:  # each job is a subprocess: threads only wait
        futures = {pool.submit(run_one, name, a.work, a.timeout, env, extra): name for name in names}
        for i, fut in enumerate(as_completed(futures), 1):
            row = rows[futures[fut]] = fut.result()
            print(f"[{i}/{len(names)}] {row['model']}: "
                  f"{'pass' if row['passed'] else 'FAIL ' + row['stage'] + ': ' + row['message']} ({row['seconds']} s)",
                  flush=True)
            ordered = [rows[n] for n in CORPUS if n in rows] + [r for n, r in rows.items() if n not in CORPUS]
            _write(a, ordered, meta)
    ok = sum(r["passed"] for r in rows.values())
    print(f"{ok} of {len(rows)} pass; table in {a.table}")


def _write(a: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from edgecompress.files import atomic_write_text

    a.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.results, json.dumps({"meta": meta, "rows": rows}, indent=1))
    a.table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.table, into_section(a.table.read_text() if a.table.exists() else "", render(rows, meta)))


BEGIN, END = "<!-- external_zoo.py: begin -->", "<!-- external_zoo.py: end -->"


def into_section(doc: str, table: str) -> str:
    """``doc`` with its generated section (between BEGIN and END) replaced by ``table``, or with the
    section appended: docs/zoo.md also holds the in-repo zoo's coverage, written by hand."""
    section = f"{BEGIN}\n{table.replace('# External', '## External', 1)}{END}\n"
    if BEGIN in doc and END in doc:
        return doc[: doc.index(BEGIN)] + section + doc[doc.index(END) + len(END) + 1:]
    return doc + ("\n" if doc and not doc.endswith("\n\n") else "") + section


if __name__ == "__main__":
    main()
