"""The Python API: `omnigraph.load(spec).run(inputs)`, and streaming events.

    import omnigraph
    with omnigraph.load("examples/speak.yaml") as pipe:
        out = pipe.run({"prompt": "The capital of France is"})
        for kind, name, value in pipe.stream({"prompt": "Hi"}):
            ...

`backend="ray"` runs the same pipeline on a Ray cluster (`address`: "auto", "HOST:PORT",
or None to start a local one); see omnigraph/runtime/ray_backend.py.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnigraph.runtime.local import LoadHook
from omnigraph.runtime.pipeline import BACKENDS, Pipeline  # noqa: F401  (part of this API)
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S

if TYPE_CHECKING:  # the compiler is imported only when a spec is compiled (bundles run without it)
    from omnigraph.passes.compilation import Compilation


# What the API compiles: a spec file (.yaml, .og, .mlir), a PipelineSpec, or a pipeline built
# with the Python builder (omnigraph.frontend.builder.Pipeline).
SpecSource = Any


def _loaded(spec: SpecSource) -> Any:
    """An in-memory spec as the compiler's LoadedSpec; None for a path."""
    from omnigraph.frontend.builder import Pipeline as Built
    from omnigraph.frontend.load import LoadedSpec
    from omnigraph.frontend.source import SourceMap
    from omnigraph.spec import PipelineSpec

    if isinstance(spec, Built):
        return spec.loaded
    if isinstance(spec, LoadedSpec):
        return spec
    if isinstance(spec, PipelineSpec):
        return LoadedSpec(spec, SourceMap("<python>", ""))
    if isinstance(spec, (str, Path)):
        return None
    raise TypeError(f"cannot compile a {type(spec).__name__}: give a spec file's path, a PipelineSpec, "
                    f"or a pipeline built with omnigraph.frontend.builder")


def compile_spec_plan(spec: SpecSource, target: str | None = None,
                      plan_options: dict[str, dict[str, Any]] | None = None,
                      fused: bool = False) -> tuple[Compilation, RuntimePlan]:
    """Compile a spec (a file: .yaml, .og, .mlir; or one built in Python) and emit its runtime
    plan; with `fused`, its stages are captured and fused too (the kernels are in the
    compilation's artifacts)."""
    from omnigraph.codegen.plan_emitter import emit_plan
    from omnigraph.compiler import compile_path, compile_spec
    from omnigraph.passes.registry import default_pipeline

    pipeline = ",".join(default_pipeline(planned=target is not None, fused=True)) if fused else None
    loaded = _loaded(spec)
    if loaded is None:
        comp = compile_path(spec, target=target, plan_options=plan_options, pass_pipeline=pipeline)
        base = Path(spec).resolve().parent
    else:
        comp = compile_spec(loaded, target=target, plan_options=plan_options, pass_pipeline=pipeline)
        source = Path(loaded.srcmap.file)
        base = source.resolve().parent if source.is_file() else Path.cwd()
    plan = emit_plan(comp.module, comp.target.devices if comp.target is not None else None)
    plan.module_paths = [str(base)]  # `py:` modules beside the spec (or the script that built it)
    return comp, plan


def compile_plan(spec: SpecSource, target: str | None = None,
                 plan_options: dict[str, dict[str, Any]] | None = None,
                 kernels_dir: str | Path | None = None) -> RuntimePlan:
    """Compile a spec file (.yaml, .og, .mlir) down to its runtime plan; with `kernels_dir`,
    fuse its stages too, write their Triton kernels there and point the plan at them."""
    comp, plan = compile_spec_plan(spec, target, plan_options, fused=kernels_dir is not None)
    if kernels_dir is not None:
        from omnigraph.codegen.kernel_module import attach_kernels, kernel_files

        attach_kernels(plan, kernel_files(comp)[0], Path(kernels_dir))
    return plan


