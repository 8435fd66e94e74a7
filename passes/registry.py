"""The pass list: every pass by name, and the default order the compiler runs them in.

DESIGN.md's order: verify → infer-types → capture-stages → estimate-cost → plan-parallel →
split-prefill-decode → place-devices → plan-cores → plan-memory → fuse-ops. The planning passes run when the module names a
target (`--target`); without one, compile stops after type inference.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from xdsl.passes import ModulePass, PassPipeline

from omnigraph.passes.capture_stages import CaptureStagesPass
from omnigraph.passes.estimate_cost import EstimateCostPass
from omnigraph.passes.fuse_ops import FuseOpsPass
from omnigraph.passes.infer_types import InferTypesPass
from omnigraph.passes.place_devices import PlaceDevicesPass
from omnigraph.passes.plan_cores import PlanCoresPass
from omnigraph.passes.plan_memory import PlanMemoryPass
from omnigraph.passes.plan_parallel import PlanParallelPass
from omnigraph.passes.split_prefill_decode import SplitPrefillDecodePass
from omnigraph.passes.verify import VerifyPass

PASSES: dict[str, type[ModulePass]] = {
    p.name: p for p in (VerifyPass, InferTypesPass, CaptureStagesPass, EstimateCostPass, PlanParallelPass,
                        SplitPrefillDecodePass, PlaceDevicesPass, PlanCoresPass, PlanMemoryPass, FuseOpsPass)
}
DEFAULT_PIPELINE: tuple[str, ...] = ("verify", "infer-types")
PLANNING_PIPELINE: tuple[str, ...] = ("estimate-cost", "plan-parallel", "split-prefill-decode", "place-devices",
                                      "plan-cores", "plan-memory")
# Exporting every stage takes seconds, so only when kernels are asked for (--emit kernels).
FUSION_PIPELINE: tuple[str, ...] = ("capture-stages", "fuse-ops")


def default_pipeline(planned: bool, fused: bool = False) -> tuple[str, ...]:
    """DESIGN.md's order: capture-stages right after infer-types, fuse-ops last."""
    planning = PLANNING_PIPELINE if planned else ()
    if not fused:
        return DEFAULT_PIPELINE + planning
    return DEFAULT_PIPELINE + FUSION_PIPELINE[:1] + planning + FUSION_PIPELINE[1:]


def build_pipeline(spec: str | None = None, callback=None, options: dict[str, dict[str, Any]] | None = None,
                   planned: bool = False) -> PassPipeline:
    """A PassPipeline from an MLIR-style spec (`verify,infer-types`); the default if None.

    `options` sets pass fields by pass name (e.g. {"plan-parallel": {"mix": "chat"}}),
    over what the spec text gave.
    """
    text = ",".join(default_pipeline(planned)) if spec is None else spec
    if spec is None and not planned and (options or {}).get("split-prefill-decode", {}).get("split"):
        text += ",split-prefill-decode"  # a pinned split needs no target: one instance per half
    if not text.strip():
        return PassPipeline((), callback)
    pipeline = PassPipeline.parse_spec({n: (lambda p=p: p) for n, p in PASSES.items()}, text, callback)
    if options:
        passes = tuple(dataclasses.replace(p, **options[p.name]) if p.name in options else p
                       for p in pipeline.passes)
        pipeline = PassPipeline(passes, callback)
    return pipeline
