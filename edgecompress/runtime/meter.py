"""Where a latency is measured: here (:data:`LOCAL`) or on a device over ssh
(:class:`edgecompress.runtime.remote.Device`). Both have the same methods, with the signatures of
the local functions, so a pass that measures (the latency-aware INT8 choices, the latency probe of
``--target-latency-ms``, the run's benchmark) takes a meter and runs unchanged on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from edgecompress.runtime.device import device_info
from edgecompress.runtime.kernels import layer_times
from edgecompress.runtime.latency import Latency, measure_latency, round_robin_p50


class Meter(Protocol):
    dest: str  # "local", or the ssh destination

    @property
    def info(self) -> dict[str, Any]: ...  # device_info(): key (host name / CPU), cpu, python, onnxruntime

    def measure_latency(self, path: Path | str, **kw: Any) -> Latency: ...

    def round_robin_p50(self, paths: list[Path], **kw: Any) -> list[float]: ...

    def layer_times(self, path: Path, keys: dict[str, str], **kw: Any) -> dict[str, float]: ...


class LocalMeter:
    """This machine."""

    dest = "local"
    _info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = device_info() | {"dest": self.dest}
        return self._info

    def measure_latency(self, path: Path | str, **kw: Any) -> Latency:
        return measure_latency(path, **kw)

    def round_robin_p50(self, paths: list[Path], **kw: Any) -> list[float]:
        return round_robin_p50(list(paths), **kw)

    def layer_times(self, path: Path, keys: dict[str, str], **kw: Any) -> dict[str, float]:
        return layer_times(path, keys, **kw)


LOCAL = LocalMeter()


def is_local(meter: Meter) -> bool:
    return meter.dest == "local"
