"""INT8 with Intel Neural Compressor 3.x (PyTorch, PT2E path), exported to ONNX — a peer of
:func:`edgecompress.quantize.ptq.quantize_ptq` for comparison and as ``--quant-backend inc``.

Path: ``neural_compressor.torch.export.export`` (torch.export, dynamic batch) ->
``neural_compressor.torch.quantization.prepare(model, INT8StaticQuantConfig())`` -> calibration
forward passes -> ``convert`` (a PT2E quantize/dequantize GraphModule, BatchNorm folded) ->
``torch.onnx.export(dynamo=True)`` -> QDQ ONNX that onnxruntime fuses into int8 kernels.
With ``autotune_eval`` and ``max_drop``, ``neural_compressor.torch.quantization.autotune``
with a ``TuningConfig`` tries INC's static-INT8 tuning space (activation symmetric/asymmetric x
MinMax/KL observers, INC's default first) and stops at the first that meets the bound.

What INC's recipe (torchao's ``X86InductorQuantizer``, made for Inductor, not for ONNX) gives:

* the output of a conv that feeds a residual ``add`` is not quantized (Inductor fuses conv+add),
  and neither is the classifier's output, so onnxruntime runs those convs, the adds and the
  Gemm in FP32 (``float_islands`` of the kernel report);
* ``convert`` does not fold weight quantization: the export holds FP32 weights followed by
  QuantizeLinear -> Clip -> DequantizeLinear, i.e. a file as large as the FP32 one.
  ``fold_weights=True`` (default) evaluates those constant QuantizeLinear/Clip nodes with the
  ONNX reference implementation and stores the int8 result instead: the same numbers and the
  same runtime graph (onnxruntime folds them at load time anyway), about 4x fewer weight bytes;
* activation ranges come from ``MovingAverageMinMaxObserver`` (averaging constant 0.01), so the
  first calibration batch dominates: calibration runs in batches of ``calib_batch`` (default
  256) and the number of batches is recorded.

neural_compressor is imported lazily. It logs to ``$HOME/.habana_logs`` unless ``HABANA_LOGS``
is set; this module points ``HABANA_LOGS`` to a temp dir if it is unset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import BadInput, one_line
from edgecompress.export.onnx_export import INPUT_NAME, OUTPUT_NAME, batch_dim, check_onnx, export_example
from edgecompress.files import atomic_write
from edgecompress.quantize.ptq import QuantResult
from edgecompress.quantize.registry import QuantJob, QuantOutcome
from edgecompress.runtime.kernels import kernel_report
from edgecompress.runtime.session import file_bytes, make_session


class _Quiet(logging.Filter):
    """Drops the records of INC (and of torch/torchao at import) while INC runs; keeps INC's error
    messages, because its export logs the reason and then raises a generic RuntimeError."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())
        return False


_NOISY = ("neural_compressor", "torchao", "torch.utils._pytree", "torch.onnx", "torch.export")


def _inc_error(e: BaseException, extra: list[str] | None = None) -> str:
    """The exception's first line, with INC's last logged error when the exception does not hold it
    (its export logs the reason, then raises a generic RuntimeError)."""
    text = str(e).strip() or (extra[-1] if extra else "")
    first = text.splitlines()[0][:240] if text else ""
    more = f"; INC: {one_line(RuntimeError(extra[-1]), 200)}" if extra and extra[-1] not in text else ""
    return f"{type(e).__name__}: {first}{more}"


