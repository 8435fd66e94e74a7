"""The compiler driver: spec → IR → passes, turning verifier failures into located errors.

A compile is a function of its inputs (spec, target, options). This module makes the one
`Compilation` a compile carries (passes/compilation.py: the module, the Target loaded once,
the artifacts passes make), runs the pass pipeline over it, verifies after lowering and
after every pass (MLIR's verify-each), and maps an op that fails verification back to the
spec line (or the IR text) it came from.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xdsl.dialects.builtin import DictionaryAttr, ModuleOp, StringAttr
from xdsl.ir import Operation
from xdsl.utils.exceptions import ArgSpecParseError, ParseError, VerifyException

from omnigraph.dialect.checks import OmniVerifyError
from omnigraph.dialect.lower import Origins, lower
from omnigraph.dialect.textio import MAX_IR_NESTING, parse_module, too_deep
from omnigraph.errors import IRError, OmnigraphError, Span, SpecError
from omnigraph.names import is_name
from omnigraph.frontend.load import LoadedSpec, load_spec
from omnigraph.frontend.source import SourceMap
from omnigraph.frontend.text import read_spec_text
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.registry import PASSES, build_pipeline
from omnigraph.passes.stage_graph import pipeline_of
from omnigraph.target import Target, load_target

IR_SUFFIXES = (".mlir",)
PassHook = Callable[[str, ModuleOp], None]
PassOptions = dict[str, dict[str, Any]]  # pass name -> field values (e.g. plan-parallel's mix)


def load_ir(path: str | Path) -> Compilation:
    text = read_spec_text(path)
    deep = too_deep(text)
    if deep is not None:
        raise SpecError(f"IR nests deeper than {MAX_IR_NESTING} brackets", Span(str(path), *deep), source=text)
    try:
        return Compilation(parse_module(text, str(path)), ir_source=(str(path), text))
    except ParseError as exc:
        message = " ".join(exc.msg.split())
        if exc.span.start >= len(text.rstrip()):  # xDSL puts the end of the text past its last line
            lines = text.rstrip().splitlines() or [""]
            raise SpecError(f"IR syntax: unexpected end of file ({message or 'an unclosed block?'})",
                            Span(str(path), len(lines), len(lines[-1]) + 1), source=text) from None
        loc = exc.span.get_location()
        raise SpecError(f"IR syntax: {message}", Span(str(path), loc.line, loc.col), source=text) from None
    except ValueError as exc:  # xDSL reports a few malformed names this way, without a span
        raise SpecError(f"IR syntax: {exc.args[0] if exc.args else exc}", Span(str(path), 1, 1)) from None
    except VerifyException as exc:  # an attribute or type that fails its verify() as it is parsed
        offset = next((int(n[7:]) for n in getattr(exc, "__notes__", []) if n.startswith("offset=")), 0)
        span = _span_at(str(path), text, min(max(offset, 0), len(text)), 1)
        raise SpecError(f"IR: {str(exc).splitlines()[0]}", span, source=text) from None


def locate_verify_error(exc: VerifyException, srcmap: SourceMap | None, origins: Origins | None,
                        ir_source: tuple[str, str] | None = None) -> OmnigraphError:
    """The OmnigraphError for a verifier failure: at its spec span when known."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmniVerifyError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        span = Span(ir_source[0], 1, 1) if ir_source else None
        return IRError(f"invalid IR: {message}", span, source=ir_source[1] if span else None)
    path = origins.path(cause.op, cause.operand) if origins is not None else None
    if path is not None and cause.field:
        path = (*path, *cause.field)  # the spec's own entry when it has one, else the op's
    if srcmap is not None and path is not None:
        return srcmap.error(str(cause), path)
    span = _op_span(ir_source, cause.op) if ir_source else None
    return IRError(str(cause), span, source=ir_source[1] if span else None)


def _op_span(ir_source: tuple[str, str], op: Operation) -> Span:
    """Where `op` is written in IR text (xDSL keeps no op locations): at its name when it has a
    plain one, else at the n-th occurrence of its op name for the n-th such op; else line 1."""
    file, text = ir_source
    owner: Operation | None = op
    label = None
    while owner is not None and label is None:  # an unnamed op (omni.yield): its loop's name
        label = owner.properties.get("sym_name") or owner.properties.get("port_name")
        owner = owner.parent_op()
    if label is not None and is_name(label.data):
        for needle in (f"@{label.data} ", f'sym_name = "{label.data}"', f'"{label.data}"'):
            offset = text.find(needle)
            if offset >= 0:
                return _span_at(file, text, offset, len(needle.rstrip()))
    top = op
    while top.parent_op() is not None:
        top = top.parent_op()
    same = [o for o in top.walk() if o.name == op.name]
    hits = [m.start() for m in re.finditer(rf'(?<![\w.]){re.escape(op.name)}(?![\w.])', text)]
    index = next((i for i, o in enumerate(same) if o is op), None)
    if index is not None and len(hits) == len(same):
        return _span_at(file, text, hits[index], len(op.name))
    return Span(file, 1, 1)


def _span_at(file: str, text: str, offset: int, width: int) -> Span:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Span(file, line, col, line, col + width)


