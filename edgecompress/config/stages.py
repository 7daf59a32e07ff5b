"""One frozen dataclass per stage, with its checks: ``validate()`` raises a one-line ``ConfigError``
that names the flag and the fix. Choices are StrEnums (``config.enums``). The model and data
configs are in ``config.inputs``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgecompress.config.enums import (
    Allocation,
    CalibMethod,
    Deliver,
    Exporter,
    Importance,
    LatencyAware,
    LayerKind,
    QType,
    QuantBackend,
    QuantMode,
    QuantTarget,
    Structure,
    WeightStorage,
)
from edgecompress.config.parse import EnumFields
from edgecompress.config.parse import choice as _choice
from edgecompress.errors import ConfigError
from edgecompress.runtime.latency import PROTOCOL


@dataclass(frozen=True, kw_only=True)
class PruneConfig(EnumFields):
    # fraction of MACs removed; None = 0.5 unless another target is given; 0 = no MACs target.
    # With target_params too, pruning goes on until both are met (see macs_target)
    ratio: float | None = None
    importance: Importance = Importance.L2
    allocation: Allocation = Allocation.UNIFORM
    round_to: int = 8  # keep channel counts multiples of this (SIMD / INT8 kernels); 1 = off
    # "KIND=N" per layer kind (tp_adapter.group_kind; set by --structure fastest from the width tables);
    # a kind not named, and a group without a conv, round to round_to
    round_to_by_kind: tuple[str, ...] = ()
    max_layer_ratio: float = 0.9  # no layer loses more than this fraction of its channels
    ignore: tuple[str, ...] = ()  # module names to leave alone (the classifier always is)
    taylor_batches: int = 4  # batches of gradients for taylor importance
    target_params: float | None = None  # fraction of parameters to remove (with ratio: both must be met)
    target_latency_ms: float | None = None  # instead of ratio: prune until measured p50 <= this
    steps: int = 1  # iterative schedule: N rounds of prune -> short distillation
    drop_blocks: int = 0  # depth pruning: remove this many residual blocks before pruning channels
    # round_to and drop_blocks as given, or chosen by measured latency on the device (pipeline.structure);
    # auto = fastest for models of >= 200M MACs left at round_to 8 and drop_blocks 0
    structure: Structure = Structure.AUTO
    sensitivity: str | None = None  # allocation=sensitivity: sensitivity.json to use; None = measure on val split
    # bounds on each pruning step (dependency graph + channel removal; prune.bounds): past either, a
    # one-line error naming the slow part instead of a hang or an OOM kill. 0 = no bound
    max_seconds: float = 600.0  # wall-clock seconds per step
    max_memory: float = 0.75  # resident memory, as a fraction of the RAM (or the cgroup's limit)

    @property
    def macs_target(self) -> float:
        """The fraction of MACs to remove: ``ratio`` when given, else 0.5 when no other target is
        set, else 0 (no MACs target: --target-params alone or --target-latency-ms)."""
        if self.ratio is not None:
            return self.ratio
        return 0.5 if self.target_params is None and self.target_latency_ms is None else 0.0

    def goal(self, ratio: float | None = None) -> str:
        """The target in words (``ratio`` overrides the MACs target, as prune() allows)."""
        if self.target_latency_ms is not None:
            return f"a p50 latency of {self.target_latency_ms} ms (measured)"
        r = self.macs_target if ratio is None else ratio
        goals = [f"{r:.0%} of MACs removed"] if r > 0 else []
        if self.target_params is not None:
            goals.append(f"{self.target_params:.0%} of params removed")
        return " and ".join(goals)

    def validate(self) -> None:
        if self.target_latency_ms is not None and self.ratio:
            raise ConfigError(f"--prune-ratio {self.ratio} and --target-latency-ms: choose one; the latency "
                              "target decides how much to prune")
        if self.target_params is not None and self.target_latency_ms is not None:
            raise ConfigError("--target-params and --target-latency-ms: choose one pruning target")
        if self.target_params is not None and not 0 < self.target_params < 1:
            raise ConfigError(f"--target-params {self.target_params}: must be in (0, 1), a fraction of params removed")
        if self.target_latency_ms is not None and self.target_latency_ms <= 0:
            raise ConfigError(f"--target-latency-ms {self.target_latency_ms}: must be > 0")
        if self.steps < 1:
            raise ConfigError(f"--prune-steps {self.steps}: must be >= 1")
        if self.steps > 1 and (self.target_latency_ms is not None or self.target_params is not None):
            raise ConfigError("--prune-steps > 1 works with --prune-ratio, not with --target-params/--target-latency-ms")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise ConfigError(f"--prune-ratio {self.ratio}: must be in [0, 1), e.g. 0.5 removes half the MACs")
        _choice("--importance", self.importance, Importance)
        _choice("--allocation", self.allocation, Allocation)
        _choice("--structure", self.structure, Structure)
        if self.structure == Structure.FASTEST and (self.target_latency_ms is not None or self.steps > 1
                                                    or self.allocation == Allocation.SENSITIVITY):
            raise ConfigError("--structure fastest chooses the structure for --prune-ratio / --target-params with "
                              "one pruning step and uniform or global allocation; use --structure fixed with "
                              "--target-latency-ms, --prune-steps > 1 or --allocation sensitivity")
        if self.round_to < 1:
            raise ConfigError(f"--round-to {self.round_to}: must be >= 1 (1 turns rounding off)")
        self.round_to_kinds()
        if not 0 < self.max_layer_ratio < 1:
            raise ConfigError(f"max_layer_ratio={self.max_layer_ratio}: must be in (0, 1)")
        if self.taylor_batches < 1:
            raise ConfigError(f"taylor_batches={self.taylor_batches}: must be >= 1")
        if not (self.max_seconds >= 0 and math.isfinite(self.max_seconds)):
            raise ConfigError(f"--prune-max-seconds {self.max_seconds}: must be >= 0 (0 = no bound)")
        if not 0 <= self.max_memory <= 1:
            raise ConfigError(f"--prune-max-memory {self.max_memory}: must be a fraction of the RAM in [0, 1] "
                              "(0 = no bound)")
        if self.drop_blocks < 0:
            raise ConfigError(f"--drop-blocks {self.drop_blocks}: must be >= 0 (a number of residual blocks)")
        if self.sensitivity is not None and self.allocation != "sensitivity":
            raise ConfigError(f"--sensitivity {self.sensitivity} is read by --allocation sensitivity; add that or "
                              "drop --sensitivity")
        if self.allocation == "sensitivity" and self.target_latency_ms is not None:
            raise ConfigError("--allocation sensitivity picks ratios for --prune-ratio or --target-params, not "
                              "--target-latency-ms; use --allocation uniform or global with a latency target")

    def round_to_kinds(self) -> dict[str, int]:
        """``round_to_by_kind`` as {kind: multiple}; a malformed entry is a ConfigError."""
        out: dict[str, int] = {}
        for entry in self.round_to_by_kind:
            kind, _, n = str(entry).partition("=")
            if kind not in {k.value for k in LayerKind} or not n.isdigit() or int(n) < 1 or kind in out:
                raise ConfigError(f"[prune] round_to_by_kind entry {entry!r}: write KIND=N once per kind, KIND one of "
                                  f"{', '.join(k.value for k in LayerKind)} and N >= 1 (e.g. \"depthwise=16\")")
            out[kind] = int(n)
        return out


@dataclass(frozen=True, kw_only=True)
class DistillConfig(EnumFields):
    epochs: float = 1.0  # passes over the training data; 0 skips fine-tuning
    lr: float = 0.01
    alpha: float = 0.9  # weight of the KD term; (1 - alpha) weighs cross-entropy on labels
    temperature: float = 4.0
    batch_size: int = 128
    weight_decay: float = 5e-4
    # early stopping on the validation part of the TRAINING data ([data] val_fraction, --val-fraction):
    # top-1 after every pass and at the end, best weights kept; stop after this many rounds
    # without improvement. 0 = off (no per-epoch validation)
    patience: int = 0
    features: tuple[str, ...] = ()  # feature KD: module names in both teacher and student, e.g. layer1
    feature_weight: float = 1.0  # weight of the feature MSE added to the logit KD loss
    cache_teacher: bool = False  # teacher logits computed once per sample; needs augmentation off
    augment_shift: int = 2  # random shift (pixels) of the training images; 0 = off
    augment_flip: bool = True  # random horizontal flip
    # mixup: Beta(a, a) blend of each batch with a shuffled copy; the teacher sees the same blend, the
    # cross-entropy term gets the blended labels (edgecompress.train.mixup). 0 = off
    mixup: float = 0.0
    checkpoint_every: int = 100  # steps between resume checkpoints (also at the end of every epoch)
    # models with several outputs or non-logit outputs: NAME=W weighs that output's loss (default 1; 0 = off)
    output_weights: tuple[str, ...] = ()

    def validate(self) -> None:
        for e in self.output_weights:
            name, sep, w = e.rpartition("=")
            try:
                ok = bool(sep and name) and float(w) >= 0 and math.isfinite(float(w))
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"--kd-output-weight {e}: expected NAME=W with W >= 0, e.g. boxes=2")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every}: must be >= 1 (steps)")
        if self.patience < 0:
            raise ConfigError(f"--kd-patience {self.patience}: must be >= 0 (0 turns early stopping off)")
        if not (self.feature_weight >= 0 and math.isfinite(self.feature_weight)):
            raise ConfigError(f"--kd-feature-weight {self.feature_weight}: must be >= 0")
        if self.augment_shift < 0:
            raise ConfigError(f"--kd-augment-shift {self.augment_shift}: must be >= 0 (0 = off)")
        if not (self.mixup >= 0 and math.isfinite(self.mixup)):
            raise ConfigError(f"--kd-mixup {self.mixup}: must be >= 0 (a Beta(a, a) parameter; 0 = off)")
        if self.cache_teacher and self.mixup:
            raise ConfigError("--kd-cache-teacher holds the logits of the un-mixed images; drop it or --kd-mixup")
        if self.cache_teacher and (self.augment_shift or self.augment_flip):
            raise ConfigError("--kd-cache-teacher holds the logits of the un-augmented images; turn augmentation "
                              "off with --kd-augment-shift 0 --no-kd-augment-flip")
        if self.cache_teacher and self.features:
            raise ConfigError("--kd-cache-teacher caches logits only; drop it or --kd-features (feature KD needs "
                              "the teacher's forward pass)")
        if self.epochs < 0:
            raise ConfigError(f"--distill-epochs {self.epochs}: must be >= 0 (0 skips distillation)")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr}: must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha {self.alpha}: must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature {self.temperature}: must be > 0")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size}: must be >= 2 (BatchNorm)")


# a model this large gets the measured searches by default (--structure / --latency-aware-int8 auto)
LARGE_MODEL_MACS = 200_000_000
DEFAULT_CALIB_SAMPLES = 512  # calibration samples when --calib-samples is not given (fewer if the data has fewer)


@dataclass(frozen=True, kw_only=True)
class QuantConfig(EnumFields):
    mode: QuantMode = QuantMode.PTQ  # dynamic: weights only, for MatMul/Gemm models
    # drawn from the training split, never the eval set; None = DEFAULT_CALIB_SAMPLES, or every
    # training sample when there are fewer (an explicit count larger than the split is an error)
    calib_samples: int | None = None
    method: CalibMethod = CalibMethod.MINMAX  # calibration
    per_channel: bool = True
    activation_type: QType = QType.UINT8
    weight_type: QType = QType.INT8
    reduce_range: bool = False
    op_types: tuple[str, ...] = ()  # empty = onnxruntime's default set
    exclude_nodes: tuple[str, ...] = ()
    # CPU class the INT8 file is for; auto = this machine. Its settings (edgecompress.quantize.target) replace
    # activation_type / weight_type / reduce_range where those are left at their defaults.
    target: QuantTarget = QuantTarget.AUTO
    backend: QuantBackend = QuantBackend.ORT  # inc: Intel Neural Compressor 3.x pt2e
    # FP32 for the layers whose INT8 kernel is slower on the measuring CPU (quantize.latency_aware); auto =
    # when the INT8 file is not faster than its FP32 parent there, and for models of >= LARGE_MODEL_MACS
    latency_aware: LatencyAware = LatencyAware.AUTO
    # how those FP32 layers store their weights: int8 = per-channel int8 + Cast/Mul, which
    # onnxruntime folds back to float when the session starts (FP32 speed, INT8 bytes); float = as is
    latency_aware_weights: WeightStorage = WeightStorage.INT8
    # models that are not one classifier output, static ORT PTQ: keep in float the tail of any output whose
    # channels' ranges differ by two orders of magnitude (boxes in pixels next to scores; quantize.guard)
    range_guard: bool = True

    def validate(self) -> None:
        _choice("--quant", self.mode, QuantMode)
        _choice("--quant-backend", self.backend, QuantBackend)
        if self.backend == "inc" and self.mode != "ptq":
            raise ConfigError(f"--quant-backend inc does static INT8 only; use it with --quant ptq, not {self.mode}")
        _choice("--target", self.target, QuantTarget)
        _choice("--latency-aware-int8", self.latency_aware, LatencyAware)
        if self.latency_aware == LatencyAware.ON and (self.mode != "ptq" or self.backend != "ort"):
            raise ConfigError("--latency-aware-int8 re-quantizes with onnxruntime static PTQ; use it with --quant ptq "
                              f"and --quant-backend ort (got --quant {self.mode}, --quant-backend {self.backend})")
        _choice("--latency-aware-weights", self.latency_aware_weights, WeightStorage)
        if self.latency_aware_weights != "int8" and self.latency_aware == LatencyAware.OFF:
            raise ConfigError(f"--latency-aware-weights {self.latency_aware_weights} only applies to the FP32 layers "
                              "of the latency-aware pass, which --latency-aware-int8 off turns off; drop one of them")
        _choice("--calib-method", self.method, CalibMethod)
        _choice("activation_type", self.activation_type, QType)
        _choice("weight_type", self.weight_type, QType)
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(f"--calib-samples {self.calib_samples}: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class QatConfig(EnumFields):
    epochs: float = 1.0  # passes over the training data; 0 = calibrate and convert only (PTQ)
    lr: float = 1e-3
    alpha: float = 0.9  # weight of the KD term; (1 - alpha) weighs cross-entropy on labels
    temperature: float = 4.0
    batch_size: int = 128
    calib_samples: int = 256  # training images used to initialise the observers before training
    freeze_bn_after: float = 0.5  # fraction of steps after which BN running stats are frozen
    freeze_observers_after: float = 0.75  # fraction of steps after which scales are frozen
    weight_decay: float = 5e-4
    augment_shift: int = 2  # random shift (pixels), as in edgecompress.train.loop.fit
    augment_flip: bool = True  # random horizontal flip; turn off when left/right carries the label

    def validate(self) -> QatConfig:
        if not (self.epochs >= 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"qat epochs={self.epochs}: must be >= 0 (0 = calibrate and convert only)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"qat lr={self.lr}: must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"qat alpha={self.alpha}: must be in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"qat temperature={self.temperature}: must be > 0")
        if self.batch_size < 2:
            raise ConfigError(f"qat batch_size={self.batch_size}: must be >= 2 (BatchNorm)")
        if self.calib_samples < 1:
            raise ConfigError(f"qat calib_samples={self.calib_samples}: must be >= 1")
        for k in ("freeze_bn_after", "freeze_observers_after"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise ConfigError(f"qat {k}={v}: must be a fraction of the training steps in [0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"qat weight_decay={self.weight_decay}: must be >= 0")
        if self.augment_shift < 0:
            raise ConfigError(f"qat augment_shift={self.augment_shift}: must be >= 0")
        return self


@dataclass(frozen=True, kw_only=True)
class VerifyConfig(EnumFields):
    parity_tol: float = 1e-4  # FP32 ONNX vs PyTorch: max-abs <= tol * max(1, max|logit|)
    min_int8_agreement: float = 0.99  # gate: INT8 vs FP32 top-1 agreement on the eval set (0 = report only)
    max_accuracy_drop: float | None = None  # points of top-1, INT8 vs teacher; None = report only
    deliver: Deliver = Deliver.INT8  # the deliverable: int8 even when slower here (said loudly), or the fastest
    # gate: every artifact against the ORIGINAL model on the eval set (pipeline.fidelity): labelled, top-1
    # at most this many points below the original's (or 2 standard errors of the paired difference, if
    # more: a small eval set cannot resolve less); 0 = report only
    max_drop_vs_original: float = 3.0
    min_agreement_vs_original: float = 0.9  # unlabelled eval data: top-1 agreement with the original; 0 = report only

    # gate for regression outputs (boxes, embeddings): the worst channel's SNR of INT8 vs its FP32 parent
    # (runtime.fidelity); class, multi-label and dense outputs are gated on min_int8_agreement
    min_snr_db: float = 20.0
    # the user's own metric, file.py:fn or module:fn: fn(outputs, targets) -> float, higher is better, in
    # [0, 1] like accuracy (drops are in points, x100); outputs and targets are numpy arrays (a dict by output
    # name for several outputs / y_<output> targets). Reported per artifact; --max-accuracy-drop gates on it
    metric: str | None = None

    def validate(self) -> None:
        _choice("--deliver", self.deliver, Deliver)
        if not (self.max_drop_vs_original >= 0 and math.isfinite(self.max_drop_vs_original)):
            raise ConfigError(f"--max-drop-vs-original {self.max_drop_vs_original}: must be >= 0 (points of top-1; "
                              "0 = report only)")
        if not 0 <= self.min_agreement_vs_original <= 1:
            raise ConfigError(f"--min-agreement-vs-original {self.min_agreement_vs_original}: must be in [0, 1] "
                              "(0 = report only)")
        if self.metric is not None and ":" not in self.metric:
            raise ConfigError(f"--metric {self.metric}: expected path/to/file.py:function or package.module:function")
        if self.parity_tol <= 0:
            raise ConfigError(f"parity_tol={self.parity_tol}: must be > 0")
        if not 0 <= self.min_int8_agreement <= 1:
            raise ConfigError(f"min_int8_agreement={self.min_int8_agreement}: must be in [0, 1]")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop}: must be >= 0")


@dataclass(frozen=True, kw_only=True)
class BenchConfig(EnumFields):
    """The latency protocol of the run's benchmark; its defaults are ``edgecompress bench``'s."""

    threads: int = PROTOCOL.threads
    batch: int = PROTOCOL.batch
    warmup: int = PROTOCOL.warmup
    runs: int = PROTOCOL.runs
    # an ssh destination: every latency of the run (latency-aware INT8, --target-latency-ms, the
    # benchmark) is measured there (edgecompress.runtime.remote); the build host's figures beside
    on: str | None = None
    on_python: str = "python3"  # the device's python with numpy, onnx and onnxruntime
    ssh_config: str | None = None  # ssh -F FILE (default: ssh's own ~/.ssh/config)

    def validate(self) -> None:
        if self.threads < 1 or self.batch < 1:
            raise ConfigError("--threads and batch must be >= 1")
        if self.warmup < 0 or self.runs < 1:
            raise ConfigError(f"warmup={self.warmup} runs={self.runs}: need warmup >= 0, runs >= 1")
        if self.on is None and (self.on_python != "python3" or self.ssh_config is not None):
            raise ConfigError("--bench-on-python and --ssh-config go with --bench-on DEST")
        if self.on is not None and (not self.on.strip() or self.on.startswith("-")):
            raise ConfigError(f"--bench-on {self.on!r}: give an ssh destination (user@host, ssh://user@host:port "
                              "or a Host alias)")


@dataclass(frozen=True, kw_only=True)
class ExportOnnxConfig(EnumFields):
    exporter: Exporter = Exporter.DYNAMO
    opset: int = 18
    # rename tensors and nodes of the shipped files to short ids (graph input/output names stay):
    # on a 28-px ResNet-20 INT8 file the names are ~18% of the bytes; off keeps them readable
    compact_names: bool = False

    def validate(self) -> None:
        _choice("--exporter", self.exporter, Exporter)
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"opset={self.opset}: use 13..23")
