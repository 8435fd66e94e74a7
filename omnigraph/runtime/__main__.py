"""`python -m omnigraph.runtime BUNDLE --input NAME=VALUE … [--output-dir DIR]`: run a compiled
bundle (a directory or a .ogb file) with the runtime alone; nothing of the compiler is imported.
Errors print as `omnigraph run` prints them: one or two lines, exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from omnigraph.errors import OmnigraphError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omnigraph.runtime",
                                     description="Run a compiled omnigraph bundle without the compiler.")
    parser.add_argument("bundle", help="a bundle directory or .ogb file (omnigraph compile SPEC --emit bundle)")
    parser.add_argument("--input", "-i", action="append", metavar="NAME=VALUE",
                        help="an input; NAME=@FILE reads a file (repeat for each input)")
    parser.add_argument("--output-dir", "-o", help="write each output here (WAV, PNG, TXT)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.add_argument("--stats", action="store_true", help="print a per-stage timing table")
    parser.add_argument("--timeout", type=float, help="fail the request after this many seconds")
    parser.add_argument("--trust-code", action="store_true", help="let the bundle run the Python code it carries")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        from omnigraph.runtime.run_once import run_plan
        from omnigraph.runtime.bundle import open_bundle

        with open_bundle(args.bundle) as bundle:
            return run_plan(bundle.runnable_plan(args.trust_code), args.input or [], output_dir=args.output_dir,
                            as_json=args.json, stats=args.stats, timeout=args.timeout)
    except OmnigraphError as exc:
        err.print(exc.render(), markup=False, emoji=False)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in omnigraph, not in the bundle or the inputs
        if os.environ.get("OMNIGRAPH_DEBUG"):
            raise
        err.print(f"internal error: {type(exc).__name__}: {exc}\n"
                  "  this is a bug in omnigraph; rerun with OMNIGRAPH_DEBUG=1 for a traceback", markup=False)
        return 3


if __name__ == "__main__":
    sys.exit(main())
