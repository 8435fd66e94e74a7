"""A quick plan to start the MILP from: on a wide graph of many distinct stages HiGHS can
spend most of its budget before its own heuristics find a good plan; this one takes
milliseconds and is usually within a few percent.

For a throughput X, every stage class takes the option that needs the fewest devices for X
(dedicated replicas, or its load in its type's one shared pool); then, from the stage whose
dedicated devices the pool saves most per byte it holds, classes move into the pool while it
has memory. X is bisected to the highest that fits the devices. Latency targets and swapping
are left to the MILP (a start that breaks them is dropped by the solver).
"""
from __future__ import annotations

import math

from omnigraph.passes.planner.plan_problem import (
    Option, PlanProblem, PlanSolution, StagePlan, path_latency, pooled_bytes, throughput_of,
)
from omnigraph.passes.planner.stage_classes import StageClass, stage_classes

ROUNDS = 30  # bisection steps: X to about 1e-9 of the bound


def greedy_plan(problem: PlanProblem, x_ub: float) -> PlanSolution | None:
    """The best plan the greedy fill finds at or below `x_ub` (None: none at any X)."""
    classes = stage_classes(problem)
    lo, hi, best = 0.0, x_ub, None
    for _ in range(ROUNDS):
        x = (lo + hi) / 2
        found = _fill(problem, classes, x)
        if found is None:
            hi = x
        else:
            lo, best = x, found
    if best is None:
        return None
    stages, shared = best
    x = throughput_of(problem, stages, shared)
    if x <= 0:
        return None
    latency = path_latency(problem, {n: p.option for n, p in stages.items()})
    return PlanSolution(throughput=x, stages=stages, shared_devices=shared, latency_s=latency, solver="greedy")


def _replicas(cl: StageClass, o: Option, x: float, h: float) -> int:
    st = cl.choices
    if st.pinned_devices:
        return st.pinned_devices // o.devices
    if st.replicas is not None:
        return st.replicas
    return max(1, math.ceil(st.visits * x / (o.cost.throughput * h) - 1e-9))


def _fill(problem: PlanProblem, classes: list[StageClass], x: float) -> tuple[dict[str, StagePlan], dict[str, int]] | None:
    h = problem.headroom
    counts = {p.type: p.count for p in problem.pools}
    memory = {p.type: p.memory_bytes for p in problem.pools}
    chosen: dict[int, tuple[Option, int]] = {}  # class -> (option, dedicated replicas per member)
    moves: list[tuple[float, int]] = []  # (devices saved per byte held, class) for the pool
    used = {t: 0 for t in counts}
    for g, cl in enumerate(classes):
        st = cl.choices
        feasible = [(o, _replicas(cl, o, x, h)) for o in st.options]
        feasible = [(o, r) for o, r in feasible if r * o.cost.throughput * h >= st.visits * x * (1 - 1e-9)]
        poolable = [o for o in st.options if o.devices == 1 and st.replicas is None and not st.pinned_devices]
        if not feasible and not poolable:
            return None
        if feasible:
            o, r = min(feasible, key=lambda f: f[0].devices * f[1] / counts[f[0].device_type])
        else:  # only the pool can hold it at this X
            o, r = min(poolable, key=lambda o: pooled_bytes(st, o)), 0
        chosen[g] = (o, r)
        used[o.device_type] += cl.count * r * o.devices
        if o.devices == 1 and st.replicas is None and not st.pinned_devices:
            load = st.visits * x * (1 / (o.shared_rate * h) + problem.swap_seconds(st, o))
            moves.append(((r - load) / max(1, pooled_bytes(st, o)), g))
    pool_load = {t: 0.0 for t in counts}
    pool_bytes = {t: 0 for t in counts}
    pooled: dict[int, int] = {}  # class -> members in the pool
    for saving, g in sorted(moves, reverse=True):
        cl, (o, r) = classes[g], chosen[g]
        t, st = o.device_type, cl.choices
        load = st.visits * x * (1 / (o.shared_rate * h) + problem.swap_seconds(st, o))
        for _ in range(cl.count):
            fits = pool_bytes[t] + pooled_bytes(st, o) <= memory[t]
            if not fits or (saving <= 0 and r > 0):
                break
            pooled[g] = pooled.get(g, 0) + 1
            pool_bytes[t] += pooled_bytes(st, o)
            pool_load[t] += load
            used[t] -= r * o.devices
    shared = {t: math.ceil(load - 1e-9) if load > 0 else 0 for t, load in pool_load.items()}
    if any(used[t] + shared[t] > counts[t] for t in counts):
        return None
    if any(r == 0 and pooled.get(g, 0) < classes[g].count for g, (_, r) in chosen.items()):
        return None  # a member only the pool can hold found no room there
    stages: dict[str, StagePlan] = {}
    for g, cl in enumerate(classes):
        o, r = chosen[g]
        for i, member in enumerate(cl.members):
            stages[member] = StagePlan(o, 0, True) if i < pooled.get(g, 0) else StagePlan(o, r, False)
    return stages, shared
