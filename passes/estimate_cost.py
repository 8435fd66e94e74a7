"""`estimate-cost`: record on every stage what the cost rules know of its module.

Each `omni.stage` (in loops too) gets a `cost` dictionary: parameter count and bytes,
active parameters, KV bytes per token, layers, heads, KV heads, experts and where the
numbers come from (`meta`: counted on a weightless instance; `config`: estimated). The
planner reads the same profiles (arch_profile.py caches them); the attribute makes them
visible in printed IR. A module that cannot be built never fails the compile: its stage is
estimated, with a `note` saying why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xdsl.context import Context
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp
from xdsl.passes import ModulePass

from omnigraph.dialect.checks import params_of
from omnigraph.dialect.ops import StageOp
from omnigraph.dialect.values import to_attr
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_types import ArchProfile


def cost_summary(profile: ArchProfile) -> dict[str, Any]:
    """The profile's fields as the `cost` attribute shows them, in a fixed order."""
    summary: dict[str, Any] = {
        "params": profile.params,
        "param_bytes": profile.param_bytes,
        "active_params": profile.active_params,
        "kv_bytes_per_token": profile.kv_bytes_per_token,
        "layers": profile.layers,
        "heads": profile.heads,
        "kv_heads": profile.kv_heads,
        "experts": profile.experts,
        "source": profile.source,
    }
    if profile.experts:
        summary["experts_per_token"] = profile.experts_per_token
        summary["expert_params"] = profile.expert_params
    if profile.encoder_params:
        summary["encoder_params"] = profile.encoder_params
    if profile.note:
        summary["note"] = profile.note
    return summary


@dataclass(frozen=True)
class EstimateCostPass(ModulePass):
    name = "estimate-cost"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for stage in op.walk():
            if isinstance(stage, StageOp):
                profile = profile_stage(stage.kind.data, stage.model.data if stage.model else None,
                                        params_of(stage))
                stage.properties["cost"] = DictionaryAttr(
                    {k: to_attr(v) for k, v in cost_summary(profile).items()})
