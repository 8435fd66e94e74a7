"""The Python API: `omnigraph.load(spec).run(inputs)`, and streaming events.

    import omnigraph
    with omnigraph.load("examples/speak.yaml") as pipe:
        out = pipe.run({"prompt": "The capital of France is"})
        for kind, name, value in pipe.stream({"prompt": "Hi"}):
            ...
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omnigraph.runtime.local import LoadHook, LocalBackend, RequestHandle
from omnigraph.runtime.plan import RuntimePlan


def compile_plan(spec: str | Path, target: str | None = None) -> RuntimePlan:
    """Compile a spec file (.yaml, .og, .mlir) down to its runtime plan."""
    from omnigraph.codegen.plan_emitter import emit_plan
    from omnigraph.compiler import compile_path

    devices = None
    if target is not None:
        from omnigraph.target import load_target

        t = load_target(target)
        target, devices = t.target, t.devices
    plan = emit_plan(compile_path(spec, target=target).module, devices)
    plan.module_paths = [str(Path(spec).resolve().parent)]  # `py:` modules beside the spec
    return plan


class Pipeline:
    """A loaded pipeline, ready to serve requests on this machine."""

    def __init__(self, plan: RuntimePlan, *, on_load: LoadHook | None = None, max_inflight: int = 256) -> None:
        self.plan = plan
        self.backend = LocalBackend(plan, on_load=on_load, max_inflight=max_inflight)

    def submit(self, inputs: dict[str, Any], *, timeout: float | None = None) -> RequestHandle:
        return self.backend.submit(inputs, timeout=timeout)

    def run(self, inputs: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return self.backend.run(inputs, timeout=timeout)

    def stream(self, inputs: dict[str, Any], *, timeout: float | None = None) -> Iterator[tuple[str, str, Any]]:
        """Events as they happen: ("chunk", output, piece), ("output", name, value), ("done", "", outputs)."""
        return self.submit(inputs, timeout=timeout).events()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(spec: str | Path | RuntimePlan, *, target: str | None = None, on_load: LoadHook | None = None) -> Pipeline:
    """Compile (if needed) and load a pipeline: a spec file or a RuntimePlan."""
    plan = spec if isinstance(spec, RuntimePlan) else compile_plan(spec, target)
    return Pipeline(plan, on_load=on_load)
