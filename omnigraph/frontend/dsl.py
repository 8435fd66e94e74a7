"""DSL frontend: ``.og`` text → raw document + SourceMap, via the lark grammar.

The tree is walked by hand (not a lark Transformer) so each value is recorded
at its document path with its span, exactly like the YAML frontend does.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from omnigraph.errors import Span, SpecError
from omnigraph.frontend.limits import MAX_NESTING
from omnigraph.frontend.source import DocPath, SourceMap

_STAGE_SPECIAL_KEYS = ("model", "outputs", "parallel")
_STRINGS = json.JSONDecoder(strict=False)  # made once: json.loads(..., strict=False) builds one per call
_PRETTY = {
    "NAME": "a name", "ESCAPED_STRING": "a string", "SIGNED_NUMBER": "a number", "INT": "an integer",
    "STREAM": "'stream'", "QMARK": "'?'", "DOCSTRING": "a docstring", "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("omnigraph.grammar").joinpath("omnigraph.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_dsl(text: str, file: str) -> tuple[dict[str, Any], SourceMap]:
    srcmap = SourceMap(file, text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _check_nesting(tree, text, file)
    return _Walker(srcmap).pipeline(tree), srcmap


def _check_nesting(tree: Tree, text: str, file: str) -> None:
    """Refuse absurd nesting of values before the recursive walk (the LALR parse itself is not)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in ("list", "dict"):
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(f"nesting deeper than {MAX_NESTING} levels",
                                Span(file, node.meta.line, node.meta.column), source=text)
        stack.extend((c, depth) for c in reversed(node.children) if isinstance(c, Tree))


