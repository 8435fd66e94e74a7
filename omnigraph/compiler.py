"""The compiler driver: spec → IR → passes, turning verifier failures into located errors.

Every phase is a pure function of its input; this module only strings them
together, verifies after lowering and after every pass (MLIR's verify-each), and
maps an op that fails verification back to the spec line it came from.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import ParseError, VerifyException

from omnigraph.dialect.checks import OmniVerifyError
from omnigraph.dialect.lower import Origins, lower
from omnigraph.dialect.ops import PipelineOp
from omnigraph.dialect.textio import parse_module
from omnigraph.errors import IRError, OmnigraphError, Span, SpecError
from omnigraph.frontend.load import LoadedSpec, load_spec
from omnigraph.frontend.source import SourceMap
from omnigraph.frontend.text import read_spec_text
from omnigraph.passes.registry import build_pipeline

IR_SUFFIXES = (".mlir",)
PassHook = Callable[[str, ModuleOp], None]
PassOptions = dict[str, dict[str, Any]]  # pass name -> field values (e.g. plan-parallel's mix)


@dataclass
class Compilation:
    module: ModuleOp
    loaded: LoadedSpec | None = None  # None when compiled from IR text
    origins: Origins | None = None
    ir_source: tuple[str, str] | None = None  # (file, text) when compiled from IR text


def load_ir(path: str | Path) -> Compilation:
    text = read_spec_text(path)
    try:
        return Compilation(parse_module(text, str(path)), ir_source=(str(path), text))
    except ParseError as exc:
        loc = exc.span.get_location()
        raise SpecError(f"IR syntax: {exc.msg}", Span(str(path), loc.line, loc.col), source=text) from None
    except ValueError as exc:  # xDSL reports a few malformed names this way, without a span
        raise SpecError(f"IR syntax: {exc.args[0] if exc.args else exc}", Span(str(path), 1, 1)) from None
    except VerifyException as exc:  # an attribute or type that fails its verify() as it is parsed
        raise SpecError(f"IR: {str(exc).splitlines()[0]}", Span(str(path), 1, 1)) from None


def locate_verify_error(exc: VerifyException, srcmap: SourceMap | None, origins: Origins | None,
                        ir_source: tuple[str, str] | None = None) -> OmnigraphError:
    """The OmnigraphError for a verifier failure: at its spec span when known."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmniVerifyError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return IRError(f"invalid IR: {message}")
    path = origins.path(cause.op, cause.operand) if origins is not None else None
    if path is not None and cause.field:
        path = (*path, *cause.field)  # the spec's own entry when it has one, else the op's
    if srcmap is not None and path is not None:
        return srcmap.error(str(cause), path)
    op, label = cause.op, None
    while op is not None and label is None:  # an unnamed op (omni.yield): its loop's name
        label = op.properties.get("sym_name") or op.properties.get("port_name")
        op = op.parent_op()
    span = _ir_span(ir_source, label.data) if ir_source and label else None
    return IRError(str(cause), span, source=ir_source[1] if span else None)


def _ir_span(ir_source: tuple[str, str], name: str) -> Span | None:
    """Where an op named `name` is written in IR text (xDSL keeps no op locations)."""
    file, text = ir_source
    for needle in (f"@{name} ", f'sym_name = "{name}"', f'"{name}"'):
        offset = text.find(needle)
        if offset >= 0:
            line = text.count("\n", 0, offset) + 1
            col = offset - (text.rfind("\n", 0, offset) + 1) + 1
            return Span(file, line, col, line, col + len(needle.rstrip()))
    return None


def compile_path(
    path: str | Path, *, target: str | None = None, pass_pipeline: str | None = None,
    after_pass: PassHook | None = None, plan_options: PassOptions | None = None,
) -> Compilation:
    """Compile a spec (.yaml/.og) or IR file (.mlir) through the pass pipeline."""
    if Path(path).suffix.lower() in IR_SUFFIXES:
        return run_passes(load_ir(path), pass_pipeline, after_pass, plan_options)
    return compile_spec(load_spec(path), target=target, pass_pipeline=pass_pipeline, after_pass=after_pass,
                        plan_options=plan_options)


def compile_spec(
    loaded: LoadedSpec, *, target: str | None = None, pass_pipeline: str | None = None,
    after_pass: PassHook | None = None, plan_options: PassOptions | None = None,
) -> Compilation:
    module, origins = lower(loaded.spec, target)
    return run_passes(Compilation(module, loaded, origins), pass_pipeline, after_pass, plan_options)


def run_passes(comp: Compilation, pass_pipeline: str | None, after_pass: PassHook | None,
               plan_options: PassOptions | None = None) -> Compilation:
    """Run the passes; without an explicit list, the planning passes run when a target is named."""
    from omnigraph.dialect.textio import make_context

    srcmap = comp.loaded.srcmap if comp.loaded else None

    def verified() -> None:
        try:
            comp.module.verify()
        except VerifyException as exc:
            raise locate_verify_error(exc, srcmap, comp.origins, comp.ir_source) from None

    def callback(prev: ModulePass | None, module: ModuleOp, _next: ModulePass | None) -> None:
        if prev is not None:
            verified()
            if after_pass is not None:
                after_pass(prev.name, module)

    try:
        planned = any(isinstance(op, PipelineOp) and op.target is not None for op in comp.module.ops)
        pipeline = build_pipeline(pass_pipeline, callback, plan_options, planned=planned)
    except Exception as exc:  # unknown pass names, bad options
        raise OmnigraphError(f"bad --pass-pipeline: {exc}") from None
    verified()  # lowering (or the parsed IR) must verify before any pass runs
    try:
        pipeline.apply(make_context(), comp.module)
    except VerifyException as exc:
        raise locate_verify_error(exc, srcmap, comp.origins, comp.ir_source) from None
    return comp
