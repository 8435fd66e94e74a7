"""The pass list: every pass by name, and the default order the compiler runs them in.

Later phases append to DEFAULT_PIPELINE in the order DESIGN.md gives:
verify → infer-types → capture-stages → estimate-cost → plan-parallel →
place-devices → plan-memory → fuse-ops.
"""
from __future__ import annotations

from xdsl.passes import ModulePass, PassPipeline

from omnigraph.passes.infer_types import InferTypesPass
from omnigraph.passes.verify import VerifyPass

PASSES: dict[str, type[ModulePass]] = {p.name: p for p in (VerifyPass, InferTypesPass)}
DEFAULT_PIPELINE: tuple[str, ...] = ("verify", "infer-types")


def build_pipeline(spec: str | None = None, callback=None) -> PassPipeline:
    """A PassPipeline from an MLIR-style spec (`verify,infer-types`); the default if None."""
    text = ",".join(DEFAULT_PIPELINE) if spec is None else spec
    if not text.strip():
        return PassPipeline((), callback)
    return PassPipeline.parse_spec({n: (lambda p=p: p) for n, p in PASSES.items()}, text, callback)
