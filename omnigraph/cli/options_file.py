"""`--config FILE`: a command's options from YAML, under the flags given on the command line
(CLI > file > defaults, as vLLM's --config does). Keys are the long flags (`max-queue` or
`max_queue`); `set` holds per-stage settings and `input` a list of NAME=VALUE."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigraph.errors import OmnigraphError

PASSED_THROUGH = ("set", "input")  # merged by the command, not plain options
_NOT_FROM_FILES = ("help", "config", "settings", "input")  # the file itself, and what PASSED_THROUGH merges


def option_defaults(parser: Any) -> dict[str, Any]:
    """The options a file may set and their defaults, read off the command's own parser (so
    the two never drift apart): every flag's destination but those above."""
    return {a.dest: a.default for a in parser._actions  # noqa: SLF001 - argparse lists no public view
            if a.option_strings and a.dest not in _NOT_FROM_FILES}


def apply_options_file(args: Any, path: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Fill the options still at their defaults from `path`; returns the file's `set`/`input`."""
    if path is None:
        return {}
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise OmnigraphError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise OmnigraphError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise OmnigraphError(f"--config {path}: expected a mapping of options")
    passed: dict[str, Any] = {}
    for raw, value in doc.items():
        key = str(raw).replace("-", "_")
        if key in PASSED_THROUGH:
            passed[key] = value
            continue
        if key not in defaults:
            raise OmnigraphError(f"--config {path}: unknown option '{raw}'",
                                 hint="options: " + ", ".join(sorted(k.replace("_", "-") for k in defaults)))
        if getattr(args, key) == defaults[key]:  # not given on the command line
            setattr(args, key, value)
    if "input" in passed and not (isinstance(passed["input"], list) and all(isinstance(i, str) for i in passed["input"])):
        raise OmnigraphError(f"--config {path}: input: expected a list of NAME=VALUE")
    return passed
