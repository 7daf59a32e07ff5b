"""All-or-nothing run directories.

A run writes into a hidden staging directory beside ``--out`` and renames it onto ``--out``
only at the end, after ``manifest.json`` (with ``status``) is written. A run killed at any
point leaves only ``.<name>.partial-*``; a previous good run in ``--out`` stays untouched
until the new one is complete, and is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edgecompress.errors import BadInput
from edgecompress.pipeline.context import RunResult

MARKER = "manifest.json"


def resolve_out(out: str | None, overwrite: bool) -> Path:
    if out is None:
        base = Path("edgecompress-out")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        p, i = base / stamp, 1
        while p.exists():
            i += 1
            p = base / f"{stamp}-{i}"
    else:
        p = Path(out)
    if p.exists() and not p.is_dir():
        raise BadInput(f"--out {p}: is a file; pass a directory path")
    if p.is_dir() and any(p.iterdir()):
        if not (p / MARKER).exists():  # never delete a directory edgecompress did not make
            raise BadInput(f"--out {p}: is not empty and holds no edgecompress run (no {MARKER}); "
                           "choose a new or empty directory")
        if not overwrite:
            raise BadInput(f"--out {p}: holds a previous run; pass --overwrite to replace it, or choose "
                           "another --out")
    parent = p.resolve().parent
    blocker = next((a for a in (parent, *parent.parents) if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise BadInput(f"--out {p}: {blocker} is a file, not a directory; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {p}: cannot create {parent} ({e.strerror}); choose a writable location") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--out {p}: {parent} is not writable; choose a writable location")
    return p


def staging_dir(out: Path) -> Path:
    if Path("/proc/self").exists():
        clean_stale(out)
    d = out.resolve().parent / f".{out.resolve().name}.partial-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    try:
        d.mkdir(parents=True)
    except OSError as e:
        raise BadInput(f"--out {out}: cannot create directories in {d.parent} ({e.strerror}); choose a "
                       "writable location") from None
    return d


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def finalize(staging: Path, out: Path) -> None:
    """Moves the finished staging directory onto ``out``. Replacing a previous run is one atomic
    swap where the OS allows it, so there is no moment at which ``out`` is missing or mixed."""
    out = out.resolve()
    if out.exists():
        if _exchange(staging, out):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous run
            return
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(staging, out)


def clean_stale(out: Path) -> list[Path]:
    """Removes staging dirs beside ``out`` left by runs that were killed (their pid is gone)."""
    removed = []
    parent = out.resolve().parent
    for d in parent.glob(f".{out.resolve().name}.partial-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def deliver(out: Path, work: Callable[[Path], RunResult], *, log: Callable[[str], None], t_start: float) -> RunResult:
    """Runs ``work`` in a staging directory and moves it onto ``out`` when ``work`` returns; removes
    it when ``work`` raises (or is interrupted), so ``out`` only ever holds a complete run."""
    stage_dir = staging_dir(out)
    try:
        result = work(stage_dir)
        finalize(stage_dir, out)
    except BaseException:
        discard(stage_dir)
        raise
    result.out_dir = out
    log(f"{result.manifest['status']}: wrote {out}/ (manifest.json, report.md) in {time.time() - t_start:.0f} s")
    return result
