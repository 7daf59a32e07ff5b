"""What the command modules share: the parser that turns argparse errors into one-line exit-2
errors, and the argument types."""

from __future__ import annotations

import argparse

from edgecompress.errors import ConfigError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, exit 2, like every other bad input
        raise ConfigError(f"{message} (see {self.prog} --help)")


def shape(s: str) -> list[int]:
    try:
        return [int(v) for v in s.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not N,C,H,W (e.g. 1,1,28,28)") from None


def ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None


def floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None


def names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]