def plan_here(spec: SpecSource, on_note: Callable[[str], None] | None = None) -> RuntimePlan:
    """The plan for this machine (`local`), as `run`, `serve` and `load` make by default; when
    this machine cannot hold it (the spec pins more devices than it has, a model larger than
    its memory), the spec runs unplanned, as it did before plans reached the runtime, and
    `on_note` (else a warning) says why. An explicit target never falls back."""
    from omnigraph.errors import IRError
    from omnigraph.target import LOCAL

    try:
        return compile_plan(spec, LOCAL)
    except IRError as exc:
        note = (f"this machine cannot hold the plan ({exc.message}); running unplanned: "
                f"the stages' own dtypes, no core or KV budgets (--target T plans for another target)")
        if on_note is None:
            warnings.warn(note, stacklevel=3)
        else:
            on_note(note)
    return compile_plan(spec, None)


def load(spec: SpecSource, *, target: str | None = "local", on_load: LoadHook | None = None,
         trust_code: bool = False, backend: str = "local", address: str | None = None,
         device_resource: str | None = None, step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S,
         max_inflight: int = 256, mixes: str | None = None, replan: str | None = None) -> Pipeline:
    """Compile (if needed) and load a pipeline: a spec file, a bundle (a directory or a .ogb
    file, run without the compiler; `trust_code` lets it run the Python it carries) or a plan.
    A spec is planned for `target`: by default `local`, this machine (the dtype its devices
    compute fast, their cores, the KV pool its memory holds); None runs it unplanned.
    `backend="ray"` runs it on a Ray cluster at `address` (see Pipeline). A stage step that
    runs longer than `step_timeout` seconds fails its requests (None: no limit). At most
    `max_inflight` requests run at once (submit blocks, or with block=False raises QueueFull).
    `mixes` plans one variant per request mix (a plan family) and `replan` ("" for the default
    policy, or `window=5,hold=3,margin=0.2`) switches between them as the load shifts."""
    options: dict[str, Any] = {"on_load": on_load, "backend": backend, "address": address,
                               "device_resource": device_resource, "step_timeout": step_timeout,
                               "max_inflight": max_inflight, "replan": replan}
    if isinstance(spec, RuntimePlan):
        return Pipeline(spec, **options)
    from omnigraph.runtime.bundle import is_bundle, open_bundle

    if not isinstance(spec, (str, Path)) or not is_bundle(spec):
        from omnigraph.target import LOCAL

        if mixes:  # one plan per operating point, switched at run time (`replan`)
            from omnigraph.plan_family import compile_family, split_mixes

            plan = compile_family(spec, target or LOCAL, split_mixes(mixes))
        else:
            plan = plan_here(spec) if target == LOCAL else compile_plan(spec, target)
        return Pipeline(plan, **options)
    bundle = open_bundle(spec)
    try:
        pipe = Pipeline(bundle.runnable_plan(trust_code), **options)
    except BaseException:
        bundle.close()
        raise
    pipe.on_close.append(bundle.close)
    return pipe


def compile(spec: SpecSource, *, target: str | None = None, emit: str = "plan",  # noqa: A001 - the verb
            output: str | Path | None = None, force: bool = False) -> Any:
    """What `omnigraph compile --emit …` makes, as objects: "ir" the omni module's text, "plan"
    the RuntimePlan, "bundle" a standalone bundle written to `output` (a directory, or a
    .ogb file; returns its path), "spec" the validated PipelineSpec."""
    if emit == "spec":
        loaded = _loaded(spec)
        if loaded is None:
            from omnigraph.frontend.load import load_spec

            loaded = load_spec(spec)
        return loaded.spec
    if emit == "ir":
        from omnigraph.dialect.textio import print_module

        comp, _ = compile_spec_plan(spec, target)
        return print_module(comp.module)
    if emit == "plan":
        return compile_plan(spec, target)
    if emit == "bundle":
        if output is None:
            raise ValueError("emit='bundle' writes files: give output=DIR or output=FILE.ogb")
        from omnigraph.codegen.bundle_writer import write_bundle

        return write_bundle(compile_plan(spec, target), output, force=force).path
    raise ValueError(f"emit must be one of spec, ir, plan, bundle; got {emit!r}")
