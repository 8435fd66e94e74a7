"""How a spec's mistakes read: pydantic's errors as located messages, "did you mean", numbers
a person can read."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from omnigraph.errors import SpecError
from omnigraph.frontend.source import DocPath, SourceMap
from omnigraph.spec import LoopSpec, PipelineSpec, StageSpec


def _doc_path(raw: Any, loc: tuple[Any, ...]) -> tuple[DocPath, int]:
    """The part of a pydantic loc that exists in the document (union tags dropped)."""
    path: list[str | int] = []
    node = raw
    skipped = 0
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        else:
            skipped += 1
    return tuple(path), skipped


def schema_error(exc: ValidationError, raw: Any, srcmap: SourceMap) -> SpecError:
    ranked = []
    for err in exc.errors():
        path, skipped = _doc_path(raw, tuple(err["loc"]))
        ranked.append((-len(path), skipped, err, path))
    ranked.sort(key=lambda r: (r[0], r[1]))
    _, _, err, path = ranked[0]
    loc = tuple(err["loc"])
    field = str(loc[-1]) if loc else ""
    kind = err["type"]
    if kind == "missing":
        return srcmap.error(f"missing required field '{field}'", path, key=True)
    if kind == "extra_forbidden":
        return srcmap.error(f"unknown field '{field}'", path, key=True, hint=_fields_hint(path))
    what = ".".join(str(p) for p in path) or "spec"
    msg = err["msg"]
    if kind == "string_pattern_mismatch":
        msg = "expected a name (letters, digits, _) or a reference `stage.port`"
    return srcmap.error(f"{what}: {msg}", path)


def _fields_hint(path: DocPath) -> str | None:
    parent = path[:-1]
    models = {0: PipelineSpec, 2: StageSpec}
    if parent and parent[0] == "loops" and len(parent) == 2:
        return "loop fields: " + ", ".join(LoopSpec.model_fields)
    model = models.get(len(parent)) if (not parent or parent[0] == "stages") else None
    if model is None:
        return None
    return "allowed: " + ", ".join(f.alias or n for n, f in model.model_fields.items())


def brief_int(value: int) -> str:
    """An integer as a person can read it (and Python can print: it refuses > 4300 digits)."""
    digits = value.bit_length() * 30103 // 100000 + 1
    return str(value) if digits < 30 else f"a {digits}-digit integer"


def suggest(word: str, choices: Any) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{match[0]}'?" if match else None
