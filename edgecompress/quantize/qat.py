"""Quantization-aware training (QAT) with knowledge distillation, exported as QDQ ONNX.

Flow (torchao's PT2E flow, torchao 0.18 / torch 2.13)::

    torch.export.export(model.train(), (x,), dynamic batch).module()   # aten graph, BN in train form
    prepare_qat_pt2e(gm, ort_qdq_quantizer())  # conv+BN fused for QAT, fake-quant modules inserted
    calibrate: one no-grad pass over ``calib_samples`` training images in eval mode
    edgecompress.train.loop.fit(...)                # KD loss from the FP32 teacher (eval, no grad)
        at freeze_bn_after * steps:         BN running stats frozen (batch_norm ``training`` -> False)
        at freeze_observers_after * steps:  observers frozen (scales / zero points fixed)
    convert_pt2e(prepared)                     # BN folded, int8 weights, quantize/dequantize ops
    torch.onnx.export(converted, dynamo=True)  # quantized_decomposed ops -> QuantizeLinear/DequantizeLinear

Exported GraphModules ignore ``.train()`` / ``.eval()``; the prepared model gets methods that call
torchao's ``move_exported_model_to_train`` / ``move_exported_model_to_eval`` (which rewrite the
batch-norm and dropout patterns) and then re-apply the BN freeze, because torchao's rewrite
matches batch norm regardless of its ``training`` literal and would silently un-freeze it.

The quantizer, ``ort_qdq_quantizer()``, shaped by onnxruntime's QDQ fusion rules, is in
``edgecompress.quantize.qat_quantizer`` (why not torchao's X86 recipe: see there).

Parity (see ``qat_parity``): the converted PyTorch model and onnxruntime compute with identical
int8 weights, scales and zero points, but PyTorch does float conv + round while onnxruntime
accumulates in int32 and requantizes with its own rounding, so an intermediate value near a
rounding boundary can land one step apart and the difference propagates. Logits are the output
of the last QuantizeLinear, so differences come in whole multiples of the output scale ``s_out``.
The gate is max |diff| <= ``PARITY_STEPS`` * ``s_out`` (8; measured <= 3 on the Fashion-MNIST
ResNet-20 test split: 0/1/2/3 steps for 74.5/25.3/0.15/0.001 % of the logits); top-1 agreement is
reported (99.85 % there: quantized logits can tie exactly, and one step then decides the argmax).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from edgecompress.config import Exporter, ExportOnnxConfig, QatConfig
from edgecompress.data.dataset import Dataset, as_float
from edgecompress.errors import BadInput, GateFailed, one_line
from edgecompress.export.onnx_export import batch_dim, export_example, export_onnx
from edgecompress.quantize.ptq import QuantResult
from edgecompress.quantize.qat_quantizer import import_torchao, ort_qdq_quantizer, torchao_fast_paths
from edgecompress.quantize.registry import QuantJob, QuantOutcome
from edgecompress.report.manifest import Gate
from edgecompress.runtime.session import make_session, run_batched
from edgecompress.train.augment_policy import augment_policy
from edgecompress.train.distill import kd_loss
from edgecompress.train.loop import TrainConfig, fit, steps_per_epoch, total_steps

# Max |logit difference| PyTorch-converted vs onnxruntime, in units of the output scale.
PARITY_STEPS = 8


@dataclass(frozen=True)
class QatResult:
    model: GraphModule  # converted: int8 weights + quantize/dequantize ops, inference-only
    steps: int
    final_loss: float  # KD loss of the last training step (nan when epochs == 0)
    calib_samples: int
    bn_frozen_at: int | None  # step from which BN statistics were frozen; None = never
    observers_frozen_at: int | None  # step from which scales / zero points were fixed; None = never
    output_scale: float | None  # scale of the quantized logits (the parity unit)


def _bn_nodes(gm: GraphModule) -> list[Node]:
    a = torch.ops.aten
    targets = {a.batch_norm.default, a._native_batch_norm_legit.default, a.cudnn_batch_norm.default}
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


def freeze_bn_stats(gm: GraphModule) -> int:
    """Batch norm in a prepared PT2E graph uses (and stops updating) its running statistics.

    torchao's documented recipe: set the ``training`` argument of the aten batch-norm ops to
    False. Returns the number of batch-norm nodes.
    """
    nodes = _bn_nodes(gm)
    changed = False
    for n in nodes:
        if n.args[5] is not False:
            args = list(n.args)
            args[5] = False
            n.args = tuple(args)
            changed = True
    if changed:
        gm.recompile()
    return len(nodes)


class _Phases:
    """train()/eval() for the prepared GraphModule, with BN / observer freezing that sticks."""

    def __init__(self, gm: GraphModule) -> None:
        self.gm, self.bn_frozen = gm, False

    def install(self) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        phases = self

        def _train(gm: GraphModule, mode: bool = True) -> GraphModule:
            with torchao_fast_paths():
                (move_exported_model_to_train if mode else move_exported_model_to_eval)(gm)
            if phases.bn_frozen:
                freeze_bn_stats(gm)
            return gm

        def _eval(gm: GraphModule) -> GraphModule:
            return _train(gm, False)

        self.gm.train = types.MethodType(_train, self.gm)  # type: ignore[method-assign]
        self.gm.eval = types.MethodType(_eval, self.gm)  # type: ignore[method-assign]

    def freeze_bn(self) -> None:
        self.bn_frozen = True
        freeze_bn_stats(self.gm)

    def freeze_observers(self) -> None:
        from torchao.quantization.pt2e import disable_observer

        self.gm.apply(disable_observer)


def _inference_only(gm: GraphModule) -> GraphModule:
    """A converted model is inference-only: ``train(mode)`` / ``eval()`` set the flag and return
    the module (as nn.Module's do, so ``model = model.eval()`` works), the graph stays as it is.
    torchao's ``allow_exported_model_train_eval`` would return None and re-enable dropout."""

    def _train(self: GraphModule, mode: bool = True) -> GraphModule:
        return nn.Module.train(self, mode)

    def _eval(self: GraphModule) -> GraphModule:
        return nn.Module.train(self, False)

    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(_eval, gm)  # type: ignore[method-assign]
    return gm.eval()


def _freeze_step(fraction: float, total: int) -> int | None:
    """First step (0-based) that runs frozen; None when training ends before it (or no training)."""
    step = math.ceil(fraction * total)
    return step if step < total else None


def _steps(n: int, cfg: QatConfig) -> int:
    if cfg.epochs <= 0:
        return 0
    return total_steps(cfg.epochs, steps_per_epoch(n, cfg.batch_size))


def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    return stack


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e)}" if str(e).strip() else type(e).__name__


