"""Progress of long loops: a tqdm bar with items/s, and one log line with the estimated time left
after the first steps (so a log file, not only a terminal, says how long the run will take)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress(total: int, desc: str, disable: bool = False):
    from tqdm import tqdm

    # Off a terminal (CI, logs) a bar redraw is a new line: update rarely there.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.2 if tty else 30.0, disable=disable)


def estimator(desc: str, log: Callable[[str], None] | None, warm: int, bar=None) -> Callable[[int, int], None]:
    """After ``warm`` steps: one log line with steps/s and the estimated time left (the bar shows it
    live); the bar is cleared around the line so they do not share a line."""
    t0 = time.perf_counter()

    def eta(done: int, left: int) -> None:
        if log is not None and done == warm:
            rate = done / max(1e-9, time.perf_counter() - t0)
            secs = left / rate
            when = f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"
            if bar is not None:
                bar.clear()
            log(f"{desc}: {rate:.2f} steps/s over the first {done} steps; about {when} for the remaining {left}")
            if bar is not None:
                bar.refresh()

    return eta
