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

COMMANDS = ("check", "compile", "plan", "run", "serve", "bench", "inspect", "simulate", "cache", "convert",
            "completion")  # modules of omnigraph.cli


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="omnigraph", description="Declarative graph compiler for any-to-any multimodal pipelines.")
    parser.add_argument("--version", action="version", version=f"omnigraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"omnigraph.cli.{name}").register(sub)
    for command in sub.choices.values():  # every command: how much it says besides its output
        loud = command.add_mutually_exclusive_group()
        loud.add_argument("-q", "--quiet", action="store_true", help="no progress or notes (errors still)")
        loud.add_argument("-v", "--verbose", action="count", default=0,
                          help="log what it does (-vv: debug logs of the libraries too)")
    return parser


def _configure_output(args: argparse.Namespace) -> None:
    """-q / -v: the console's quiet mode and the log levels (logs go to stderr)."""
    import logging

    from omnigraph.cli import common

    common.QUIET = bool(getattr(args, "quiet", False))
    verbose = getattr(args, "verbose", 0)
    if common.QUIET:
        os.environ["OMNIGRAPH_QUIET"] = "1"  # library progress bars too (GGUF dequantisation)
    else:  # a command run in the same process after a quiet one speaks again
        os.environ.pop("OMNIGRAPH_QUIET", None)
    level = logging.ERROR if common.QUIET else logging.WARNING if verbose == 0 else logging.INFO
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("omnigraph").setLevel(logging.DEBUG if verbose >= 2 else level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    _configure_output(args)
    try:
        return func(args)
    except BrokenPipeError:  # `omnigraph plan --json | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
        return 0
    except OmnigraphError as exc:
        console(stderr=True, always=True).print(exc.render(), markup=False, emoji=False)  # shown verbatim
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in omnigraph, not the user's input
        if os.environ.get("OMNIGRAPH_DEBUG"):
            raise
        console(stderr=True, always=True).print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in omnigraph; rerun with OMNIGRAPH_DEBUG=1 for a traceback", markup=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
