"""A plan family: one plan per operating point (`compile --target T --mixes chat;image;long`).

Each mix is planned on its own (the planner's replica counts and batches for that traffic),
then every variant is checked by the simulator at every operating point (PlanVariant.serves:
what it serves of that mix run saturated, passes/sim/capacity.py): an operating point is
served by the variant that serves it best, which need not be the one planned for it where
the planner's model and the simulator disagree (off the mix it was planned for, the model can
be far from what the simulator serves on a plan). The variants ride in one RuntimePlan
(`family`), whose own nodes are the first variant's. The runtime switches between them as the
observed load shifts (runtime/replan.py). Variants share the graph: a mix that would change
the graph itself (a prefill/decode split) is not a variant, and planning one is refused.
"""
from __future__ import annotations

from typing import Any

from omnigraph.errors import OmnigraphError
from omnigraph.runtime.plan import PlanVariant, RuntimePlan


def split_mixes(text: str) -> list[str]:
    """`chat;image:0.7,long:0.3` or `chat,image,long` (presets alone): the mixes, in order."""
    parts = [p.strip() for p in (text.split(";") if ";" in text else text.split(","))]
    mixes = [p for p in parts if p]
    if len(mixes) < 2:
        raise OmnigraphError(f"--mixes {text!r}: a family needs two mixes or more",
                             hint="e.g. --mixes chat,image,long (presets) or --mixes 'chat;chat:0.5,long:0.5'")
    if len(set(mixes)) != len(mixes):
        raise OmnigraphError(f"--mixes {text!r}: a mix is listed twice")
    return mixes


def compile_family(spec: Any, target: str, mixes: list[str], plan_options: dict[str, dict[str, Any]] | None = None,
                   check: bool = True) -> RuntimePlan:
    """The spec planned once per mix; the first plan carries them all as its family."""
    from omnigraph.api import compile_spec_plan

    plans, rates = [], []
    for mix in mixes:
        options = {k: dict(v) for k, v in (plan_options or {}).items()}
        options.setdefault("plan-parallel", {})["mix"] = mix
        if "split-prefill-decode" in options:
            options["split-prefill-decode"]["mix"] = mix
        comp, plan = compile_spec_plan(spec, target, options)
        plans.append(plan)
        rates.append(next((op.plan.pipeline_rate for op in comp.module.walk()
                           if getattr(op, "plan", None) is not None), 0.0))
    base = plans[0]
    names = [n.name for n in base.stages()]
    for mix, plan in zip(mixes, plans):
        if [n.name for n in plan.stages()] != names:
            raise OmnigraphError(f"--mixes: the plan for '{mix}' has other stages ({', '.join(n.name for n in plan.stages())}) "
                                 f"than the plan for '{mixes[0]}' ({', '.join(names)}); a family shares one graph",
                                 hint="a prefill/decode split that only some mixes choose changes the graph: "
                                      "pin it with --split, or leave out the TTFT/TPOT targets")
    base.family = [variant(plan, mix, rate) for mix, plan, rate in zip(mixes, plans, rates)]
    if check:  # every variant at every operating point: which serves each best
        check_family(base.family, plans, base.target or target)
    return base


def check_family(family: list[PlanVariant], plans: list[RuntimePlan], target: str) -> None:
    """Set each variant's `serves`: requests/s the simulator serves of each mix on it, run just
    past saturation (passes/sim/capacity.py simulated_capacity)."""
    from omnigraph.passes.planner.workload import parse_mix
    from omnigraph.passes.sim.capacity import modelled_capacity, simulated_capacity
    from omnigraph.target import load_target

    tgt = load_target(target)
    mixes = {m: parse_mix(m) for m in dict.fromkeys(f.mix for f in family)}
    for v, plan in zip(family, plans):
        v.serves = {}
        for m, mix in mixes.items():
            if 0 < modelled_capacity(plan, tgt, mix) < float("inf"):  # else nothing to saturate
                v.serves[m] = round(simulated_capacity(plan, tgt, mix), 6)
        v.simulated_rate = v.serves.get(v.mix)


def variant(plan: RuntimePlan, mix: str, rate: float) -> PlanVariant:
    stages = plan.stages()
    return PlanVariant(name=_name(mix), mix=mix, rate=rate, instances={n.name: n.instances for n in stages},
                       max_batch={n.name: n.batching.max_batch for n in stages})


def _name(mix: str) -> str:
    """A plain name for a mix (variant names are plan keys)."""
    out = "".join(c if c.isalnum() else "_" for c in mix).strip("_")
    return out[:60] or "mix"