def capture(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """torch.export (training IR, dynamic batch) of ``model`` in train mode, as a GraphModule."""
    model.train()
    try:
        with _quiet():
            ep = torch.export.export(model, (export_example(example),), dynamic_shapes=({0: batch_dim()},))
    except Exception as e:
        raise BadInput(f"QAT: torch.export cannot capture the model ({_one_line(e)}); "
                       "remove data-dependent control flow from its forward") from None
    return ep.module()


def prepare(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """Captures ``model`` and inserts fake quantization (conv+BN fused for QAT)."""
    import_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = capture(model, example)
    with _quiet(), torchao_fast_paths():
        return prepare_qat_pt2e(gm, ort_qdq_quantizer())


def output_scale(converted: GraphModule) -> float | None:
    """Scale of the quantized logits: the dequantize op that produces the model output."""
    out = next(n for n in converted.graph.nodes if n.op == "output")
    res = out.args[0]
    while isinstance(res, (tuple, list)):
        res = res[0]
    q = torch.ops.quantized_decomposed
    if isinstance(res, Node) and res.target in (q.dequantize_per_tensor.default, q.dequantize_per_tensor.tensor):
        s = res.args[1]
        if isinstance(s, Node) and s.op == "get_attr":
            s = getattr(converted, str(s.target))
        return float(s)
    return None


def qat(model: nn.Module, teacher: nn.Module | None, train: Dataset, example: torch.Tensor, cfg: QatConfig,
        *, seed: int = 0, desc: str = "qat") -> QatResult:
    """Quantization-aware training of a copy of ``model`` with KD from ``teacher``.

    ``teacher=None`` distils from the unmodified FP32 ``model`` itself. ``model`` and ``teacher``
    are left unchanged. ``cfg.epochs == 0`` gives plain PTQ through the same path (calibration,
    then conversion), the baseline QAT has to beat.
    """
    import_torchao()
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    cfg.validate()
    if len(train) < 2:
        raise BadInput(f"QAT needs at least 2 training samples, got {len(train)}")
    if tuple(train.x.shape[1:]) != tuple(example.shape[1:]):
        raise BadInput(f"QAT: training images {tuple(train.x.shape[1:])} do not match the example input "
                       f"{tuple(example.shape[1:])}")
    if cfg.epochs > 0 and cfg.alpha < 1 and train.y is None:
        raise BadInput("QAT with alpha < 1 needs labels; use alpha=1 (pure distillation) on unlabelled data")
    teacher_was = None
    if teacher is None:
        teacher = copy.deepcopy(model)
    else:
        teacher_was = teacher.training
    teacher.eval()

    prepared = prepare(copy.deepcopy(model), example)
    for p in prepared.parameters():  # QAT fine-tunes every weight, even of a frozen input model
        p.requires_grad_(True)
    phases = _Phases(prepared)
    phases.install()
    total = _steps(len(train), cfg)
    bn_at = _freeze_step(cfg.freeze_bn_after, total)
    obs_at = _freeze_step(cfg.freeze_observers_after, total)

    # Initialise the observers (one pass, BN on running statistics) before training.
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(train))[: cfg.calib_samples])
    prepared.eval()
    with torch.no_grad():
        prepared(torch.from_numpy(np.ascontiguousarray(as_float(train.x[idx]))))

    steps, final_loss = 0, float("nan")
    try:
        if total:
            if bn_at == 0:
                phases.freeze_bn()
            if obs_at == 0:
                phases.freeze_observers()
            done = 0

            def loss_fn(s_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
                nonlocal done
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = kd_loss(s_logits, t_logits, y, cfg.alpha, cfg.temperature)
                done += 1  # the freezes take effect from the next forward pass on
                if done == bn_at:
                    phases.freeze_bn()
                if done == obs_at:
                    phases.freeze_observers()
                return loss

            aug = augment_policy(train.x.shape[1:], cfg.augment_shift, cfg.augment_flip)  # images only
            tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                               weight_decay=cfg.weight_decay, augment_shift=aug.shift,
                               augment_flip=aug.flip, seed=seed)  # fmt: skip
            res = fit(prepared, train, tcfg, loss_fn, desc=desc)
            steps, final_loss = res.steps, res.final_loss
    finally:
        if teacher_was:
            teacher.train()
    prepared.eval()
    with _quiet(), torchao_fast_paths():
        converted = convert_pt2e(prepared)
        move_exported_model_to_eval(converted)
    _inference_only(converted)
    return QatResult(converted, steps, final_loss, len(idx), bn_at, obs_at, output_scale(converted))


