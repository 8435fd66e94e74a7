"""The Python API: `omnigraph.load(spec).run(inputs)`, and streaming events.

    import omnigraph
    with omnigraph.load("examples/speak.yaml") as pipe:
        out = pipe.run({"prompt": "The capital of France is"})
        for kind, name, value in pipe.stream({"prompt": "Hi"}):
            ...
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omnigraph.runtime.local import LoadHook, LocalBackend, RequestHandle
from omnigraph.runtime.plan import RuntimePlan


def compile_plan(spec: str | Path, target: str | None = None,
                 plan_options: dict[str, dict[str, Any]] | None = None) -> RuntimePlan:
    """Compile a spec file (.yaml, .og, .mlir) down to its runtime plan."""
    from omnigraph.codegen.plan_emitter import emit_plan
    from omnigraph.compiler import compile_path

    devices = None
    if target is not None:
        from omnigraph.target import load_target

        devices = load_target(target).devices
    plan = emit_plan(compile_path(spec, target=target, plan_options=plan_options).module, devices)
    plan.module_paths = [str(Path(spec).resolve().parent)]  # `py:` modules beside the spec
    return plan


class Pipeline:
    """A loaded pipeline, ready to serve requests on this machine."""

    def __init__(self, plan: RuntimePlan, *, on_load: LoadHook | None = None, max_inflight: int = 256) -> None:
        self.plan = plan
        self.backend = LocalBackend(plan, on_load=on_load, max_inflight=max_inflight)
        self.on_close: list[Callable[[], None]] = []  # e.g. deleting an unpacked bundle

    def submit(self, inputs: dict[str, Any], *, timeout: float | None = None) -> RequestHandle:
        return self.backend.submit(inputs, timeout=timeout)

    def run(self, inputs: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return self.backend.run(inputs, timeout=timeout)

    def stream(self, inputs: dict[str, Any], *, timeout: float | None = None) -> Iterator[tuple[str, str, Any]]:
        """Events as they happen: ("chunk", output, piece), ("output", name, value), ("done", "", outputs)."""
        return self.submit(inputs, timeout=timeout).events()

    def close(self) -> None:
        self.backend.close()
        while self.on_close:
            self.on_close.pop()()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(spec: str | Path | RuntimePlan, *, target: str | None = None, on_load: LoadHook | None = None,
         trust_code: bool = False) -> Pipeline:
    """Compile (if needed) and load a pipeline: a spec file, a bundle (a directory or a .ogb
    file, run without the compiler; `trust_code` lets it run the Python it carries) or a plan."""
    if isinstance(spec, RuntimePlan):
        return Pipeline(spec, on_load=on_load)
    from omnigraph.runtime.bundle import is_bundle, open_bundle

    if not is_bundle(spec):
        return Pipeline(compile_plan(spec, target), on_load=on_load)
    bundle = open_bundle(spec)
    try:
        pipe = Pipeline(bundle.runnable_plan(trust_code), on_load=on_load)
    except BaseException:
        bundle.close()
        raise
    pipe.on_close.append(bundle.close)
    return pipe
