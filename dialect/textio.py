"""Printing and parsing omni modules: custom form, generic form (for mlir-opt)."""
from __future__ import annotations

import re
from io import StringIO

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer
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


def parse_module(text: str, name: str = "<ir>") -> ModuleOp:
    """Parse IR text (custom or generic form). Raises xDSL's ParseError on bad text."""
    module = Parser(make_context(), text, name).parse_module()
    return module