@contextlib.contextmanager
def _inc_quiet():
    """INC logs at INFO to stderr (and resets its logger's level at import) and prints tuning
    tables to stdout; a filter on the logger object survives that reset."""
    q = _Quiet()
    loggers = [logging.getLogger(n) for n in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addFilter(q)  # the logger's own records
        lg.setLevel(logging.CRITICAL)  # its children's (a filter does not see them)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield q
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeFilter(q)
            lg.setLevel(level)


def fold_weight_quantization(model) -> int:
    """Replaces QuantizeLinear (and a following Clip) whose inputs are all initializers by their
    value, computed with the ONNX reference implementation; drops initializers no longer used.
    Returns the number of nodes folded. The graph then holds int8 weights -> DequantizeLinear,
    the usual QDQ form."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {i.name: i for i in g.initializer}
    opsets = list(model.opset_import)
    keep, folded = [], 0
    for n in g.node:
        foldable = (n.op_type in ("QuantizeLinear", "Clip") and n.domain in ("", "ai.onnx") and len(n.output) == 1
                    and all(i == "" or i in consts for i in n.input))  # fmt: skip
        if not foldable:
            keep.append(n)
            continue
        ins = [i for i in n.input if i]
        sub = helper.make_model(
            helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(n.output[0], 0, None)],
                              [consts[i] for i in ins]),
            opset_imports=opsets, ir_version=model.ir_version,
        )  # fmt: skip
        (value,) = ReferenceEvaluator(sub).run(None, {})
        t = numpy_helper.from_array(np.asarray(value), n.output[0])
        consts[n.output[0]] = t
        g.initializer.append(t)
        folded += 1
    if folded:
        del g.node[:]
        g.node.extend(keep)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for attr_graph_inputs in _subgraph_inputs(g):
            used |= attr_graph_inputs
        dead = [i for i in g.initializer if i.name not in used]
        for i in dead:
            g.initializer.remove(i)
    return folded


def _subgraph_inputs(g) -> list[set[str]]:
    """Names read inside If/Loop/Scan bodies (so their initializers are not dropped)."""
    from onnx import AttributeProto

    out = []
    for n in g.node:
        for a in n.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
            for s in subs:
                out.append({i for m in s.node for i in m.input})
                out.extend(_subgraph_inputs(s))
    return out


def _runtime_weight_dequant(path: Path) -> int:
    """DequantizeLinear nodes on constant weights left in onnxruntime's optimised graph: the float
    compute nodes' int8 weights are dequantized again at every inference."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgecompress-inc-") as d:
        opt = Path(d) / "optimized.onnx"
        make_session(path, 1, optimized_out=opt)
        g = onnx.load(str(opt)).graph
    consts = {i.name for i in g.initializer}
    return sum(1 for n in g.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in consts)


def _inc_version() -> str:
    from importlib import metadata

    for dist in ("neural_compressor_pt", "neural-compressor-pt", "neural_compressor", "neural-compressor"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return "unknown"


def _default_config():
    from neural_compressor.torch.quantization import get_default_static_config

    return get_default_static_config()


def _tuning_space():
    """INC's static-INT8 tuning space (INT8StaticQuantConfig.get_config_set_for_tuning: activation
    symmetric in {True, False} x observer in {kl, minmax}), INC's default (asymmetric, minmax) first
    and without duplicates, so ``max_trials`` equals the number of distinct trials."""
    from neural_compressor.torch.quantization import INT8StaticQuantConfig

    order = [(False, "minmax"), (False, "kl"), (True, "minmax"), (True, "kl")]
    return [INT8StaticQuantConfig(act_sym=s, act_algo=a) for s, a in order]


def _public(cfg) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: v for k, v in d.items() if k not in ("non_tunable_params", "model_info", "_is_initialized",
                                                    "white_list")}  # fmt: skip


def quantize_inc(
    model: nn.Module,
    example: torch.Tensor,
    calib_x: np.ndarray,
    out: Path,
    *,
    autotune_eval: Callable[[nn.Module], float] | None = None,
    max_drop: float | None = None,
    calib_batch: int = 256,
    fold_weights: bool = True,
    opset: int = 18,
) -> dict[str, Any]:
    """Static INT8 with INC 3.x (PT2E) -> ONNX at ``out``; returns the record of what was done.

    ``autotune_eval(torch_model) -> top-1 in [0, 1]`` (on a validation split, never the eval set)
    together with ``max_drop`` (points of top-1, as ``accuracy_aware_ptq``) switches to INC's
    ``autotune``: INC's tolerance is relative, so ``tolerable_loss = max_drop / 100 / baseline``.
    The accuracy INC sees is that of the PyTorch fake-quant model; the ONNX file run by
    onnxruntime int8 kernels can differ slightly, so measure the file as well.
    """
    if (autotune_eval is None) != (max_drop is None):
        raise BadInput("INC autotune needs both autotune_eval and max_drop (points of top-1); pass both or neither")
    if max_drop is not None and max_drop < 0:
        raise BadInput(f"max_drop={max_drop}: must be >= 0 (points of top-1)")
    if len(calib_x) == 0:
        raise BadInput("INC quantization needs calibration samples; calib_x is empty")
    if calib_batch < 1:
        raise BadInput(f"calib_batch={calib_batch}: must be >= 1")
    os.environ.setdefault("HABANA_LOGS", str(Path(tempfile.gettempdir()) / "edgecompress-inc-logs"))
    t0 = time.time()
    try:
        with _inc_quiet():
            from neural_compressor.torch.export import export as inc_export
            from neural_compressor.torch.quantization import TuningConfig, autotune, convert, prepare
    except Exception as e:  # ImportError, or a broken install failing at import time
        raise BadInput(f"Intel Neural Compressor is not usable ({_inc_error(e)}); "
                       "pip install neural-compressor-pt (the [compress] extra)") from None

    model = model.eval()
    ex = export_example(example)
    xs = np.ascontiguousarray(calib_x, dtype=np.float32)
    if tuple(xs.shape[1:]) != tuple(ex.shape[1:]):
        raise BadInput(f"calibration samples have shape {tuple(xs.shape[1:])}, the model input is "
                       f"{tuple(ex.shape[1:])}; pass samples of the model's input shape")
    batches = [torch.from_numpy(xs[i : i + calib_batch]) for i in range(0, len(xs), calib_batch)]

    def calibrate(prepared: nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                prepared(b)

    record: dict[str, Any] = {
        "backend": "inc", "inc_version": _inc_version(), "torch": torch.__version__,
        "api": "neural_compressor.torch.export.export -> "
               + ("neural_compressor.torch.quantization.autotune(TuningConfig)" if autotune_eval
                  else "neural_compressor.torch.quantization.prepare/convert(get_default_static_config())")
               + " -> torch.onnx.export(dynamo=True)",
        "quantizer": "X86InductorQuantizer (torchao PT2E, via INC W8A8PT2EQuantizer)",
        "calib_samples": len(xs), "calib_batch": calib_batch, "calib_batches": len(batches),
        "activation_observer_note": "minmax = MovingAverageMinMaxObserver (averaging constant 0.01): the first "
                                    "calibration batch dominates the ranges",
        "exporter": "torch.onnx dynamo", "opset": opset, "fold_weights": fold_weights,
    }  # fmt: skip

    with _inc_quiet() as cap:
        try:
            exported = inc_export(model, (ex,), dynamic_shapes=({0: batch_dim()},))
        except Exception as e:
            raise BadInput(f"INC could not export the model with torch.export ({_inc_error(e, cap.messages)}); "
                           "simplify the model's forward (no data-dependent control flow)") from None
        try:
            if autotune_eval is None:
                cfg = _default_config()
                prepared = prepare(exported, cfg, example_inputs=(ex,))
                calibrate(prepared)
                q = convert(prepared)
            else:
                q, cfg, tune = _autotune(exported, ex, calibrate, autotune_eval, float(max_drop), autotune, TuningConfig)
                record["autotune"] = tune
        except BadInput:
            raise
        except Exception as e:
            raise BadInput(f"INC quantization failed ({_inc_error(e, cap.messages)})") from None
    record["config"] = _public(cfg)
    record["quantize_seconds"] = round(time.time() - t0, 1)
    _write_onnx(q, ex, Path(out), opset=opset, fold_weights=fold_weights, record=record)
    return record


def _write_onnx(q: nn.Module, ex: torch.Tensor, out: Path, *, opset: int, fold_weights: bool,
                record: dict[str, Any]) -> None:
    """The INC INT8 model to ONNX at ``out`` (atomically), checked; its figures go into ``record``."""
    raw_bytes: dict[str, int] = {}

    def write(tmp: Path) -> None:
        import onnx

        with _inc_quiet():
            prog = torch.onnx.export(
                q, (ex,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch_dim()},), opset_version=opset, external_data=False, verbose=False,
            )  # fmt: skip
            prog.save(str(tmp), external_data=False)
        raw_bytes["n"] = tmp.stat().st_size
        if fold_weights:
            m = onnx.load(str(tmp))
            record["weight_nodes_folded"] = fold_weight_quantization(m)
            onnx.save(m, str(tmp))

    t1 = time.time()
    try:
        atomic_write(out, write)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"ONNX export of the INC INT8 model failed ({_inc_error(e)})") from None
    check_onnx(out)
    kr = kernel_report(out)
    record["weights_dequantized_per_inference"] = _runtime_weight_dequant(out)
    record |= {
        "export_seconds": round(time.time() - t1, 1), "raw_export_bytes": raw_bytes["n"], "bytes": file_bytes(out),
        "int8_op_fraction": kr.int8_op_fraction, "kernels": kr.to_dict(),
        "fp32_ops_after_optimisation": {k: v for k, v in kr.op_counts.items()
                                        if k in ("Add", "Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm")},
    }  # fmt: skip