# -- judging a family under a shifting mix (the simulator) --------------------------------------
def placements(instances: dict[str, list[Any]]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """A variant's replicas as the simulator places them: per stage, each instance's devices."""
    return {stage: tuple(tuple(i.devices) for i in found) for stage, found in instances.items()}


def shifting_requests(work_fn: Any, phases: list[tuple[str, float, float]], seed: int = 0) -> list[Any]:
    """Poisson arrivals phase after phase: (mix, requests/s, seconds) each, shapes from its mix."""
    import random

    from omnigraph.passes.planner.workload import parse_mix, sample_shapes
    from omnigraph.passes.sim.engine import SimRequest, poisson_arrivals

    out, start = [], 0.0
    rng = random.Random(seed + 1)
    for k, (mix, rate, seconds) in enumerate(phases):
        arrivals = [t for t in poisson_arrivals(rate, max(1, int(rate * seconds * 1.5)), seed + k) if t < seconds]
        shapes = sample_shapes(parse_mix(mix), len(arrivals), seed + k)
        out += [SimRequest(len(out) + i, start + t, work_fn(s, rng)) for i, (t, s) in enumerate(zip(arrivals, shapes))]
        start += seconds
    return out


def as_plan(plan: RuntimePlan, v: PlanVariant) -> RuntimePlan:
    """`plan` running variant `v` throughout: its instances and batches (a static plan)."""
    out = plan.model_copy(deep=True)
    out.family = [v]
    for node in out.stages():
        node.instances = [i.model_copy() for i in v.instances.get(node.name, node.instances)]
        node.batching.max_batch = v.max_batch.get(node.name, node.batching.max_batch)
    return out


def simulate_shift(plan: RuntimePlan, target: str, phases: list[tuple[str, float, float]], *, follow: bool,
                   delay_s: float = 0.0, load_s: float = 0.0, slo: Any = None, seed: int = 0) -> Any:
    """`plan` under the shifting load `phases`. With `follow`, it switches to the variant that
    serves each phase's mix best (RuntimePlan.best_for) `delay_s` after the phase starts (the
    replanner's detection), new replicas loading for `load_s`, and starts on the first
    phase's; without, it stays as compiled (a static plan). A variant's replicas are timed in
    its own config (tp, pp, ep, batch), not the compiled plan's."""
    from omnigraph.passes.planner.workload import parse_mix
    from omnigraph.passes.sim.engine import simulate
    from omnigraph.passes.sim.model import sim_pipeline_from_plan
    from omnigraph.passes.sim.switching import PlanSwitch
    from omnigraph.target import load_target

    tgt = load_target(target)
    every = [s for mix, _, _ in phases for s in parse_mix(mix)]
    pipeline, work_fn = sim_pipeline_from_plan(plan, tgt, every)
    requests = shifting_requests(work_fn, phases, seed)
    by_name = {s.name: s for s in pipeline.stages}
    nodes = {n.name: n for n in plan.stages() if n.name in by_name}
    base = {name: _config(n.instances) for name, n in nodes.items()}
    specs = {(name, base[name], n.batching.max_batch): by_name[name] for name, n in nodes.items()}  # one per config
    switches, start = [], 0.0
    for k, (mix, _, seconds) in enumerate(phases):
        if follow:
            v = plan.best_for(mix)
            keys = {name: (name, _config(v.instances[name]), v.max_batch.get(name, n.batching.max_batch))
                    for name, n in nodes.items() if name in v.instances}
            if any(key not in specs for key in keys.values()):
                timed, _ = sim_pipeline_from_plan(as_plan(plan, v), tgt, every)
                for s in timed.stages:
                    if s.name in keys:
                        specs.setdefault(keys[s.name], s)
            configs = {name: key[1] for name, key in keys.items() if key[1] != base[name]}
            switches.append(PlanSwitch(start + (delay_s if k else 0.0), placements(v.instances),
                                       load_s if k else 0.0, v.name,
                                       specs={name: specs[key] for name, key in keys.items()}, configs=configs))
        start += seconds
    return simulate(pipeline, requests, slo=slo, switches=switches)


def _config(instances: list[Any]) -> tuple[int, int, int]:
    """What a stage's replicas run as (the planner gives a stage's replicas one config): a
    replica in another one is another replica (the runtime loads it anew)."""
    i = instances[0]
    return i.tp, i.pp, i.ep
