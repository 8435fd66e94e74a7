"""YAML frontend: text → raw document + SourceMap (every value located).

PyYAML composes the node tree (it keeps marks); we build plain values from it
ourselves so that duplicate keys are errors (PyYAML silently keeps the last) and
alias expansion is bounded. libyaml composes when PyYAML has it (10x faster on a large
spec); any error is reported by the pure-Python loader, whose messages are better.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from omnigraph.errors import Span, SpecError
from omnigraph.frontend.limits import MAX_NESTING, MAX_NODES
from omnigraph.frontend.source import DocPath, SourceMap

_OPEN = (yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken, yaml.BlockMappingStartToken,
         yaml.BlockSequenceStartToken)
_CLOSE = (yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken, yaml.BlockEndToken)
_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # PyYAML's line breaks


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    srcmap = SourceMap(file, text)
    node = _compose_fast(text) if _FastLoader is not None else None
    if node is None:
        node = _compose(text, file)
    builder = _Builder(srcmap, text)
    return builder.build(node, ()), srcmap


def _compose_fast(text: str) -> yaml.Node | None:
    """The node tree from libyaml when the text is certainly shallow and well formed; None
    sends it to the pure-Python loader (to locate what is wrong, or to check deep nesting)."""
    if _nesting_bound(text) > MAX_NESTING or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None
    try:
        loader = _FastLoader(text)
    except Exception:
        return None
    try:
        node = loader.get_single_node()
    except Exception:
        return None
    finally:
        loader.dispose()
    return node


def _nesting_bound(text: str) -> int:
    """An upper bound on how deep collections nest, from the text alone: a block collection
    one level down starts at least one column further right (or after another `- ` on the
    same line), and a flow collection opens with `[` or `{` (counted even inside strings,
    which only overestimates)."""
    widest = 0
    for line in text.splitlines():
        stripped = line.lstrip(" -")
        widest = max(widest, len(line) - len(stripped))
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return widest + 1 + deepest


def _compose(text: str, file: str) -> yaml.Node:
    """The node tree from the pure-Python loader, every problem a located SpecError."""
    try:
        loader = SpecLoader(text)  # the reader rejects non-printable characters here
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        raise SpecError(f"YAML syntax: character U+{exc.character:04X} is not allowed in YAML",
                        Span(file, line, col), source=text) from None
    _check_nesting(text, file)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").replace("'<stream end>'", "end of file")
        problem = problem.replace("end of stream", "end of file")
        span = _mark_span(mark, text, file) if mark else Span(file, 1, 1)
        hint = None
        if exc.context and exc.context_mark and exc.problem_mark:  # e.g. where an unclosed `[` opened
            hint = f"{exc.context} started at {_mark_span(exc.context_mark, text, file)}"
        if "'\\t'" in problem:
            hint = "indent YAML with spaces, not tabs"
        raise SpecError(f"YAML syntax: {problem}", span, source=text, hint=hint) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML syntax: {exc}", Span(file, 1, 1), source=text) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError("empty spec: expected a mapping with 'pipeline', 'inputs', 'stages', 'outputs'",
                        Span(file, 1, 1), source=text)
    return node


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index, counting line breaks as PyYAML does."""
    lines = _BREAKS.split(text[:index])
    return len(lines), len(lines[-1]) + 1


def _mark_span(mark: yaml.Mark, text: str, file: str) -> Span:
    """A mark's span; one at the end of the stream moves to the end of the last line."""
    if mark.index >= len(text) and text:
        line, col = _position(text, len(text.rstrip("\r\n\x85\u2028\u2029")))
        return Span(file, line, col)
    return Span(file, mark.line + 1, mark.column + 1)


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurd nesting before PyYAML's recursive composer sees it."""
    depth = 0
    try:
        for token in yaml.scan(text, Loader=SpecLoader):
            if isinstance(token, _OPEN):
                depth += 1
                if depth > MAX_NESTING:
                    m = token.start_mark
                    raise SpecError(f"nesting deeper than {MAX_NESTING} levels",
                                    Span(file, m.line + 1, m.column + 1), source=text)
            elif isinstance(token, _CLOSE):
                depth -= 1
    except yaml.MarkedYAMLError:
        return  # the composer reports syntax errors with better context


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-5` is a float and only true/false are
    booleans, so `cases: [on, off]` stays names, as the DSL reads them."""


def _yaml12_scalars(loader: type) -> None:
    loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (
            "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))


_yaml12_scalars(SpecLoader)
_FastLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):
    class _FastLoader(yaml.CSafeLoader):  # type: ignore[no-redef]  # libyaml, same scalars
        pass

    _yaml12_scalars(_FastLoader)


_PLAIN_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


class _Builder:
    def __init__(self, srcmap: SourceMap, text: str) -> None:
        self.loader = SpecLoader("")  # its constructor turns scalar nodes into values
        self.srcmap = srcmap
        self.count = 0

    def span(self, node: yaml.Node) -> Span:
        s, e = node.start_mark, node.end_mark
        return Span(self.srcmap.file, s.line + 1, s.column + 1, e.line + 1, e.column + 1)

    def build(self, node: yaml.Node, path: DocPath, key: Span | None = None) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(f"document expands to more than {MAX_NODES} values (YAML aliases?)",
                            self.span(node), source=self.srcmap.text)
        if len(path) > MAX_NESTING:  # the text is shallow (checked), so aliases nest, maybe in a cycle
            raise SpecError(f"nesting deeper than {MAX_NESTING} levels through YAML aliases",
                            self.span(node), source=self.srcmap.text)
        self.srcmap.add(path, self.span(node), key=key)
        plain = _PLAIN_TAGS.get(type(node))
        if plain is not None and node.tag != plain:  # `!Foo {…}` would silently become a plain mapping
            raise SpecError(f"YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a spec",
                            self.span(node),
                            source=self.srcmap.text, hint="remove the tag")
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("YAML merge keys (<<) are not supported in specs",
                                    self.span(key_node), source=self.srcmap.text)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpecError("mapping keys must be plain names", self.span(key_node),
                                    source=self.srcmap.text)
                k = self.scalar(key_node)
                if not isinstance(k, str):
                    k = key_node.value  # as written: `1:`, `null:`, `2024-01-01:`
                if k in out:
                    raise SpecError(f"duplicate key '{k}'", self.span(key_node), source=self.srcmap.text,
                                    hint="each name may appear once in a mapping")
                out[k] = self.build(value_node, (*path, k), key=self.span(key_node))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.scalar(node)
        if not isinstance(value, (str, int, float, bool)) and value is not None:  # !!binary, timestamps
            raise SpecError(f"a YAML {node.tag.rpartition(':')[2]} is not a spec value", self.span(node),
                            source=self.srcmap.text, hint="quote it to make it a string")
        return value

    def scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node)
        except Exception as exc:  # PyYAML's constructors raise ValueError, KeyError, ... on `!!int abc`
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            unknown = isinstance(exc, yaml.constructor.ConstructorError)
            value = node.value if len(node.value) <= 40 else f"{node.value[:20]}...({len(node.value)} characters)"
            message = f"unsupported YAML tag {tag}" if unknown else f"{value!r} is not a valid {tag}"
            digits = node.value.lstrip("+-").replace("_", "")
            if tag == "!!int" and digits.isdigit() and len(digits) > 30:  # Python refuses > 4300 digits
                message = f"a {len(digits)}-digit integer is out of range"
            raise SpecError(message, self.span(node), source=self.srcmap.text,
                            hint="quote it to make it a string") from None