def _autotune(exported, ex, calibrate, eval_fn, max_drop, autotune, TuningConfig):
    """INC autotune over :func:`_tuning_space`; returns (model, chosen config, record)."""
    baseline = float(eval_fn(exported))
    if not 0 < baseline <= 1:
        raise BadInput(f"autotune_eval returned {baseline} for the FP32 model; it must return top-1 as a "
                       "fraction in (0, 1]")
    tol = max_drop / 100 / baseline
    results: list[float] = []

    def evaluate(m: nn.Module) -> float:
        if not getattr(m, "is_quantized", False):  # INC's baseline call, on a copy of the FP32 model
            return baseline
        r = float(eval_fn(m))
        results.append(r)
        return r

    space = _tuning_space()
    q = autotune(exported, TuningConfig(config_set=space, tolerable_loss=tol, max_trials=len(space)),
                 eval_fn=evaluate, run_fn=calibrate, example_inputs=(ex,))
    if q is None:
        raise BadInput("INC autotune returned no model; check autotune_eval")
    chosen = next(iter(q.qconfig.values()))
    trials = [{"act_sym": c.act_sym, "act_algo": c.act_algo, "val_top1": r, "val_drop": 100 * (baseline - r)}
              for c, r in zip(space, results, strict=False)]
    best = max(results)
    return q, chosen, {
        "max_drop": max_drop, "val_top1_fp32": baseline, "tolerable_loss_relative": tol, "trials": trials,
        "chosen": {"act_sym": chosen.act_sym, "act_algo": chosen.act_algo}, "val_top1": best,
        "val_drop": 100 * (baseline - best), "met": best >= baseline * (1 - tol) - 1e-12,
        "note": "accuracy measured by INC on the PyTorch fake-quant model, not on the ONNX file",
    }  # fmt: skip


