"""Printing and parsing omni modules: custom form, generic form (for mlir-opt)."""
from __future__ import annotations

import re
from io import StringIO

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.mlir_lexer import MLIRLexer

from omnigraph.dialect import OMNI

# xDSL's string-literal regex nests quantifiers (`(?:[^"…]+|…)*`), so an unterminated string
# makes it backtrack exponentially: `omnigraph check` hung on a typo. The same language, one
# character per step, fails in linear time.
MLIRLexer._unescaped_characters_regex = re.compile(r'"(?:[^"\\\n\v\f]|\\(?:["nt\\]|[0-9A-Fa-f]{2}))*"')


def make_context() -> Context:
    ctx = Context()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(OMNI)
    return ctx


def print_module(module: ModuleOp, *, generic: bool = False) -> str:
    out = StringIO()
    Printer(stream=out, print_generic_format=generic).print_op(module)
    return out.getvalue().rstrip("\n") + "\n"


MAX_IR_NESTING = 64  # brackets deep; real omni modules stay under 15
_OPEN, _CLOSE = "([{<", ")]}>"


def too_deep(text: str) -> tuple[int, int] | None:
    """(line, col) where brackets nest deeper than MAX_IR_NESTING (xDSL's parser recurses and
    would exhaust the stack), else None. Strings and `//` comments are skipped; `->` is an
    arrow, not a closing bracket."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # a string literal: skip to its unescaped end (or the end of the line)
            i += 1
            while i < n and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif c == "/" and text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                break
        elif c in _OPEN:
            depth += 1
            if depth > MAX_IR_NESTING:
                return text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)
        elif c in _CLOSE and not (c == ">" and i and text[i - 1] == "-"):
            depth = max(0, depth - 1)
        i += 1
    return None


def parse_module(text: str, name: str = "<ir>") -> ModuleOp:
    """Parse IR text (custom or generic form). Raises xDSL's ParseError on bad text."""
    parser = Parser(make_context(), text, name)
    try:
        return parser.parse_module()
    except VerifyException as exc:  # an attribute refused as it is parsed: say where the parser was
        exc.add_note(f"offset={parser.pos}")
        raise
