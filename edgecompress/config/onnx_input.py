"""What a run that starts from an ONNX file can do: INT8 (static or dynamic, onnxruntime), verify,
benchmark. Pruning, distillation, QAT and INC change or retrain the PyTorch model's weights, so
asking for them with an ONNX input is a one-line error (exit 2) naming the setting."""

from __future__ import annotations

from typing import Any

from edgecompress.config.enums import QuantBackend, QuantMode, Stage

TORCH_SECTIONS = ("prune", "distill", "qat")  # every key of these needs the PyTorch model ...
OFF = {("prune", "ratio"): 0, ("prune", "drop_blocks"): 0, ("distill", "epochs"): 0}  # ... but these values


def is_onnx_model(name: str | None) -> bool:
    return name is not None and name.lower().endswith(".onnx")


def refusal(name: str, setting: str) -> str:
    """The one line that says ``setting`` cannot apply to the ONNX file ``name``."""
    flag = setting.split(" ")[0]
    if flag == "--weights":
        return (f"{setting}: {name} is an ONNX file, which carries its own weights; drop --weights (it loads a "
                "PyTorch state_dict into a zoo model or a factory's)")
    return (f"{setting} needs the PyTorch model (pruning, distillation, QAT and INC work on its weights); {name} is "
            "an ONNX file, which gets INT8 (--quant ptq or dynamic), verification and benchmark: drop "
            f"{flag}, or pass the PyTorch model (zoo name or file.py:factory)")


def pytorch_only_setting(cfg: Any) -> str | None:
    """The first setting of ``cfg`` (a RunConfig, which imports this module), as its flag, that an ONNX
    input cannot honour; None if there is none."""
    p, q = cfg.prune, cfg.quant
    found = [
        (f"--prune-ratio {p.ratio}", p.ratio is not None and p.ratio > 0),
        (f"--target-params {p.target_params}", p.target_params is not None),
        (f"--target-latency-ms {p.target_latency_ms}", p.target_latency_ms is not None),
        (f"--drop-blocks {p.drop_blocks}", p.drop_blocks > 0),
        ("--quant qat", q.mode == QuantMode.QAT),
        (f"--quant-backend {QuantBackend.INC}", q.backend == QuantBackend.INC),
        (f"--weights {cfg.model.weights}", cfg.model.weights is not None),
        (f"--stages {','.join(cfg.stages or ())}",
         any(s in (Stage.PRUNE, Stage.DISTILL, Stage.QAT) for s in cfg.stages or ())),
        ("--resume", cfg.resume),
    ]  # fmt: skip
    return next((flag for flag, on in found if on), None)


def explicit_pytorch_only(explicit: dict[str, Any]) -> tuple[str, str] | None:
    """(section, key) of the first setting of the PyTorch-only sections that ``explicit`` (what the
    flags and the recipe set, before defaults) holds, unless it is one that turns its stage off."""
    for section in TORCH_SECTIONS:
        for key, value in (explicit.get(section) or {}).items():
            if (section, key) not in OFF or value != OFF[(section, key)]:
                return section, key
    return None