# ---------------------------------------------------------------------------------------------
# ONNX export and parity


def export_qat_onnx(converted: GraphModule, example: torch.Tensor, path: Path, *, opset: int = 18) -> Path:
    """QDQ ONNX (QuantizeLinear / DequantizeLinear around float ops) with a dynamic batch dim.

    Goes through ``edgecompress.export.onnx_export.export_onnx`` with the dynamo exporter (atomic write,
    onnx.checker): torch.onnx translates torchao's ``quantized_decomposed`` ops with onnxscript's
    torchlib into QuantizeLinear / DequantizeLinear, and its optimiser folds the casts of the
    constant scales and zero points, so every Q/DQ has constant parameters as onnxruntime's QDQ
    fusion requires. (The TorchScript exporter has no symbolic for these ops.)
    """
    import onnx

    path = Path(path)
    export_onnx(converted, export_example(example), path, ExportOnnxConfig(exporter=Exporter.DYNAMO, opset=opset))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise GateFailed(f"{path.name}: the QAT export has no QuantizeLinear/DequantizeLinear pairs")
    return path


@torch.no_grad()
def _torch_logits(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy()
                           for i in range(0, len(x), batch)])  # fmt: skip


def qat_parity(converted: GraphModule, onnx_path: Path, x: np.ndarray) -> tuple[float, float]:
    """(max, mean) |logit difference| between the converted PyTorch model and onnxruntime on ``x``."""
    ref, got = _compare(converted, onnx_path, x)
    d = np.abs(ref - got)
    return float(d.max()), float(d.mean())


