"""Configuration: one frozen dataclass per stage (``stages``), StrEnums for every choice
(``enums``), the run and its plan (``run``), strict parsing of recipes and flags (``parse``)."""

from edgecompress.config.enums import (
    Allocation,
    CalibMethod,
    Exporter,
    Importance,
    LatencyAware,
    LayerKind,
    OutputKind,
    QType,
    QuantBackend,
    QuantMode,
    QuantTarget,
    Stage,
    Structure,
    WeightStorage,
)
from edgecompress.config.inputs import DataConfig, ModelConfig
from edgecompress.config.parse import merge
from edgecompress.config.run import CONFIG_VERSION, RunConfig, load_recipe
from edgecompress.config.stages import (
    BenchConfig,
    DistillConfig,
    ExportOnnxConfig,
    PruneConfig,
    QatConfig,
    QuantConfig,
    VerifyConfig,
)

__all__ = [
    "CONFIG_VERSION", "Allocation", "BenchConfig", "CalibMethod", "DataConfig", "DistillConfig", "ExportOnnxConfig",
    "Exporter", "Importance", "LatencyAware", "LayerKind", "ModelConfig", "OutputKind", "PruneConfig", "QType", "QatConfig", "QuantBackend", "QuantConfig",
    "QuantMode", "QuantTarget", "RunConfig", "Stage", "Structure", "VerifyConfig", "WeightStorage", "load_recipe", "merge",
]  # fmt: skip
