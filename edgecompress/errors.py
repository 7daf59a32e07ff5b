"""One exception family. The CLI maps BadInput to exit code 2 and GateFailed to exit code 1,
printing the message as one line; nothing else should reach the user as a traceback."""

from __future__ import annotations


class EdgeCompressError(Exception):
    exit_code = 2

    def __str__(self) -> str:  # the CLI prints one line: fold any newline from a wrapped library error
        return " ".join(super().__str__().split())


class BadInput(EdgeCompressError):
    """The user's input (model, weights, data, options, paths) cannot be used as given."""

    exit_code = 2


class ConfigError(BadInput):
    """A configuration value, recipe key or flag is invalid."""


class GateFailed(EdgeCompressError):
    """A verification gate (parity, INT8 agreement, accuracy drop) failed."""

    exit_code = 1


def one_line(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type name when it has none), for the
    one-line errors the CLI prints."""
    s = str(e).strip()
    return s.splitlines()[0][:limit] if s else type(e).__name__
