"""Measurements on another machine over ssh: the device the model will run on.

``Device(dest)`` logs in with the system ``ssh`` and ``scp`` clients (so keys, agents and
``~/.ssh/config`` work as usual; ``dest`` is anything ``ssh`` takes: ``user@host``,
``ssh://user@host:port`` or a Host alias), checks that the device's python has numpy, onnx and
onnxruntime (or names the one install line), makes a temporary directory there and copies this
runtime package into it as a zip (edgecompress/runtime + errors.py: the device needs nothing of
edgecompress installed). Each measurement copies its ONNX files (with their external data) and
runs the same torch-free code as a local one (:mod:`edgecompress.runtime.device`, one process on
the device for all the calls of a Device, fed one JSON job a line over ssh), so the protocol
(warm-up, shuffled rounds, p50/p90, profiles, CPU flags) is the same; the result comes back as
JSON with the device's identity. ``close()`` removes the directory. One ssh connection is shared
by all the copies and calls (ControlMaster), so a measurement costs a round trip, not a log-in.

The methods mirror the local functions (``measure_latency``, ``round_robin_p50``,
``layer_times``), so a pass that takes measurement callables can run them on the device."""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from edgecompress.errors import BadInput
from edgecompress.runtime.device import MARKER
from edgecompress.runtime.latency import Latency
from edgecompress.runtime.session import model_files

_PACKAGE = Path(__file__).resolve().parents[1]  # edgecompress/
NEEDED = ("numpy", "onnx", "onnxruntime")

# run by the device's python before anything is copied: stdlib only, old-python syntax, so that
# a missing module or an old python is named rather than failing on an import
_PREFLIGHT = """import importlib.util, json, sys, tempfile
missing = [m for m in {needed!r} if importlib.util.find_spec(m) is None]
ok = sys.version_info >= (3, 10) and not missing
print(json.dumps({{"python": sys.version.split()[0], "missing": missing,
                  "dir": tempfile.mkdtemp(prefix="edgecompress-device-") if ok else None}}))
"""


def runtime_zip(out: Path) -> Path:
    """The code a device needs, as a zip for PYTHONPATH: edgecompress/__init__.py (which imports
    nothing), errors.py and the runtime package."""
    files = [_PACKAGE / "__init__.py", _PACKAGE / "errors.py", *sorted((_PACKAGE / "runtime").glob("*.py"))]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"edgecompress/{f.relative_to(_PACKAGE).as_posix()}")
    return out


def scp_target(dest: str, path: str) -> str:
    """``scp``'s name for ``path`` on ``dest`` (an ``ssh://`` destination becomes ``scp://``)."""
    if dest.startswith("ssh://"):
        return "scp://" + dest.removeprefix("ssh://").rstrip("/") + "/" + path  # "//abs" = absolute
    return f"{dest}:{path}"


