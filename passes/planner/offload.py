"""Expert offload: a MoE config that is too big for HBM may keep its cold experts in host memory.

Only the routed experts move (attention, shared experts and embeddings stay resident).
Each forward step then fetches the offloaded experts it touches over the host link: with
batch b tokens choosing k of E experts each, an expert is touched with probability
1 - (1 - k/E)^b, so small decode batches fetch little and big prefills fetch nearly all.
That fetch time is added to every step; the config is kept only if it fits afterwards.
"""
from __future__ import annotations

from dataclasses import replace

from omnigraph.passes.planner.cost_types import ArchProfile, StageCost, StageWork

HOST_LINK_GB_S = 55.0  # PCIe 5.0 x16, one direction, achievable
MAX_OFFLOAD = 0.9  # of the experts on a device; the hottest tenth always stays resident


def touched_fraction(profile: ArchProfile, tokens: int) -> float:
    if not profile.experts:
        return 1.0
    return 1.0 - (1.0 - profile.experts_per_token / profile.experts) ** max(1, tokens)


def with_offload(cost: StageCost, profile: ArchProfile, works: list[StageWork], usable: int) -> StageCost | None:
    """The same config with enough experts in host memory to fit in `usable`, or None."""
    short = cost.mem_per_device - usable
    if short <= 0 or not profile.expert_params or not profile.params:
        return None
    experts_here = cost.weight_bytes_per_device * profile.expert_params / profile.params
    if short > experts_here * MAX_OFFLOAD:
        return None
    moved = int(short * 1.02) + 1  # a little slack for the allocator
    fraction = moved / experts_here
    steps = sum(w.decode_steps + w.repeats for w in works) / max(1, len(works))
    prefill = max(1, sum(w.tokens for w in works) // max(1, len(works)))
    # The prefill touches most experts; each decode step (at the config's batch) a few.
    fetch_s = moved * (touched_fraction(profile, prefill) + (steps - 1) * touched_fraction(profile, cost.config.batch))
    fetch_s /= HOST_LINK_GB_S * 1e9
    latency = cost.latency_s + fetch_s
    return replace(
        cost,
        mem_per_device=cost.mem_per_device - moved,
        weight_bytes_per_device=cost.weight_bytes_per_device - moved,
        latency_s=latency,
        first_output_s=cost.first_output_s + moved * touched_fraction(profile, prefill) / (HOST_LINK_GB_S * 1e9),
        throughput=cost.throughput * cost.latency_s / latency,
        breakdown={**cost.breakdown, "offload_bytes": float(moved), "offload_fetch_s": fetch_s,
                   "offload_fraction": fraction},
    )
