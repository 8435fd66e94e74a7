"""The cost model's own figure for a plan: what the planner's rates say it sustains.

`modelled_capacity` scores any RuntimePlan (the planner's, or a placement written by hand) as
the planner scores the plans it chooses among, so that the planner's prediction, the model's
score of another placement and what the simulator (model.py, engine.py) serves on either can be
set side by side: one cost model, optimised by the planner and replayed by the simulator.
`simulated_capacity` is the simulator's figure for the same: what it serves of a mix, saturated.
"""
from __future__ import annotations

from omnigraph.kinds import KINDS
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_rules import stage_cost
from omnigraph.passes.planner.cost_types import ParallelConfig, RequestShape
from omnigraph.passes.planner.offload import HOST_LINK_GB_S
from omnigraph.passes.planner.precision import at_dtype
from omnigraph.passes.planner.stage_options import mixed_cost, stage_works
from omnigraph.passes.sim.engine import burst_arrivals, poisson_arrivals, simulate
from omnigraph.passes.sim.model import _device, _phase, make_requests, plan_graph, sim_pipeline_from_plan
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


# -- what the simulator serves of a plan, saturated ------------------------------------------
SATURATE = 1.2  # arrivals at first at this many times the rate tried: past the plan's capacity
KEPT_UP = 0.95  # a run that served this share of its arrivals or more was not saturated
KNEE = 1.1  # then at this many times what it served: just past it, where it serves most
FILLING = 1.05  # a run whose last third served this much more than its middle third was still filling
LATENCIES = 5.0  # arrivals last this many loaded latencies (the first third is the queue filling)
LEAST, MOST = 600, 4800  # requests per run


def simulated_capacity(plan: RuntimePlan, target: Target, mix: list[RequestShape], *, rate: float | None = None,
                       seed: int = 0, tries: int = 6) -> float:
    """Requests/s the simulator serves of `mix` on `plan` run just past saturation: Poisson
    arrivals for LATENCIES loaded latencies (a burst that fills every replica's batch, timed),
    stopped at the last arrival, and the completions per second over the last two thirds.
    Arrivals come at SATURATE x `rate` (default: the cost model's capacity); a run that kept up
    (the model underrates the plan) runs again at twice the rate, one still filling (its last
    third served more than its middle one) with twice the requests; then at KNEE x what it
    served, while that serves more (unless the first saturated run served the rate tried): an
    overload deeper than that can serve less (a stage whose queue never empties keeps its half
    of a device that it shares with the next one), which is not what the plan sustains.
    `tries` runs at most; the most served is the figure.

    Why saturated: at a load a plan keeps up with, it serves the load offered whatever the plan,
    so a drained run's throughput there cannot rank plans (what differs is the noise of its
    tail)."""
    pipeline, work = sim_pipeline_from_plan(plan, target, mix)
    full = max(s.replicas * s.max_batch for s in pipeline.stages)
    loaded = simulate(pipeline, make_requests(work, mix, burst_arrivals(full), seed)).makespan_s
    offered = SATURATE * (rate or modelled_capacity(plan, target, mix))
    n, best, saturated = None, 0.0, False
    for _ in range(max(1, tries)):
        n = n or int(min(MOST, max(LEAST, offered * LATENCIES * loaded)))
        arrivals = poisson_arrivals(offered, n, seed)
        third = arrivals[-1] / 3
        finished = [r.finish_s for r in simulate(pipeline, make_requests(work, mix, arrivals, seed),
                                                 until_s=arrivals[-1]).per_request]
        middle, end = (sum(1 for f in finished if a * third <= f < b * third) / third for a, b in ((1, 2), (2, 4)))
        served, kept = (middle + end) / 2, max(middle, end) >= KEPT_UP * offered
        if end > FILLING * middle and n < MOST:
            n = min(MOST, 2 * n)
            continue
        if kept and not saturated:
            offered, n = 2 * offered, None
            continue
        gained, best = served > best * 1.02, max(best, served)
        if kept or not gained or (not saturated and served >= KEPT_UP * offered / SATURATE):
            break  # at the knee, no better nearer it, or the overload cost nothing
        saturated, offered, n = True, KNEE * served, None
    return best
