"""Command line: one module per command (``export``, ``bench``, ``predict``, ``report``,
``models``, ``sensitivity``), each with ``add_arguments(parser)`` and ``run(args) -> exit code``.
Only the command being run is imported, so ``bench`` and ``predict`` load the torch-free runtime
layer alone. Errors become exit codes here: 0 ok, 1 a verification gate failed, 2 bad input
(one line), 3 a bug in edgecompress."""

from __future__ import annotations

import importlib
import os
import sys

from edgecompress.cli.common import Parser
from edgecompress.errors import EdgeCompressError, one_line

# command -> (module, one-line help); the module is imported only when its command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("export", "prune, distill, quantize, export, verify and benchmark a model"),
    "models": ("models", "list the model zoo"),
    "bench": ("bench", "latency and size of any ONNX file with onnxruntime"),
    "predict": ("predict", "top-k classes of an ONNX classifier for an .npz or image files"),
    "sensitivity": ("sensitivity", "per-layer pruning sensitivity: table + PNG plot"),
    "report": ("report", "regenerate report.md and report.png from a run's manifest.json"),
}


def _command_module(cmd: str):
    return importlib.import_module(f"edgecompress.cli.{COMMANDS[cmd][0]}")


def build_parser(only: str | None = None) -> Parser:
    """The parser; with ``only``, just that command's arguments are built (and its module loaded)."""
    p = Parser(prog="edgecompress", description="Prune, distill and quantize a PyTorch CNN into a "
               "smaller, faster INT8 ONNX model, and prove it.")
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)
    for cmd, (_, help_) in COMMANDS.items():
        if only is None or cmd == only:
            _command_module(cmd).add_arguments(sub, cmd, help_)
        else:
            sub.add_parser(cmd, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(cmd if cmd in COMMANDS else None).parse_args(argv)
        if args.cmd is None:
            build_parser().print_help()
            return 2
        return _command_module(args.cmd).run(args)
    except EdgeCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was delivered (partial output was removed)", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower --max-train or the batch size", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ... during the run
        print(f"error: {e.strerror or e} ({getattr(e, 'filename', '') or 'I/O'}); free space or choose "
              "another --out", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in edgecompress or a library: one line, traceback on request
        if os.environ.get("EDGECOMPRESS_DEBUG"):
            raise
        first = one_line(e, 300) if str(e).strip() else ""
        print(f"error: internal error {type(e).__name__}: {first} (set EDGECOMPRESS_DEBUG=1 for the "
              "traceback and report it)", file=sys.stderr)
        return 3
