"""Where the run measures latency: this machine, or with ``--bench-on DEST`` the device the model
will run on, over ssh (:class:`edgecompress.runtime.remote.Device`). The device is reached and
checked (python, numpy, onnx, onnxruntime) before the model is loaded, so a wrong destination
costs seconds, and its temporary directory is removed however the run ends. With ``--target
auto`` the INT8 settings are those of the device's CPU class, not the build host's."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

from edgecompress.config import RunConfig
from edgecompress.quantize.target import detect_target
from edgecompress.runtime.meter import LOCAL, Meter
from edgecompress.runtime.remote import Device


@contextlib.contextmanager
def run_meter(cfg: RunConfig, log: Callable[[str], None]) -> Iterator[tuple[RunConfig, Meter]]:
    """(the run's config, with ``--target auto`` resolved to the device's class; the meter)."""
    b = cfg.bench
    if b.on is None:
        yield cfg, LOCAL
        return
    log(f"measuring latency on {b.on} over ssh (the build host's figures beside)")
    with Device(b.on, python=b.on_python, ssh_config=b.ssh_config, flags=("--bench-on", "--bench-on-python")) as dev:
        info = dev.info
        log(f"device: {info['key']} (python {info['python']}, onnxruntime {info['onnxruntime']})")
        if cfg.quant.target == "auto":
            cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, target=detect_target(info["cpu"])))
        yield cfg, dev
