"""What every command shares: consoles, writing an output, the exit codes."""
from __future__ import annotations

import contextlib
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from rich.console import Console

from omnigraph.errors import OmnigraphError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


QUIET = False  # -q: progress, notes and tables on stderr are not shown (errors always are)
WIDE = 200  # columns of a table written to a pipe or a file (rich would cut it at 80)


def console(stderr: bool = False, always: bool = False) -> Console:
    """A console for the command's output (stdout) or its progress and notes (stderr: quiet
    under -q, unless `always`, as errors are). Off a terminal, tables keep their full width."""
    out = Console(stderr=stderr, highlight=False, soft_wrap=True, quiet=stderr and QUIET and not always)
    if not out.is_terminal:
        out.width = max(out.width, WIDE)
    return out


def write(text: str, output: str | None) -> None:
    """`text` to stdout, or to the file `output` (its folder made), saying where it went."""
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OmnigraphError(f"cannot write {output}: {exc.strerror}") from None
    console(stderr=True).print(f"[green]wrote[/] {output}")


def working(text: str) -> AbstractContextManager[object]:
    """A spinner with `text` on stderr while long work runs (a terminal only, never under -q:
    a log or a --json pipe gets no progress lines)."""
    err = console(stderr=True)
    if QUIET or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(text)