def run(job: QuantJob) -> QuantOutcome:
    """The registry's (ptq, inc) quantizer: INC 3.x static INT8 (pt2e) from the parent's PyTorch model,
    to ONNX; with --max-accuracy-drop, INC's accuracy-aware autotune judged on the validation split."""
    job.log(f"quantizing {job.src.name} to INT8 (onnxruntime static QDQ, {job.cfg.method}, "
            f"{len(job.calib_x)} calibration samples)")
    use_acc = job.max_accuracy_drop is not None and job.val_y is not None

    def val_top1(m: nn.Module) -> float:
        xv, yv = torch.from_numpy(np.asarray(job.val_x, dtype=np.float32)), torch.from_numpy(job.val_y)
        with torch.no_grad():
            hits = sum(int((m(xv[i : i + 500]).argmax(1) == yv[i : i + 500]).sum()) for i in range(0, len(xv), 500))
        return hits / len(xv)

    rec = quantize_inc(job.model, job.example, job.calib_x, job.dst, autotune_eval=val_top1 if use_acc else None,
                       max_drop=job.max_accuracy_drop if use_acc else None)
    settings = {"backend": "inc", "format": "QDQ (INC pt2e)", "per_channel": True, "method": "minmax"} | rec
    return QuantOutcome(result=QuantResult(job.dst, len(job.calib_x), settings))
