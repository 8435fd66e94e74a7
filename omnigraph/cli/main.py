"""The dispatcher: one parser, each command registered by its module (COMMANDS), and the one
place user errors become two lines and exit 2 (internal errors exit 3)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from omnigraph import __version__
from omnigraph.cli.common import EXIT_INTERNAL, EXIT_USER_ERROR, console
from omnigraph.errors import OmnigraphError

COMMANDS = ("check", "compile", "plan", "run", "serve", "bench", "inspect", "simulate", "cache", "convert")  # modules of omnigraph.cli


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="omnigraph", description="Declarative graph compiler for any-to-any multimodal pipelines.")
    parser.add_argument("--version", action="version", version=f"omnigraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"omnigraph.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `omnigraph plan --json | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
        return 0
    except OmnigraphError as exc:
        console(stderr=True).print(exc.render(), markup=False, emoji=False)  # shown verbatim
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in omnigraph, not the user's input
        if os.environ.get("OMNIGRAPH_DEBUG"):
            raise
        console(stderr=True).print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in omnigraph; rerun with OMNIGRAPH_DEBUG=1 for a traceback", markup=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