@dataclass(frozen=True)
class QatParity:
    max_abs: float
    mean_abs: float
    bound: float  # PARITY_STEPS * output scale (inf when the logits are not quantized)
    top1_agreement: float  # reported, not gated: flips only happen between near-tied logits
    passed: bool  # max_abs <= bound

    def to_dict(self) -> dict[str, float | bool]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "bound": self.bound,
                "top1_agreement": self.top1_agreement, "passed": self.passed}  # fmt: skip


def check_qat_parity(converted: GraphModule, onnx_path: Path, x: np.ndarray) -> QatParity:
    """The INT8 parity gate: max-abs logit difference <= PARITY_STEPS output quantization steps.

    Top-1 agreement is reported but not gated: if every logit is within ``max_abs`` of its
    reference, a prediction can only change between classes whose reference logits are within
    ``2 * max_abs`` of each other, i.e. the bound already says all there is to say. (Quantized
    logits tie exactly at times, and a one-step difference then decides the argmax: 99.85 %
    agreement on Fashion-MNIST ResNet-20 with a max difference of 3 steps.)
    """
    ref, got = _compare(converted, onnx_path, x)
    d = np.abs(ref - got)
    s = output_scale(converted)
    bound = PARITY_STEPS * s if s else float("inf")
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    max_abs = float(d.max())
    return QatParity(max_abs, float(d.mean()), bound, agree, bool(max_abs <= bound))


def _compare(converted: GraphModule, onnx_path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) == 0:
        raise BadInput("QAT parity needs at least one sample")
    ref = _torch_logits(converted, x)
    got = run_batched(make_session(onnx_path, threads=1), np.ascontiguousarray(x, dtype=np.float32))
    return ref, got


def run(job: QuantJob) -> QuantOutcome:
    """The registry's (qat, ort) quantizer: QAT with KD from the original model (torchao pt2e),
    exported to QDQ ONNX; parity gate in units of the output quantization step (docs/qat.md)."""
    cfg = job.qat
    job.log(f"quantization-aware training of {job.started_from} for {cfg.epochs:g} epoch(s) with KD from the original")
    qr = qat(job.model, job.teacher, job.train, job.example, cfg, seed=job.seed)
    path = export_qat_onnx(qr.model, job.example, job.dst, opset=job.opset)
    par = check_qat_parity(qr.model, path, job.parity_x)
    gate = Gate(name="parity int8.onnx vs converted QAT model (max-abs logit)", value=par.max_abs,
                bound=par.bound if np.isfinite(par.bound) else 0.0, passed=par.passed)
    settings = {"format": "QDQ (torchao pt2e QAT)", "per_channel": True, "method": "QAT with KD",
                "epochs": cfg.epochs, "lr": cfg.lr}
    record = {"qat": {"started_from": job.started_from, "steps": qr.steps, "final_loss": qr.final_loss,
                      "bn_frozen_at": qr.bn_frozen_at, "observers_frozen_at": qr.observers_frozen_at,
                      "parity_top1_agreement": par.top1_agreement}}
    return QuantOutcome(result=QuantResult(path, qr.calib_samples, settings), quantize_record=record, gates=[gate])
