"""The cost model's own figure for a plan: what the planner's rates say it sustains.

`modelled_capacity` scores any RuntimePlan (the planner's, or a placement written by hand) as
the planner scores the plans it chooses among, so that the planner's prediction, the model's
score of another placement and what the simulator (model.py, engine.py) serves on either can be
set side by side: one cost model, optimised by the planner and replayed by the simulator.
"""
from __future__ import annotations

from omnigraph.kinds import KINDS
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_rules import stage_cost
from omnigraph.passes.planner.cost_types import ParallelConfig, RequestShape
from omnigraph.passes.planner.offload import HOST_LINK_GB_S
from omnigraph.passes.planner.precision import at_dtype
from omnigraph.passes.planner.stage_options import mixed_cost, stage_works
from omnigraph.passes.sim.model import _device, _phase, plan_graph
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.target import Target


def modelled_capacity(plan: RuntimePlan, target: Target, mix: list[RequestShape], *,
                      loop_iters: dict[str, float] | None = None) -> float:
    """Requests/s the cost model says `plan` sustains with its busiest device fully used: the
    planner's measure (plan_problem.throughput_of at a utilisation of 1), for any placement,
    the planner's or one written by hand, to set beside what the simulator serves.

    Each stage runs its plan's config (tp, pp, ep, batch) on the device its first instance is
    on, at the rate the planner gives that config for the mix (stage_options: the same works,
    the same mixed cost). A stage's traffic (visits x X) splits evenly over its instances, and
    each request an instance serves takes 1 / rate of its devices' time (plus its weights' load,
    shared by the batch, where it swaps). Stages that share a device share it as the simulator
    shares it (processor sharing, engine.py): a batch stage runs when it has work, so the loads
    of those add up, as a shared pool's do; a continuously batched (AR) stage steps as long as
    any of its sequences runs, so it takes an equal turn with every other such stage on the
    device whatever its load: c of them need c x the largest of their loads."""
    graph = plan_graph(plan, loop_iters)
    works = stage_works(graph.ordered(), mix)
    batch_load: dict[str, float] = {}  # per device, per request/s: the batch stages' seconds
    ar_loads: dict[str, list[float]] = {}  # per device: each AR stage instance's
    for name, st in graph.stages.items():
        node = st.node
        inst = node.instances[0]
        at = _device(target, name, inst.devices, inst.pp)
        profile = at_dtype(profile_stage(node.kind, node.model, node.params), node.resources.dtype)
        cfg = ParallelConfig(tp=inst.tp, pp=inst.pp, ep=inst.ep, batch=node.batching.max_batch)
        cost = mixed_cost([stage_cost(node.kind, profile, w, cfg, at.device, at.link, at.inter, at.hop, at.hop_inter)
                           for w in works[name]], mix)
        seconds = 1 / cost.throughput
        if node.resources.swap:
            seconds += cost.weight_bytes_per_device / (HOST_LINK_GB_S * 1e9) / cfg.batch
        share = st.visits * seconds / len(node.instances)
        stepping = KINDS[node.kind].traits.autoregressive and _phase(node) != "prefill"  # _sim_stage's "ar"
        for i in node.instances:
            for d in dict.fromkeys(i.devices):
                if stepping:
                    ar_loads.setdefault(d, []).append(share)
                else:
                    batch_load[d] = batch_load.get(d, 0.0) + share
    busiest = max((batch_load.get(d, 0.0) + len(ar_loads.get(d, ())) * max(ar_loads.get(d, ()), default=0.0)
                   for d in {*batch_load, *ar_loads}), default=0.0)
    return 1 / busiest if busiest > 0 else float("inf")