class Device:
    """A device reached over ssh (see the module doc). Use as a context manager, or call
    :meth:`open` and :meth:`close`."""

    def __init__(self, dest: str, *, python: str = "python3", ssh_config: Path | str | None = None,
                 timeout: float = 3600, flags: tuple[str, str] = ("--remote", "--remote-python")) -> None:
        if not dest or dest.startswith("-"):
            raise BadInput(f"{flags[0]} {dest!r}: give an ssh destination (user@host, ssh://user@host:port or a Host alias)")
        self.dest, self.python, self.timeout, self.python_flag = dest, python, timeout, flags[1]
        self.ssh_config = Path(ssh_config) if ssh_config else None
        self.info: dict[str, Any] = {}
        self.dir: str | None = None
        self._local: Path | None = None
        self._uploaded: dict[tuple[str, int, int], str] = {}  # (local path, size, mtime) -> device path
        self._count = 0
        self._proc: subprocess.Popen | None = None  # the device's measurement process (device.serve)
        self._buf = b""

    # --- connection ---------------------------------------------------------------------------

    def _opts(self) -> list[str]:
        assert self._local is not None
        opts = ["-F", str(self.ssh_config)] if self.ssh_config else []
        return [*opts, "-o", "BatchMode=yes", "-o", f"ControlPath={self._local}/cm", "-o", "ControlMaster=auto",
                "-o", "ControlPersist=120"]  # fmt: skip

    def _ssh(self, command: str, *, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(["ssh", *self._opts(), self.dest, command], capture_output=True, text=True,
                               timeout=self.timeout, input=stdin)
        except FileNotFoundError:
            raise BadInput("no ssh client here; install openssh-client (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise BadInput(f"{self.dest}: no answer within {self.timeout:.0f} s over ssh") from None
        if check and r.returncode == 255:
            raise BadInput(f"{self.dest}: ssh failed ({_last_line(r.stderr)}); check that `ssh {self.dest}` logs in "
                           "without a prompt (keys, ~/.ssh/config)")
        return r

    def _scp(self, src: Path, dst: str) -> None:
        r = subprocess.run(["scp", "-q", *self._opts(), str(src), scp_target(self.dest, dst)], capture_output=True,
                           text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BadInput(f"{self.dest}: scp of {src.name} failed ({_last_line(r.stderr)}); check the device's "
                           "free space and that scp works to it")

    def open(self) -> Device:
        self._local = Path(tempfile.mkdtemp(prefix="ec-ssh-"))  # short: a control socket's path is limited
        try:
            self._preflight()
            zip_path = runtime_zip(self._local / "edgecompress-runtime.zip")
            self._scp(zip_path, f"{self.dir}/runtime.zip")
            d, py = shlex.quote(self.dir or ""), shlex.quote(self.python)
            with open(self._local / "device.stderr", "wb") as err:  # the child keeps its own copy
                self._proc = subprocess.Popen(
                    ["ssh", *self._opts(), self.dest, f"cd {d} && exec env PYTHONPATH={d}/runtime.zip {py} -u -m "
                     "edgecompress.runtime.device"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                    bufsize=0)
            self.info = self.call("info", [])["device"] | {"dest": self.dest}
        except BaseException:
            self.close()
            raise
        return self

    def _preflight(self) -> None:
        code = _PREFLIGHT.format(needed=NEEDED)
        r = self._ssh(f"{shlex.quote(self.python)} -c {shlex.quote(code)}")
        try:
            pre = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BadInput(f"{self.dest}: cannot run {self.python} on the device ({_last_line(r.stderr)}); install "
                           f"python3 there or pass {self.python_flag} PATH") from None
        if pre["missing"]:
            raise BadInput(f"{self.dest}: {self.python} on the device lacks {', '.join(pre['missing'])}; install with: "
                           f"{self.python} -m pip install {' '.join(pre['missing'])} (or pass {self.python_flag} PATH)")
        if pre["dir"] is None:
            raise BadInput(f"{self.dest}: {self.python} on the device is Python {pre['python']}; the runtime needs "
                           f">= 3.10 (pass {self.python_flag} PATH)")
        self.dir = pre["dir"]

    def close(self) -> None:
        """Ends the device's measurement process, removes its temporary directory and ends the
        shared ssh connection."""
        if self._local is None:
            return
        try:
            if self._proc is not None:
                try:
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(b'{"call": "exit"}\n')
                    self._proc.stdin.close()
                    self._proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
            if self.dir is not None:
                self._ssh(f"rm -rf {shlex.quote(self.dir)}", check=False)
            subprocess.run(["ssh", *self._opts(), "-O", "exit", self.dest], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        finally:
            shutil.rmtree(self._local, ignore_errors=True)
            self._local, self.dir, self._uploaded, self._proc = None, None, {}, None

    def __enter__(self) -> Device:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ------------------------------------------------------------------------------------

    def _upload(self, paths: list[Path]) -> list[str]:
        """Copies ``paths`` (and their external data) to the device, each into its own directory;
        a file copied for the previous call and unchanged since is not copied again."""
        keys = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        stale = [d for k, d in self._uploaded.items() if k not in keys]
        self._uploaded = {k: d for k, d in self._uploaded.items() if k in keys}
        new = {}
        for k in keys:
            if k not in self._uploaded and k not in new:
                new[k] = f"{self.dir}/f{self._count}"
                self._count += 1
        if stale or new:
            self._request({"call": "dirs", "kwargs": {"remove": stale, "make": list(new.values())}})
        for k, p in zip(keys, paths, strict=True):
            if k in new:
                for f in model_files(p):
                    self._scp(f, f"{new[k]}/{f.relative_to(p.parent).as_posix()}")
                self._uploaded[k] = new[k]
        return [f"{self._uploaded[k]}/{p.name}" for k, p in zip(keys, paths, strict=True)]

    def call(self, name: str, paths: list[Path], **kwargs: Any) -> dict[str, Any]:
        """Runs :data:`edgecompress.runtime.device.CALLS` ``[name]`` on the device with ``paths``
        copied there; returns ``{"result": ..., "device": ...}`` with the device's paths replaced by
        the local ones."""
        if self.dir is None:
            raise RuntimeError("Device.call before open()")
        paths = [Path(p) for p in paths]
        remote = self._upload(paths)
        text = self._request({"call": name, "files": remote, "kwargs": kwargs})
        for rp, p in zip(remote, paths, strict=True):
            text = text.replace(json.dumps(rp)[1:-1], json.dumps(str(p))[1:-1])
        out = json.loads(text)
        if "error" in out:
            raise BadInput(f"on {self.dest}: {out['error']}")
        return out

    def _request(self, job: dict[str, Any]) -> str:
        """Sends ``job`` to the device's process; its answer (a JSON line, text)."""
        assert self._proc is not None and self._proc.stdin is not None and self._local is not None
        try:
            self._proc.stdin.write((json.dumps(job) + "\n").encode())
            self._proc.stdin.flush()
            while True:
                if self._readline() == MARKER:
                    return self._readline()
        except (OSError, EOFError):
            err = (self._local / "device.stderr").read_text(errors="replace")
            raise BadInput(f"{self.dest}: the measurement failed on the device ({_last_line(err)})") from None

    def _readline(self) -> str:
        """One line of the device's process (``EOFError`` when it ended; ``BadInput`` after ``timeout``)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], self.timeout)[0]:
                raise BadInput(f"{self.dest}: no answer from the device within {self.timeout:.0f} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    # --- the local functions' counterparts --------------------------------------------------------

    def bench(self, paths: list[Path], **kw: Any) -> dict[str, Any]:
        """``edgecompress bench``'s protocol (bench_file / compare_files) on the device."""
        return self.call("bench", paths, **kw)["result"]

    def measure_latency(self, path: Path | str, **kw: Any) -> Latency:
        return Latency(**self.call("latency", [Path(path)], **kw)["result"])

    def round_robin_p50(self, paths: list[Path], **kw: Any) -> list[float]:
        return self.call("p50s", list(paths), **kw)["result"]["p50_ms"]

    def layer_times(self, path: Path, keys: dict[str, str], **kw: Any) -> dict[str, float]:
        return self.call("layer_times", [path], keys=keys, **kw)["result"]["ms"]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:240] if lines else "no message"
