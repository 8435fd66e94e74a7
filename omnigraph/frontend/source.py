"""Where each piece of a spec came from: a map from document paths to source spans.

Every frontend (YAML, DSL, Python builder) produces the same raw document (plain
dicts, lists and scalars) plus a ``SourceMap``; validation errors carry a path
into that document and the map turns it into ``file:line:col``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omnigraph.errors import Span, SpecError

DocPath = tuple[str | int, ...]


@dataclass
class SourceMap:
    file: str
    text: str | None = None
    spans: dict[DocPath, Span] = field(default_factory=dict)
    key_spans: dict[DocPath, Span] = field(default_factory=dict)

    def add(self, path: DocPath, span: Span, *, key: Span | None = None) -> None:
        self.spans[path] = span
        if key is not None:
            self.key_spans[path] = key

    def locate(self, path: DocPath, *, key: bool = False) -> Span | None:
        """Span of ``path``, or of its nearest located ancestor."""
        path = tuple(path)
        while True:
            if key and path in self.key_spans:
                return self.key_spans[path]
            if path in self.spans:
                return self.spans[path]
            if not path:
                return None
            path = path[:-1]

    def error(
        self, message: str, path: DocPath, *, key: bool = False, hint: str | None = None
    ) -> SpecError:
        span = self.locate(path, key=key) or Span(self.file, 1, 1)
        return SpecError(message, span, source=self.text, hint=hint)