def _describe(names: set[str]) -> str:
    parser = _parser()
    out = set()
    for name in names:
        if name in _PRETTY:
            out.add(_PRETTY[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
            out.add(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
        except KeyError:
            out.add(name.lower())
    return ", ".join(sorted(out))


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> SpecError:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END" and "PIPELINE" in exc.expected:  # nothing but blanks and comments
            return SpecError("empty spec: expected `pipeline <name>(<inputs>) -> (<outputs>) { ... }`",
                             Span(file, 1, 1), source=text)
        if tok.type == "$END":
            what = "unexpected end of file"
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        else:
            what = f"unexpected {tok.value!r}"
        return SpecError(f"syntax: {what}; expected {_describe(exc.expected)}",
                         Span(file, line, col), source=text)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        if char == '"':  # no closing quote on this line
            return SpecError("syntax: unterminated string", Span(file, line, col), source=text,
                             hint="a string ends with \" on the line where it starts")
        return SpecError(f"syntax: unexpected character {char!r}", Span(file, line, col), source=text)
    if isinstance(exc, UnexpectedEOF):
        lines = text.splitlines() or [""]
        return SpecError(f"syntax: unexpected end of file; expected {_describe(set(exc.expected))}",
                         Span(file, len(lines), len(lines[-1]) + 1), source=text)
    return SpecError(f"syntax: {exc}", Span(file, line, col), source=text)


class _Walker:
    def __init__(self, srcmap: SourceMap) -> None:
        self.srcmap = srcmap

    # -- spans -------------------------------------------------------------------------
    def span(self, item: Tree | Token) -> Span:
        if isinstance(item, Token):
            return Span(self.srcmap.file, item.line, item.column, item.end_line, item.end_column)
        m = item.meta
        return Span(self.srcmap.file, m.line, m.column, m.end_line, m.end_column)

    def at(self, path: DocPath, item: Tree | Token, key: Token | None = None) -> None:
        self.srcmap.add(path, self.span(item), key=self.span(key) if key is not None else None)

    def error(self, message: str, item: Tree | Token) -> SpecError:
        return SpecError(message, self.span(item), source=self.srcmap.text)

    # -- document ----------------------------------------------------------------------
    def pipeline(self, start: Tree) -> dict[str, Any]:
        doc_token, tree = start.children
        name, in_ports, out_ports, docstring, *items = tree.children
        self.at((), tree)
        self.at(("pipeline",), name)
        doc: dict[str, Any] = {"pipeline": str(name)}
        if docstring is not None and doc_token is not None:
            raise self.error("a pipeline has one docstring: before `pipeline` or inside its braces",
                             docstring)
        text = docstring or doc_token
        if text is not None:
            doc["description"] = str(text)[3:-3].strip()
        doc["inputs"] = self.ports(in_ports, ("inputs",))
        declared = self.ports(out_ports, ("outputs",))
        stages: dict[str, Any] = {}
        loops: dict[str, Any] = {}
        returns: dict[str, Any] = {}
        for item in items:
            if not isinstance(item, Tree):
                continue
            if item.data == "stage":
                self.stage(item, ("stages",), stages)
            elif item.data == "loop":
                self.loop(item, loops)
            elif item.data == "ret":
                for binding in item.children:
                    out_name, ref = binding.children
                    if str(out_name) not in declared:
                        raise self.error(f"'{out_name}' is returned but not declared in the "
                                         f"pipeline's outputs ({', '.join(declared) or 'none'})", out_name)
                    if str(out_name) in returns:
                        raise self.error(f"output '{out_name}' is returned twice", out_name)
                    returns[str(out_name)] = {"from": self.ref(ref), **declared[str(out_name)]}
                    self.at(("outputs", str(out_name)), binding, key=out_name)
                    self.at(("outputs", str(out_name), "from"), ref)
        for out_name in declared:
            if out_name not in returns:
                raise SpecError(f"output '{out_name}' is declared but never returned",
                                self.srcmap.locate(("outputs", out_name)), source=self.srcmap.text,
                                hint=f"add `return {out_name} = <stage>.<port>`")
        doc["outputs"] = {k: returns[k] for k in declared}
        if stages:
            doc["stages"] = stages
        if loops:
            doc["loops"] = loops
        return doc

    def ports(self, tree: Tree | None, path: DocPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for port in tree.children if tree is not None else []:
            name, type_tree = port.children
            if str(name) in out:
                raise self.error(f"duplicate port '{name}'", name)
            out[str(name)] = self.type(type_tree, (*path, str(name)))
            self.at((*path, str(name)), port, key=name)
        if path == ("outputs",):  # outputs carry only a modality in the signature
            for port in tree.children if tree is not None else []:
                if port.children[1].children[1] is not None:
                    raise self.error("an output's type is its modality alone; element type and "
                                     "shape come from the stage that produces it", port.children[1])
            return {k: {"modality": v} for k, v in out.items()}
        return out

    def type(self, tree: Tree, path: DocPath) -> Any:
        modality, dtype, shape = tree.children
        self.at((*path, "modality"), modality)
        if dtype is None:
            return str(modality)
        out: dict[str, Any] = {"modality": str(modality), "dtype": str(dtype)}
        self.at((*path, "dtype"), dtype)
        if shape is not None:
            dims = [None if d.children[0].type == "QMARK" else self.integer(d.children[0]) for d in shape.children
                    if d is not None]
            out["shape"] = dims
            self.at((*path, "shape"), shape)
        return out

    def stage(self, tree: Tree, parent: DocPath, into: dict[str, Any]) -> None:
        name, kind, args, body = tree.children
        if str(name) in into:
            raise self.error(f"duplicate stage name '{name}'", name)
        path = (*parent, str(name))
        self.at(path, tree, key=name)
        self.at((*path, "kind"), kind)
        stage: dict[str, Any] = {"kind": str(kind)}
        # `model`, `outputs` and `parallel` are written among the params but belong to the stage:
        # recorded at their stage path as they are walked.
        special = {k: (*path, k) for k in _STAGE_SPECIAL_KEYS}
        params = self.dict(body, (*path, "params"), special) if body is not None else {}
        for key in _STAGE_SPECIAL_KEYS:
            if key in params:
                stage[key] = params.pop(key)
        stage["inputs"] = self.args(args, (*path, "inputs"))
        if params:
            stage["params"] = params
        into[str(name)] = stage

    def args(self, tree: Tree | None, path: DocPath) -> Any:
        if tree is None:  # `kind()`: errors about its inputs point at the stage line
            return []
        positional: list[Any] = []
        named: dict[str, Any] = {}
        self.at(path, tree)
        for arg in tree.children:
            if arg.data == "edge":
                if named:
                    raise self.error("positional input after a named one", arg)
                self.at((*path, len(positional)), arg)
                positional.append(self.edge(arg))
            else:
                port, *edges = arg.children
                if str(port) in named:
                    raise self.error(f"input port '{port}' wired twice", port)
                self.at((*path, str(port)), arg, key=port)
                if arg.data == "named_list_arg":
                    for i, e in enumerate(edges):
                        self.at((*path, str(port), i), e)
                    named[str(port)] = [self.edge(e) for e in edges]
                else:
                    named[str(port)] = self.edge(edges[0])
        if positional and named:
            # Mixed: positional ones are numbered; resolve maps them onto port names.
            return {**{f"${i}": e for i, e in enumerate(positional)}, **named}
        return named if named else positional

    def edge(self, tree: Tree) -> Any:
        stream, ref = tree.children
        source = self.ref(ref)
        return {"from": source, "stream": True} if stream is not None else source

    @staticmethod
    def ref(tree: Tree) -> str:
        return ".".join(str(t) for t in tree.children if t is not None)

    def loop(self, tree: Tree, into: dict[str, Any]) -> None:
        name, *rest = tree.children
        if str(name) in into:
            raise self.error(f"duplicate loop name '{name}'", name)
        path = ("loops", str(name))
        self.at(path, tree, key=name)
        carry: dict[str, Any] = {}
        loop: dict[str, Any] = {"carry": carry}
        stages: dict[str, Any] = {}
        nxt: dict[str, Any] = {}
        for item in rest:
            if isinstance(item, Token):  # the max_iters INT
                loop["max_iters"] = self.integer(item)
                self.at((*path, "max_iters"), item)
            elif item.data == "carry":
                cname, edge = item.children
                if str(cname) in carry:
                    raise self.error(f"duplicate carried value '{cname}'", cname)
                carry[str(cname)] = self.edge(edge)
                self.at((*path, "carry", str(cname)), item, key=cname)
            elif item.data == "stage":
                self.stage(item, (*path, "stages"), stages)
            elif item.data == "until":
                if "until" in loop:
                    raise self.error("a loop has one `until`", item)
                loop["until"] = self.edge(item.children[0])
                self.at((*path, "until"), item)
            elif item.data == "next":
                for binding in item.children:
                    cname, ref = binding.children
                    if str(cname) in nxt:
                        raise self.error(f"`next` sets '{cname}' twice", cname)
                    nxt[str(cname)] = self.ref(ref)
                    self.at((*path, "next", str(cname)), binding, key=cname)
        if "until" not in loop:
            raise self.error(f"loop '{name}' needs an `until <stage>.<port>` condition", name)
        loop["next"] = nxt
        loop["stages"] = stages
        into[str(name)] = loop

    # -- values ------------------------------------------------------------------------
    def value(self, tree: Tree, path: DocPath) -> Any:
        self.at(path, tree)
        kind = tree.data
        if kind == "string":
            return self.string(tree.children[0])
        if kind == "number":
            raw = str(tree.children[0])
            return float(raw) if any(c in raw for c in ".eE") else self.integer(tree.children[0])
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "null":
            return None
        if kind == "bare":
            return str(tree.children[0])
        if kind == "list":
            return [self.value(v, (*path, i)) for i, v in enumerate(c for c in tree.children if c is not None)]
        return self.dict(tree, path)

    def string(self, token: Token) -> str:
        """A string literal's value: JSON escapes; raw tabs and control characters are kept."""
        try:
            return _STRINGS.decode(token)
        except json.JSONDecodeError as exc:
            col = token.column + exc.pos  # at the bad escape
            raise SpecError(f"bad string literal: {exc.msg}",
                            Span(self.srcmap.file, token.line, col, token.line, col + 2),
                            source=self.srcmap.text) from None

    def dict(self, tree: Tree, path: DocPath, moved: dict[str, DocPath] | None = None) -> dict[str, Any]:
        """A mapping; `moved` gives keys whose values live elsewhere in the document."""
        self.at(path, tree)
        out: dict[str, Any] = {}
        for pair in tree.children:
            if pair is None:
                continue
            key_tok, value = pair.children
            key = self.string(key_tok) if key_tok.type == "ESCAPED_STRING" else str(key_tok)
            if key in out:
                raise self.error(f"duplicate key '{key}'", key_tok)
            vpath = moved[key] if moved and key in moved else (*path, key)
            out[key] = self.value(value, vpath)
            self.srcmap.key_spans[vpath] = self.span(key_tok)
        return out

    def integer(self, token: Token | Tree) -> int:
        """An integer literal; one too long to be any number a spec means is a located error."""
        raw = str(token)
        if len(raw.lstrip("+-")) > 30:
            raise self.error(f"a {len(raw.lstrip('+-'))}-digit integer is out of range", token)
        return int(raw)
