"""The choices of every option, as StrEnums: a member compares equal to its string, serialises
to it in JSON and TOML, and the recipe/flag parser turns strings into members."""

from __future__ import annotations

from enum import StrEnum

from edgecompress.runtime.outputs import OutputKind  # the runtime names outputs' kinds; re-exported here

__all__ = ["QUANT_STAGES", "Allocation", "CalibMethod", "Exporter", "Importance", "OutputKind", "QType",
           "QuantBackend", "QuantMode", "QuantTarget", "Stage", "WeightStorage"]


class Importance(StrEnum):
    L1 = "l1"
    L2 = "l2"
    BN = "bn"
    TAYLOR = "taylor"
    LAMP = "lamp"
    FPGM = "fpgm"
    RANDOM = "random"


class Allocation(StrEnum):
    UNIFORM = "uniform"  # the same channel ratio in every layer group
    GLOBAL = "global"  # channels ranked across layers
    SENSITIVITY = "sensitivity"  # per-group ratios from a measured sensitivity table


class QuantMode(StrEnum):
    PTQ = "ptq"
    DYNAMIC = "dynamic"
    QAT = "qat"
    NONE = "none"


class QuantBackend(StrEnum):
    ORT = "ort"
    INC = "inc"


class QuantTarget(StrEnum):
    AUTO = "auto"
    X86_VNNI = "x86-vnni"
    X86_AVX2 = "x86-avx2"
    ARM64 = "arm64"


class CalibMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QType(StrEnum):
    UINT8 = "uint8"
    INT8 = "int8"


class Exporter(StrEnum):
    DYNAMO = "dynamo"  # torch.onnx's maintained, torch.export-based path
    TORCHSCRIPT = "torchscript"  # the legacy tracer: ~10x faster to run


class LatencyAware(StrEnum):
    """When the per-layer INT8-or-FP32 choice of quantize.latency_aware runs (static onnxruntime PTQ)."""

    # the INT8 file is timed against its FP32 parent on the measuring device; the pass runs when
    # INT8 is not faster, and for models of >= 200M MACs (where it costs little against the run)
    AUTO = "auto"
    ON = "on"  # always
    OFF = "off"  # never: every layer INT8, even when the file is slower than its FP32 parent


class WeightStorage(StrEnum):
    """How layers left in FP32 by --latency-aware-int8 store their weights."""

    INT8 = "int8"  # per-channel int8 + Cast/Mul, folded back to float by onnxruntime at load
    FLOAT = "float"


class Deliver(StrEnum):
    """Which file a run names as its deliverable (manifest ``delivered_artifact``, report, CLI)."""

    INT8 = "int8"  # the INT8 file, even when it is slower here than its FP32 parent (said in the report)
    FASTEST = "fastest"  # the faster, on this CPU, of the INT8 file and its FP32 parent


class Structure(StrEnum):
    """How the pruned structure's channel multiple and dropped blocks are decided (pipeline.structure)."""

    AUTO = "auto"  # FASTEST for models of >= 200M MACs left at the default --round-to 8 / --drop-blocks 0
    FIXED = "fixed"  # --round-to and --drop-blocks as given
    FASTEST = "fastest"  # measured on the device: the width table's multiple, the fastest number of dropped blocks


class LayerKind(StrEnum):
    """Convolution kinds with a width table each (quantize.widths); a pruning group's kind decides
    its channel multiple under a per-kind ``round_to_by_kind``."""

    DENSE = "dense"  # a k x k convolution, k > 1, not grouped
    POINTWISE = "pointwise"  # 1 x 1
    DEPTHWISE = "depthwise"  # one filter per channel (groups == channels)


class Stage(StrEnum):
    """The stages of a run: one name in the plan, the log and the manifest."""

    PRUNE = "prune"
    DISTILL = "distill"
    PTQ = "ptq"
    DYNAMIC = "dynamic"
    QAT = "qat"

    @classmethod
    def _missing_(cls, value: object) -> Stage | None:
        return cls.DISTILL if value == "kd" else None  # --stages prune,kd,ptq: the documented short name


QUANT_STAGES = (Stage.PTQ, Stage.DYNAMIC, Stage.QAT)


class ResizeMode(StrEnum):
    """How image files are brought to the model's size (edgecompress.runtime.imageprep)."""

    STRETCH = "stretch"  # to H x W, aspect ratio not kept
    CROP = "crop"  # shorter side to size / crop_fraction, then the centre H x W
    LETTERBOX = "letterbox"  # fit inside H x W, aspect kept, zero padding


class ChannelOrder(StrEnum):
    AUTO = "auto"  # the model's channels: 1 -> gray, 3 -> rgb
    GRAY = "gray"
    RGB = "rgb"
    BGR = "bgr"


class Layout(StrEnum):
    NCHW = "nchw"
    NHWC = "nhwc"


class BadFiles(StrEnum):
    ERROR = "error"  # stop at the first image that cannot be decoded, naming it
    SKIP = "skip"  # decode every file once up front; leave out (and count) those that fail
