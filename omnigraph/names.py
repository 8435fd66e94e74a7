"""What a name in a pipeline may be: letters, digits and `_`, not starting with a digit.

Names become IR symbols, plan keys and file names (outputs are written as NAME.wav), so
the rule is applied whole-string (`fullmatch`; `$` would let a trailing newline through)
by every frontend, the verifier and the runtime plan's schema. Imports nothing, so the
runtime shares it.
"""
from __future__ import annotations

import re

# For pydantic `pattern=` (its Rust engine anchors `$` at the very end of the text).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
REF_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME = 200  # characters; longer ones are not names a person wrote


def is_name(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_NAME and _NAME.fullmatch(text) is not None


def shown(name: str) -> str:
    """A name as an error may print it: escaped when it is not a plain one (a newline, a bidi
    control would reach the terminal raw), and cut short."""
    if is_name(name):
        return name
    text = name[:60].encode("unicode_escape").decode("ascii")
    return text + ("..." if len(name) > 60 else "")
