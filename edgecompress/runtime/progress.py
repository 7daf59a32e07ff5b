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


def estimator(desc: str, log: Callable[[str], None] | None, warm: int) -> Callable[[int, int], None]:
    """After ``warm`` steps: one log line with steps/s and the estimated time left (the bar shows it live)."""
    t0 = time.perf_counter()

    def eta(done: int, left: int) -> None:
        if log is not None and done == warm:
            rate = done / max(1e-9, time.perf_counter() - t0)
            log(f"{desc}: {rate:.2f} steps/s over the first {done} steps; about {left / rate / 60:.1f} min for "
                f"the remaining {left}")

    return eta
