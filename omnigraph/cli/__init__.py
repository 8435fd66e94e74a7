"""The `omnigraph` command line, one module per command (see main.py for the dispatcher).

A user's mistake prints `file:line:col: error: …` with the line and a caret, and exits 2;
never a traceback (set OMNIGRAPH_DEBUG=1 to see one for internal errors).
"""
from omnigraph.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
