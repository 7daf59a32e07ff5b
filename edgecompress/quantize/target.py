"""Which INT8 settings suit the CPU the model will run on (no torch, no numpy).

onnxruntime's CPU int8 GEMM/conv kernels (MLAS) differ by instruction set, and so does the
safe choice of quantization settings:

* **x86-64 with AVX2 / AVX-512 but without VNNI** ("x86-avx2"): for U8S8 (uint8 activations,
  int8 weights) onnxruntime uses ``VPMADDUBSW``, which adds two u8*s8 products into a 16-bit
  integer and *saturates* when the sum does not fit. onnxruntime's quantization guide
  ("Data type selection" -> "When and why do I need to try U8U8?") says that if this causes
  an accuracy drop, use ``reduce_range`` or U8U8; the ``quantize_static`` / ``quantize_dynamic``
  docstrings describe ``reduce_range`` as "quantize weights with 7-bits. It may improve the
  accuracy for some models running on non-VNNI machine". With 7-bit weights (|w_q| <= 64) the
  pair sum is at most 2 * 255 * 64 = 32640 < 32767, so it cannot saturate. S8S8 is no way out
  on x86: onnxruntime's QDQ fusion accepts int8 *activations* only in ARM builds
  (``QDQIsInt8Allowed()`` in onnxruntime/core/optimizer/qdq_transformer/selectors_actions/
  qdq_selector_action_transformer.h), so on x86 many S8S8 convolutions stay float (measured:
  12 of resnet20's 21 convs). We therefore use U8S8 with ``reduce_range=True``.
* **x86-64 with VNNI / AMX** ("x86-vnni"; ``avx512_vnni``, ``avx_vnni`` or ``amx_int8``):
  ``VPDPBUSD`` accumulates straight into 32 bits, no saturation ("There is no such issue on
  other CPU architectures (x64 with VNNI and ARM)"), so full 8-bit U8S8, no reduce_range.
* **arm64**: no saturation issue either (same sentence); MLAS has S8S8 kernels using the
  ``sdot`` dot-product instructions, and the guide calls S8S8 with QDQ "the default setting
  [that] balances performance and accuracy. It should be the first choice." -> S8S8. (Built on
  x86, such a file is only partly fused there, so latency measured on x86 says nothing about it.)
* **generic** (unknown CPU, x86 without AVX2 — SSE4.1 kernels also use the saturating
  instruction — or anything else): the settings that are safe everywhere, i.e. x86-avx2's.

References: https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
(section "Data type selection"); onnxruntime PR #12088 "x86/64 U8S8 Gemm Precision Fix"
(SSE4.1/AVX2/AVX-512 without VNNI overflow in u8s8 matrix multiplication).
"""

from __future__ import annotations

from typing import Any

from edgecompress.runtime.cpu import cpu_info

TARGETS = ("x86-vnni", "x86-avx2", "arm64", "generic")
_X86 = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_ARM64 = {"aarch64", "arm64", "armv8", "armv8l", "armv9"}
_VNNI = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")

_SETTINGS: dict[str, dict[str, Any]] = {
    "x86-vnni": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False},
    "x86-avx2": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
    "arm64": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False},
    "generic": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
}
_WHY = {
    "x86-vnni": "VNNI/AMX int8 dot products accumulate in 32 bits: full-range U8S8",
    "x86-avx2": "U8S8 on AVX2/AVX-512 without VNNI can saturate (VPMADDUBSW): 7-bit weights (reduce_range)",
    "arm64": "ARM dot-product kernels do not saturate; S8S8 QDQ is onnxruntime's recommended default",
    "generic": "unknown CPU class: 7-bit weights (reduce_range), which cannot saturate on any kernel",
}


def _flags(cpu_info: dict[str, Any]) -> set[str]:
    isa = cpu_info.get("isa") or {}
    if isinstance(isa, dict):
        flags = {k.lower() for k, v in isa.items() if v}
    else:
        flags = {str(f).lower() for f in isa}
    extra = cpu_info.get("flags") or ()
    flags |= {str(f).lower() for f in (extra.split() if isinstance(extra, str) else extra)}
    return flags


def detect_target(cpu_info: dict[str, Any]) -> str:
    """CPU class of ``cpu_info`` (the dict of :func:`edgecompress.runtime.cpu.cpu_info`: ``machine``
    and an ``isa`` mapping flag -> bool, or a ``flags`` list) -> one of :data:`TARGETS`."""
    machine = str(cpu_info.get("machine") or "").lower()
    flags = _flags(cpu_info)
    if machine in _ARM64 or (not machine and flags & {"asimd", "asimddp", "i8mm"}):
        return "arm64"
    if machine in _X86 or (not machine and "avx2" in flags):
        if any(f in flags for f in _VNNI):
            return "x86-vnni"
        if "avx2" in flags:
            return "x86-avx2"
    return "generic"


def settings_for(target: str) -> dict[str, Any]:
    """QuantConfig overrides (activation_type, weight_type, reduce_range) for ``target``."""
    if target not in _SETTINGS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return dict(_SETTINGS[target])


def why(target: str) -> str:
    return _WHY[target]


def build_machine_target() -> str:
    return detect_target(cpu_info())