def compile_path(
    path: str | Path, *, target: str | None = None, pass_pipeline: str | None = None,
    after_pass: PassHook | None = None, plan_options: PassOptions | None = None,
) -> Compilation:
    """Compile a spec (.yaml/.og) or IR file (.mlir) through the pass pipeline, for `target`
    (a shipped target's name or a YAML file) when one is named."""
    loaded_target = load_target(target) if target is not None else None
    if Path(path).suffix.lower() in IR_SUFFIXES:
        comp = load_ir(path)
        anchor_checkpoints(comp.module, Path(path).resolve().parent)
        if target is not None:
            _retarget(comp, target)
        named = pipeline_of(comp.module).target
        comp.target = loaded_target or (load_target(named.data) if named is not None else None)
        return run_passes(comp, pass_pipeline, after_pass, plan_options)
    return compile_spec(load_spec(path), target=target, pass_pipeline=pass_pipeline, after_pass=after_pass,
                        plan_options=plan_options, loaded_target=loaded_target)


def anchor_checkpoints(module: ModuleOp, base: Path) -> None:
    """Checkpoint folders named relative to the spec become absolute in the IR, so every later
    phase (and the runtime, and a bundle) finds the same folder wherever it runs from. Hub ids
    stay as written: each machine resolves them from its own cache."""
    from omnigraph.dialect.ops import StageOp
    from omnigraph.model_ref import location_of

    for op in module.walk():
        if not isinstance(op, StageOp):
            continue
        named, location = location_of(op.model.data) if op.model is not None else (None, None)
        folder = _anchored(location, base)
        if op.model is not None and folder is not None:
            scheme = op.model.data.partition(":")[0]
            op.properties["model"] = StringAttr(f"{scheme}:{named + '@' if named else ''}{folder}")
        tokenizer = op.params.data.get("tokenizer") if op.params is not None else None
        folder = _anchored(tokenizer.data, base) if isinstance(tokenizer, StringAttr) else None
        if op.params is not None and folder is not None:  # params.tokenizer: a folder, like a checkpoint
            op.properties["params"] = DictionaryAttr({**op.params.data, "tokenizer": StringAttr(str(folder))})


def _anchored(location: str | None, base: Path) -> Path | None:
    """A relative folder found beside the spec (then in the working directory), made absolute;
    None for an absolute path, a Hub id, a `scheme:` reference or a folder that is not there
    (loading says where it looked)."""
    if location is None or ":" in location or Path(location).expanduser().is_absolute():
        return None
    return next((c.resolve() for c in (base / location, Path.cwd() / location) if c.is_dir()), None)


def _retarget(comp: Compilation, target: str) -> None:
    """`--target` on IR text: plan the module for it, unless it was planned for another."""
    op = pipeline_of(comp.module)
    if op.target is not None and op.target.data != target:
        raise IRError(f"this IR is for target '{op.target.data}', not '{target}'",
                      hint="compile its spec again for the other target")
    op.properties["target"] = StringAttr(target)


def compile_spec(
    loaded: LoadedSpec, *, target: str | None = None, pass_pipeline: str | None = None,
    after_pass: PassHook | None = None, plan_options: PassOptions | None = None,
    loaded_target: Target | None = None,
) -> Compilation:
    if target is not None and loaded_target is None:
        loaded_target = load_target(target)
    module, origins = lower(loaded.spec, target)
    anchor_checkpoints(module, Path(loaded.srcmap.file).resolve().parent)
    comp = Compilation(module, loaded_target, loaded=loaded, origins=origins)
    return run_passes(comp, pass_pipeline, after_pass, plan_options)


def run_passes(comp: Compilation, pass_pipeline: str | None, after_pass: PassHook | None,
               plan_options: PassOptions | None = None) -> Compilation:
    """Run the passes over the compilation; without an explicit list, the planning passes run
    when a target is named. The module is verified after lowering and after every pass."""
    from omnigraph.dialect.textio import make_context

    srcmap = comp.loaded.srcmap if comp.loaded else None

    def verified() -> None:
        try:
            comp.module.verify()
        except VerifyException as exc:
            raise locate_verify_error(exc, srcmap, comp.origins, comp.ir_source) from None

    try:
        planned = pipeline_of(comp.module).target is not None
        pipeline = build_pipeline(pass_pipeline, None, plan_options, planned=planned)
    except (Exception, ArgSpecParseError) as exc:  # unknown pass names, bad options, bad syntax
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise OmnigraphError(f"bad --pass-pipeline: {message[:300]}",
                             hint="a comma-separated list of passes: " + ", ".join(PASSES)) from None
    if not pipeline.passes or pipeline.passes[0].name != "verify":
        verified()  # lowering (or the parsed IR) must verify before any pass runs
    ctx = make_context()
    for p in pipeline.passes:
        try:
            if isinstance(p, CompilerPass):
                p.run(comp)
            else:
                p.apply(ctx, comp.module)
        except VerifyException as exc:
            raise locate_verify_error(exc, srcmap, comp.origins, comp.ir_source) from None
        if p.name != "verify":  # the verify pass verified the module itself
            verified()
        if after_pass is not None:
            after_pass(p.name, comp.module)
    return comp
