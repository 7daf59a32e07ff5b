"""The configuration of a whole run, and the plan of stages it implies.

Precedence is defaults < recipe file (``--recipe``) < command-line flags. ``RunConfig.to_dict()`` is
what the manifest records (with ``config_version``); ``RunConfig.from_dict(cfg.to_dict()) == cfg``
and ``load_recipe`` of ``to_toml()`` give the same config back (tested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecompress.config.enums import QUANT_STAGES, Allocation, QuantMode, Stage
from edgecompress.config.inputs import DataConfig, ModelConfig
from edgecompress.config.onnx_input import is_onnx_model, pytorch_only_setting, refusal
from edgecompress.config.parse import EnumFields, from_dict, read_toml, to_plain, to_toml
from edgecompress.config.stages import (
    BenchConfig,
    DistillConfig,
    ExportOnnxConfig,
    PruneConfig,
    QatConfig,
    QuantConfig,
    VerifyConfig,
)
from edgecompress.errors import ConfigError

CONFIG_VERSION = 1  # bump when a key changes meaning; from_dict refuses other versions
_ORDER = {Stage.PRUNE: 0, Stage.DISTILL: 1, Stage.PTQ: 2, Stage.DYNAMIC: 2, Stage.QAT: 2}


@dataclass(frozen=True, kw_only=True)
class RunConfig(EnumFields):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    onnx: ExportOnnxConfig = field(default_factory=ExportOnnxConfig)
    stages: tuple[Stage, ...] | None = None  # e.g. (prune, distill, ptq); None = from the other settings
    out: str | None = None  # None = a new directory under ./edgecompress-out/
    overwrite: bool = False
    resume: bool = False  # continue KD from the checkpoint an interrupted run with the same --out left
    nproc: int = 1  # processes for KD (torch.distributed DDP, gloo); the other stages run in one
    device: str = "cpu"  # PyTorch stages: auto | cpu | cuda[:N] | mps (ONNX export and INT8 stay on the CPU)
    seed: int = 0

    def validate(self) -> RunConfig:
        for f in fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v.validate()
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed}: must be in 0..{2**32 - 1}")
        if self.resume and self.out is None:
            raise ConfigError("--resume needs --out DIR: the --out of the interrupted run")
        if not (self.device in ("auto", "cpu", "mps", "cuda") or self.device.startswith("cuda:")
                and self.device[5:].isdigit()):
            raise ConfigError(f"--device {self.device}: use auto, cpu, cuda, cuda:N or mps")
        if self.nproc < 1:
            raise ConfigError(f"--nproc {self.nproc}: must be >= 1")
        if is_onnx_model(self.model.name) and (setting := pytorch_only_setting(self)) is not None:
            raise ConfigError(refusal(self.model.name, setting))
        if self.data.val_fraction == 0:  # no validation split: what needs one cannot run
            needs = [flag for flag, on in (
                (f"--kd-patience {self.distill.patience}", self.distill.patience > 0),
                (f"--max-accuracy-drop {self.verify.max_accuracy_drop}", self.verify.max_accuracy_drop is not None),
                ("--allocation sensitivity without --sensitivity FILE",
                 self.prune.allocation == Allocation.SENSITIVITY and self.prune.sensitivity is None),
            ) if on]  # fmt: skip
            if needs:
                raise ConfigError(f"--val-fraction 0 leaves no validation split, which {needs[0]} needs; hold some "
                                  "training data out (e.g. --val-fraction 0.1) or drop that option")
        if self.nproc > 1 and Stage.DISTILL not in self.plan():
            raise ConfigError(f"--nproc {self.nproc} spreads KD (distillation) over processes and this plan "
                              f"({','.join(self.plan()) or 'export only'}) has no distill stage; QAT runs in one "
                              "process, so drop --nproc or use e.g. --stages prune,distill,qat")
        self.plan()
        return self

    @property
    def pruning(self) -> bool:
        p = self.prune
        return p.macs_target > 0 or p.target_params is not None or p.target_latency_ms is not None or p.drop_blocks > 0

    def plan(self) -> tuple[Stage, ...]:
        """The stages that will run, in order: a subsequence of prune -> distill -> (ptq|dynamic|qat).

        Explicit ``stages`` win; otherwise they follow from the settings: prune when a ratio or
        target is set, distill when distillation epochs > 0 (and something was pruned), the quant mode.
        """
        if self.stages is None and is_onnx_model(self.model.name):  # an ONNX file: INT8 only
            return () if self.quant.mode == QuantMode.NONE else (Stage(self.quant.mode.value),)
        if self.stages is None:
            # QAT also follows a KD stage: its low learning rate recovers a freshly pruned net
            # slowly (default run: prune,distill,qat 93.06% vs prune,qat 92.20%, docs/qat.md);
            # --stages prune,qat or --distill-epochs 0 skip the KD stage
            kd = self.pruning and self.distill.epochs > 0
            plan = ([Stage.PRUNE] if self.pruning else []) + ([Stage.DISTILL] if kd else [])
            if self.quant.mode != QuantMode.NONE:
                plan.append(Stage(self.quant.mode.value))
            return tuple(plan)
        plan = list(self.stages)
        bad = [str(s) for s in plan if s not in _ORDER]
        if bad:
            raise ConfigError(f"--stages: unknown stage(s) {bad}; use prune, distill (or kd), ptq, dynamic, qat "
                              "(e.g. prune,distill,ptq or prune,qat or prune,distill,qat or ptq)")
        if not plan or [_ORDER[s] for s in plan] != sorted({_ORDER[s] for s in plan}) or len(set(plan)) != len(plan):
            raise ConfigError(f"--stages {','.join(plan)}: stages run in the order prune, distill, then one of "
                              "ptq|dynamic|qat, each at most once (e.g. prune,distill,ptq)")
        if Stage.DISTILL in plan and Stage.PRUNE not in plan:
            raise ConfigError("--stages: distill trains a pruned student; put prune before it (prune,distill,...)")
        if Stage.PRUNE in plan and not self.pruning:
            raise ConfigError("--stages includes prune but --prune-ratio is 0; set a ratio or drop prune")
        if Stage.DISTILL in plan and self.distill.epochs <= 0:
            raise ConfigError("--stages includes distill but --distill-epochs is 0; set epochs or drop distill")
        return tuple(plan)

    def quant_stage(self) -> Stage | None:
        """The quantization stage of the plan (ptq, dynamic or qat), if any."""
        return next((s for s in self.plan() if s in QUANT_STAGES), None)

    def to_dict(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION} | to_plain(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        version = d.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config_version {version!r}: this edgecompress reads version {CONFIG_VERSION}; "
                              "re-create the recipe with this version (edgecompress export --dry-run)")
        return from_dict(cls, d, "top level")

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)


def load_recipe(path: str | Path) -> dict[str, Any]:
    data = read_toml(path)
    RunConfig.from_dict(data).validate()  # fail early, with the key named
    return data
