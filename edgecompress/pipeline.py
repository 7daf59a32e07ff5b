"""Runs the stages in order and records each result:

    load model + data -> export original.onnx (parity) -> prune -> distill -> export
    pruned.onnx (parity) + pruned.pt -> INT8 PTQ -> verify (checker, top-1 under onnxruntime,
    agreement, gates) -> benchmark -> manifest.json + report.md

Everything is written into a staging directory that replaces ``--out`` only when complete.
A failing gate still delivers the directory (for inspection) but with ``status: failed``, the
INT8 file renamed to ``int8.failed.onnx``, and exit code 1.
"""

from __future__ import annotations

import io
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import rundir
from edgecompress.config import RunConfig
from edgecompress.errors import BadInput, GateFailed
from edgecompress.io import atomic_write_bytes, atomic_write_text, sha256_file


@dataclass
class RunResult:
    out_dir: Path
    manifest: dict[str, Any]
    exit_code: int
    failures: list[str] = field(default_factory=list)


def _log(msg: str) -> None:
    print(f"edgecompress: {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: RunConfig, *, log=_log) -> RunResult:
    cfg.validate()
    t_start = time.time()
    out = rundir.resolve_out(cfg.out, cfg.overwrite)
    stage_dir = rundir.staging_dir(out)
    try:
        result = _run(cfg, stage_dir, log, t_start)
        rundir.finalize(stage_dir, out)
    except BaseException:
        rundir.discard(stage_dir)
        raise
    result.out_dir = out
    log(f"{result.manifest['status']}: wrote {out}/ (manifest.json, report.md) in {time.time() - t_start:.0f} s")
    return result


def _run(cfg: RunConfig, d: Path, log, t_start: float) -> RunResult:
    import torch

    from edgecompress import bench, data, export, models, prune, quantize
    from edgecompress.distill import distill
    from edgecompress.train import top1

    seed_everything(cfg.seed)
    timings: dict[str, float] = {}
    t = time.time()

    # --- inputs ------------------------------------------------------------------------
    kind, _ = data.resolve_data(cfg.data.data)
    if kind == "random":
        lm = models.load_model(cfg.model)
        splits = data.load_splits(cfg.data.data, cfg.data.eval_data, input_shape=lm.input_shape[1:],
                                  seed=cfg.seed, random_samples=cfg.data.random_samples)
    else:
        splits = data.load_splits(cfg.data.data, cfg.data.eval_data, input_shape=None, seed=cfg.seed,
                                  val_fraction=cfg.data.val_fraction, eval_fraction=cfg.data.eval_fraction)
        lm = models.load_model(cfg.model, data_shape=tuple(splits.train.x.shape[1:]))
        if tuple(lm.input_shape[1:]) != tuple(splits.train.x.shape[1:]):
            raise BadInput(f"--input-shape {','.join(map(str, lm.input_shape))} does not match the data's "
                           f"samples {tuple(splits.train.x.shape[1:])}; drop --input-shape or fix it")
    splits = _limit(splits, cfg)
    for part in (splits.train, splits.eval):
        if part is not None and part.y is not None and len(part.y) and part.y.max() >= lm.num_classes:
            raise BadInput(f"labels in {part.source} go up to {int(part.y.max())} but the model has "
                           f"{lm.num_classes} outputs; labels must be 0..{lm.num_classes - 1}")
    if cfg.quant.mode == "ptq" and cfg.quant.calib_samples > len(splits.train):
        raise BadInput(f"--calib-samples {cfg.quant.calib_samples} exceeds the {len(splits.train)} training "
                       "samples; lower --calib-samples or pass more data")
    classes = lm.classes or splits.train.classes
    teacher = lm.model
    example = torch.zeros(lm.input_shape[0:1] + tuple(lm.input_shape[1:]))
    log(f"model {lm.spec.ref} ({lm.num_classes} classes, input {list(lm.input_shape)}); data "
        f"{splits.description['kind']}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{0 if splits.eval is None else len(splits.eval)} eval")
    timings["load"] = time.time() - t

    rng = np.random.default_rng(cfg.seed)
    parity_x = (splits.eval.x[:64] if splits.eval is not None else splits.train.x[:64]).astype(np.float32)
    calib_idx = np.sort(rng.choice(len(splits.train), cfg.quant.calib_samples, replace=False)) \
        if cfg.quant.mode == "ptq" else np.zeros(0, int)
    gates: list[dict[str, Any]] = []
    arts: dict[str, dict[str, Any]] = {}
    stage_results: dict[str, Any] = {}
    stages: list[str] = []
    meta = _metadata(lm, classes)

    def fp32_artifact(name: str, model, parent: str | None) -> None:
        t0 = time.time()
        path = d / f"{name}.onnx"
        export.export_onnx(model, example, path, cfg.onnx)
        _stamp(path, meta | {"edgecompress.artifact": name})
        par = export.parity(model, path, parity_x, cfg.verify.parity_tol)
        gates.append({"name": f"parity {name}.onnx vs PyTorch (max-abs logit)", "value": par.max_abs,
                      "bound": par.tol, "passed": par.passed})
        macs, params = prune.count_macs_params(model, example)
        arts[name] = {"path": path.name, "macs": macs, "params": params, "parent": parent,
                      "parity": par.to_dict(), "status": "ok" if par.passed else "failed"}
        timings[f"export_{name}"] = time.time() - t0
        if not par.passed:
            raise GateFailed(f"{name}.onnx differs from PyTorch by {par.max_abs:.3g} (bound {par.tol:.3g}); "
                             "the exported graph is wrong, try --exporter torchscript")

    # --- original ------------------------------------------------------------------------
    log("exporting original.onnx")
    fp32_artifact("original", teacher, None)
    fp32_parent, student = "original", teacher

    # --- prune + distill -----------------------------------------------------------------
    if cfg.prune.ratio > 0:
        t0 = time.time()
        log(f"pruning {cfg.prune.ratio:.0%} of MACs ({cfg.prune.importance}, {cfg.prune.allocation}, "
            f"round-to {cfg.prune.round_to})")
        pr = prune.prune(teacher, example, cfg.prune, calib_x=splits.train.x[calib_idx[:256]] if len(calib_idx)
                         else splits.train.x[:256], calib_y=None if splits.train.y is None else
                         (splits.train.y[calib_idx[:256]] if len(calib_idx) else splits.train.y[:256]))
        student = pr.model
        stages.append("prune")
        stage_results["prune"] = pr.summary() | {"importance": cfg.prune.importance,
                                                  "allocation": cfg.prune.allocation,
                                                  "round_to": cfg.prune.round_to}
        timings["prune"] = time.time() - t0
        log(f"pruned: MACs {pr.macs_before:,} -> {pr.macs_after:,} ({1 - pr.macs_after / pr.macs_before:.1%} "
            f"removed), params {pr.params_before:,} -> {pr.params_after:,}")
        labelled = splits.eval is not None and splits.eval.y is not None
        after_prune = top1(student, splits.eval) if labelled else None
        t0 = time.time()
        if cfg.distill.epochs > 0:
            log(f"distilling for {cfg.distill.epochs} epoch(s) (T={cfg.distill.temperature}, "
                f"alpha={cfg.distill.alpha}, lr={cfg.distill.lr})")
            dr = distill(student, teacher, splits.train, cfg.distill, val=splits.val, seed=cfg.seed)
            stages.append("distill")
            after = top1(student, splits.eval) if labelled else None
            stage_results["distill"] = {"epochs": cfg.distill.epochs, "steps": dr.steps,
                                        "final_loss": dr.final_loss,
                                        "val_top1_before": dr.val_top1_before, "val_top1_after": dr.val_top1_after,
                                        "eval_top1_after_prune": after_prune, "eval_top1_after_distill": after}
            timings["distill"] = time.time() - t0
            if labelled:
                log(f"top-1 after pruning {after_prune:.4f}, after distillation {after:.4f}")
        _save_pruned(d / "pruned.pt", lm, pr)
        log("exporting pruned.onnx")
        fp32_artifact("pruned", student, "original")
        arts["pruned"]["checkpoint"] = "pruned.pt"
        fp32_parent = "pruned"

    # --- INT8 ----------------------------------------------------------------------------
    if cfg.quant.mode == "ptq":
        t0 = time.time()
        log(f"quantizing {fp32_parent}.onnx to INT8 (onnxruntime static QDQ, {cfg.quant.method}, "
            f"{len(calib_idx)} calibration samples)")
        qr = quantize.quantize_ptq(d / f"{fp32_parent}.onnx", d / "int8.onnx", splits.train.x[calib_idx], cfg.quant)
        _stamp(d / "int8.onnx", meta | {"edgecompress.artifact": "int8"})
        export.check_onnx(d / "int8.onnx")
        kr = bench.kernel_report(d / "int8.onnx")
        stages.append("ptq")
        arts["int8"] = dict(arts[fp32_parent]) | {"path": "int8.onnx", "parent": fp32_parent, "status": "ok",
                                                 "int8_op_fraction": kr.int8_op_fraction}
        arts["int8"].pop("parity", None)
        arts["int8"].pop("checkpoint", None)
        stage_results["quantize"] = {"settings": qr.settings, "calib_samples": qr.calib_samples,
                                     "kernels": kr.to_dict()}
        timings["quantize"] = time.time() - t0

    # --- verify: top-1 of every artifact under onnxruntime -------------------------------
    t0 = time.time()
    preds: dict[str, np.ndarray] = {}
    if splits.eval is not None and splits.eval.y is not None:
        log(f"evaluating {len(arts)} artifact(s) on {len(splits.eval)} samples with onnxruntime")
        for name, a in arts.items():
            logits = bench.run_batched(bench.make_session(d / a["path"], threads=torch.get_num_threads()),
                                       splits.eval.x)
            preds[name] = logits.argmax(1)
            a["top1"] = float((preds[name] == splits.eval.y).mean())
    if "int8" in arts and "int8" in preds:
        agree = float((preds["int8"] == preds[fp32_parent]).mean())
        stage_results["quantize"]["agreement_with_fp32"] = agree
        gates.append({"name": f"INT8 vs {fp32_parent} top-1 agreement", "value": agree,
                      "bound": cfg.verify.min_int8_agreement, "passed": agree >= cfg.verify.min_int8_agreement})
        if cfg.verify.max_accuracy_drop is not None:
            drop = 100 * (arts["original"]["top1"] - arts["int8"]["top1"])
            gates.append({"name": "INT8 top-1 drop vs original (points)", "value": drop,
                          "bound": cfg.verify.max_accuracy_drop, "passed": drop <= cfg.verify.max_accuracy_drop})
    timings["evaluate"] = time.time() - t0

    # --- benchmark -----------------------------------------------------------------------
    t0 = time.time()
    b = cfg.bench
    log(f"benchmarking ({b.threads} thread(s), batch {b.batch}, {b.runs} runs)")
    for name, a in arts.items():
        lat = bench.measure_latency(d / a["path"], threads=b.threads, batch=b.batch, warmup=b.warmup,
                                    runs=b.runs, input_shape=lm.input_shape, seed=cfg.seed)
        a |= {"latency_ms_p50": lat.p50_ms, "latency_ms_p90": lat.p90_ms, "latency_ms_mean": lat.mean_ms}
    timings["bench"] = time.time() - t0

    # --- gates, manifest, report -----------------------------------------------------------
    failures = [g["name"] for g in gates if not g["passed"]]
    warnings_: list[str] = []
    if "int8" in arts:
        if failures:
            (d / "int8.onnx").rename(d / "int8.failed.onnx")
            arts["int8"] |= {"path": "int8.failed.onnx", "status": "failed"}
        if arts["int8"]["latency_ms_p50"] >= arts[fp32_parent]["latency_ms_p50"]:
            warnings_.append(f"INT8 p50 {arts['int8']['latency_ms_p50']:.3f} ms is not below {fp32_parent} "
                             f"{arts[fp32_parent]['latency_ms_p50']:.3f} ms on this CPU")
    for a in arts.values():
        p = d / a["path"]
        a |= {"bytes": bench.file_bytes(p), "sha256": sha256_file(p)}
    manifest = {
        "schema": "edgecompress-manifest/1",
        "status": "failed" if failures else "complete",
        "command": _command(),
        "model": lm.spec.to_dict() | {"weights": lm.weights, "weights_sha256": lm.weights_sha256,
                                      "input_shape": list(lm.input_shape), "num_classes": lm.num_classes},
        "data": splits.description,
        "stages": stages,
        "artifacts": arts,
        "stage_results": stage_results,
        "gates": gates,
        "warnings": warnings_,
        "bench": {"threads": b.threads, "batch": b.batch, "warmup": b.warmup, "runs": b.runs},
        "versions": _versions(),
        "cpu": bench.cpu_info(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "wall_seconds": round(time.time() - t_start, 1),
    }
    from edgecompress.manifest import render_report

    atomic_write_text(d / "report.md", render_report(manifest))
    atomic_write_text(d / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    for w in warnings_:
        log(f"warning: {w}")
    return RunResult(d, manifest, 1 if failures else 0, failures)


def _limit(splits, cfg: RunConfig):
    from edgecompress.data import Splits

    rng = np.random.default_rng(cfg.seed + 1)
    train, val, ev = splits.train, splits.val, splits.eval
    if cfg.data.max_train is not None and len(train) > cfg.data.max_train:
        train = train.take(np.sort(rng.choice(len(train), cfg.data.max_train, replace=False)), train.source)
        n_val = max(1, int(cfg.data.max_train * cfg.data.val_fraction))
        if len(val) > n_val:
            val = val.take(np.sort(rng.choice(len(val), n_val, replace=False)), val.source)
    if cfg.data.max_eval is not None and ev is not None and len(ev) > cfg.data.max_eval:
        ev = ev.take(np.sort(rng.choice(len(ev), cfg.data.max_eval, replace=False)), ev.source)
    desc = dict(splits.description) | {"train": len(train), "val": len(val), "eval": 0 if ev is None else len(ev)}
    return Splits(train, val, ev, desc)


def _metadata(lm, classes) -> dict[str, str]:
    from edgecompress.manifest import versions

    return {
        "edgecompress.version": versions().get("edgecompress") or "dev",
        "input.layout": "NCHW",
        "input.shape": json.dumps(list(lm.input_shape)),
        "input.normalization": "float32 in [0,1]: uint8 pixels / 255",
        "classes": json.dumps(list(classes) or [str(i) for i in range(lm.num_classes)]),
        "source.model": lm.spec.ref,
        "source.weights_sha256": lm.weights_sha256 or "",
    }


def _stamp(path: Path, meta: dict[str, str]) -> None:
    """Writes the consumer-facing metadata into the ONNX file (metadata_props)."""
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    atomic_write_bytes(path, m.SerializeToString())


def _save_pruned(path: Path, lm, pr) -> None:
    import torch

    from edgecompress.prune import FORMAT

    buf = io.BytesIO()
    torch.save({"format": FORMAT, "spec": json.dumps(lm.spec.to_dict()), "record": json.dumps(pr.record),
                "input_shape": list(lm.input_shape),
                "state_dict": {k: v.detach().clone() for k, v in pr.model.state_dict().items()}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _versions():
    from edgecompress.manifest import versions

    return versions()


def _command() -> str:
    from edgecompress.manifest import command_line

    return command_line()
