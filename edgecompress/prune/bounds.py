"""Time and memory bounds on a pruning step, so a model Torch-Pruning cannot handle ends with a
one-line error instead of a hang or the kernel's OOM kill.

Torch-Pruning runs in-process (tracing the model into a dependency graph, then removing channels
group by group): a graph it cannot simplify can take tens of CPU-minutes or tens of GB. A watchdog
thread checks the elapsed time and the process's resident memory (``/proc/self/status``) every
``POLL`` seconds; past a bound it signals the main thread, whose handler raises there, so the step
stops between two Python operations and the error names what was running (graph construction,
channel removal, ...). A single long C call (one huge convolution) finishes before the signal is
handled. Outside the main thread (no signal handler can be set there) the step runs unbounded.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edgecompress.errors import BadInput

POLL = 0.05  # seconds between two checks of the watchdog
SIGNUM = signal.SIGUSR1
# innermost function names of the interrupted stack -> what was running
PHASES = (
    (("build_dependency", "_trace", "_build_dependency"), "building the dependency graph (Torch-Pruning)"),
    (("drop_blocks",), "choosing the blocks to drop (--drop-blocks)"),
    (("count_macs_params",), "counting MACs"),
    (("step", "_prune", "prune_local", "prune_global"), "removing channels (Torch-Pruning)"),
    (("prune_by_sensitivity",), "the sensitivity allocation search"),
)


class _Tripped(BaseException):
    """Raised in the main thread by the watchdog's signal (a BaseException: no library's
    ``except Exception`` may swallow it)."""


def memory_limit() -> int:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    try:
        cg = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cg.isdigit():
            total = min(total, int(cg)) if total else int(cg)
    except OSError:
        pass
    return total


def rss() -> int:
    """Resident memory of this process in bytes (0 where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def phase(frame: FrameType | None) -> str:
    """What the interrupted main thread was doing, from its innermost matching frame."""
    while frame is not None:
        fn = frame.f_code.co_name
        for names, what in PHASES:
            if fn in names:
                return what
        frame = frame.f_back
    return "pruning"


def _watch(stop: threading.Event, state: dict, seconds: float, max_bytes: int, main: int) -> None:
    t0 = time.monotonic()
    while not stop.wait(POLL):
        used = rss() if max_bytes else 0
        if state["why"] is None:
            if seconds and time.monotonic() - t0 > seconds:
                state["why"] = f"took more than {seconds:g} s"
            elif max_bytes and used > max_bytes:
                state["why"] = f"grew to {used / 2**30:.2f} GB of memory (bound {max_bytes / 2**30:.2f} GB)"
            else:
                continue
        # again at every poll until the block has ended: a library's bare ``except:`` may swallow one
        # (Torch-Pruning's tracer catches everything and runs the forward a second time)
        signal.pthread_kill(main, SIGNUM)


class bounded:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with bounded(label, seconds=..., memory_fraction=..., way_out=...):`` runs the block with at
    most ``seconds`` of wall time and ``memory_fraction`` of the RAM (:func:`memory_limit`) as resident
    memory (0 = no bound); past either, ``BadInput``: "<label> <took more than ...> while <phase>;
    <way_out>". A class rather than a generator: the signal is never acted on inside this module's
    own frames, so the clean-up cannot be interrupted."""

    def __init__(self, label: str, *, seconds: float, memory_fraction: float, way_out: str) -> None:
        self.label, self.seconds, self.way_out = label, seconds, way_out
        self.max_bytes = int(memory_fraction * memory_limit()) if memory_fraction else 0
        self.state: dict = {"active": False, "why": None, "where": "pruning"}
        self.watcher: threading.Thread | None = None

    def _handler(self, _signum: int, frame: FrameType | None) -> None:
        if self.state["active"] and self.state["why"] and (frame is None or frame.f_code.co_filename != __file__):
            self.state["where"] = phase(frame)
            raise _Tripped()

    def __enter__(self) -> bounded:
        if threading.current_thread() is not threading.main_thread() or not (self.seconds or self.max_bytes):
            return self
        self.previous = signal.signal(SIGNUM, self._handler)
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=_watch, name="edgecompress-prune-bound", daemon=True,
                                        args=(self.stop, self.state, self.seconds, self.max_bytes,
                                              threading.get_ident()))
        self.state["active"] = True
        self.watcher.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.watcher is None:
            return False
        self.state["active"] = False
        self.stop.set()
        self.watcher.join()
        signal.signal(SIGNUM, self.previous)
        if exc_type is not None and self.state["why"]:  # whatever a library made of the interruption
            raise BadInput(f"{self.label} {self.state['why']} while {self.state['where']}; {self.way_out}") from None
        return False
