"""Errors a user can cause, each with a location, rendered without a traceback.

A location is either a span in a source file (``file:line:col``) or a name in the
graph (stage, port). The CLI prints ``render()`` and exits 2.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in one source file."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class OmnigraphError(Exception):
    """Base class of every error a user's input can cause."""

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        where: str | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.where = where  # a graph location such as "stage 'talker' port 'text'"
        self.source = source  # full text of span.file, for the caret line
        self.hint = hint

    def __str__(self) -> str:
        return self.headline()

    def headline(self) -> str:
        prefix = f"{self.span}: " if self.span else ""
        where = f"{self.where}: " if self.where and self.where not in self.message else ""
        return f"{prefix}error: {where}{self.message}"

    def render(self) -> str:
        """Headline, then the offending line with a caret under the column."""
        lines = [self.headline()]
        if self.span is not None and self.source is not None:
            src_lines = self.source.splitlines()
            if 1 <= self.span.line <= len(src_lines):
                # Tabs and control bytes would shift the caret or reach the terminal raw.
                text = "".join(c if c.isprintable() else " " if c == "\t" else "\ufffd"
                               for c in src_lines[self.span.line - 1])
                if len(text) > 200:  # keep a huge minified line readable
                    start = max(0, self.span.col - 100)
                    text = text[start : start + 200]
                    col = self.span.col - start
                else:
                    col = self.span.col
                lines.append(f"  {text}")
                width = 1
                if self.span.end_line == self.span.line and self.span.end_col:
                    width = max(1, min(self.span.end_col - self.span.col, len(text) - col + 1))
                lines.append("  " + " " * (col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class SpecError(OmnigraphError):
    """A malformed spec: syntax, schema, references, types, structure."""


class IRError(OmnigraphError):
    """Invalid IR: a verifier failed on an op (named by stage or port)."""


class TargetError(OmnigraphError):
    """A malformed or unknown target description."""


class BundleError(OmnigraphError):
    """A bundle that cannot be run as it is: tampered, malformed, unsafe or built for another torch.

    Raised by the runtime (``omnigraph.runtime.bundle``); this module imports nothing, so the
    runtime may use it without depending on the compiler.
    """


class BackendError(OmnigraphError):
    """A backend that cannot start as asked: Ray missing, a cluster that cannot be reached or
    cannot place the plan's devices. Raised by the runtime (this module imports nothing)."""
