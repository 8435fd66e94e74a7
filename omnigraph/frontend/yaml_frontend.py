"""YAML frontend: text → raw document + SourceMap (every value located).

PyYAML composes the node tree (it keeps marks); we build plain values from it
ourselves so that duplicate keys are errors (PyYAML silently keeps the last) and
alias expansion is bounded.
"""
from __future__ import annotations

from typing import Any

import yaml

from omnigraph.errors import Span, SpecError
from omnigraph.frontend.limits import MAX_NESTING, MAX_NODES
from omnigraph.frontend.source import DocPath, SourceMap

_OPEN = (yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken, yaml.BlockMappingStartToken,
         yaml.BlockSequenceStartToken)
_CLOSE = (yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken, yaml.BlockEndToken)


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    srcmap = SourceMap(file, text)
    _check_nesting(text, file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        span = Span(file, mark.line + 1, mark.column + 1) if mark else Span(file, 1, 1)
        raise SpecError(f"YAML syntax: {problem}", span, source=text) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML syntax: {exc}", Span(file, 1, 1), source=text) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError("empty spec: expected a mapping with 'pipeline', 'inputs', 'stages', 'outputs'",
                        Span(file, 1, 1), source=text)
    builder = _Builder(loader, srcmap)
    return builder.build(node, ()), srcmap


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurd nesting before PyYAML's recursive composer sees it."""
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
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


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, srcmap: SourceMap) -> None:
        self.loader = loader
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
        self.srcmap.add(path, self.span(node), key=key)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("YAML merge keys (<<) are not supported in specs",
                                    self.span(key_node), source=self.srcmap.text)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpecError("mapping keys must be plain names", self.span(key_node),
                                    source=self.srcmap.text)
                k = self.loader.construct_object(key_node)
                if not isinstance(k, str):
                    k = str(k) if isinstance(k, (int, float, bool)) or k is None else k
                if k in out:
                    raise SpecError(f"duplicate key '{k}'", self.span(key_node), source=self.srcmap.text,
                                    hint="each name may appear once in a mapping")
                out[k] = self.build(value_node, (*path, k), key=self.span(key_node))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError as exc:
            raise SpecError(f"bad YAML value: {exc}", self.span(node), source=self.srcmap.text) from None
