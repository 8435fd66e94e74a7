"""Exhaustive search over the planning model: the yardstick for the MILP.

Every combination of one option per stage, every choice of which single-device stages share
a pool (and whether that pool rides on a multi-device stage's replicas), then the best
replica counts for that choice. With the configs fixed, throughput is
the minimum over stages of an increasing function of that stage's devices, so the only way
to raise it is to give the bottleneck one more replica (or pool device): raising the
bottleneck until its device type runs out is optimal, and uses the fewest devices for the
throughput it reaches. Ties go as in the MILP: fewer devices, then quicker configs.
Exponential in the number of stages: for the small cases of the
benchmark (<= 4 stages, <= 8 devices).
"""
from __future__ import annotations

import itertools
import time

from omnigraph.passes.planner.stage_classes import stage_classes
from omnigraph.passes.planner.plan_problem import (
    EPS, Option, PlanProblem, PlanSolution, StagePlan, path_latency, pooled_bytes, ride_key,
)


def exhaustive(problem: PlanProblem) -> PlanSolution | None:
    started = time.perf_counter()
    pools = {p.type: p for p in problem.pools}
    stages = problem.stages
    best: tuple[float, int, float] | None = None
    best_plan: tuple[dict[str, StagePlan], dict[str, int]] | None = None
    twins = {m for cl in stage_classes(problem) if cl.count > 1 for m in cl.members}
    hosts = {i for i, st in enumerate(stages) if st.name not in twins and not st.pinned_devices}
    for combo in itertools.product(*(st.options for st in stages)):
        chosen = {st.name: o for st, o in zip(stages, combo)}
        if problem.latency_target_s is not None and path_latency(problem, chosen) > problem.latency_target_s + EPS:
            continue
        single = [i for i, o in enumerate(combo) if o.devices == 1]
        for n in range(len(single) + 1):
            for shared in itertools.combinations(single, n):
                for ride in _rides(combo, set(shared), hosts):
                    found = _allocate(problem, combo, set(shared), pools, ride)
                    if found is None:
                        continue
                    x, replicas, pool = found
                    used = sum(r * o.devices for r, o in zip(replicas, combo)) + sum(
                        v for t, v in pool.items() if t not in ride)
                    score = (x, -used, -sum(o.cost.latency_s for o in combo))
                    if best is None or _better(score, best):
                        best = score
                        keys = {t: ride_key(t, stages[j].name) for t, j in ride.items()}
                        best_plan = ({st.name: StagePlan(o, r, i in shared, keys.get(o.device_type, "") if i in shared else "")
                                      for i, (st, o, r) in enumerate(zip(stages, combo, replicas))},
                                     {keys.get(t, t): v for t, v in pool.items()})
    if best_plan is None:
        return None
    plan, pool = best_plan
    return PlanSolution(
        throughput=best[0], stages=plan, shared_devices=pool,
        latency_s=path_latency(problem, {n: p.option for n, p in plan.items()}),
        solver="exhaustive", seconds=time.perf_counter() - started,
    )


def _better(a: tuple[float, int, float], b: tuple[float, int, float]) -> bool:
    """Higher throughput (within the MILP's tolerance), then fewer devices, then quicker."""
    if abs(a[0] - b[0]) > 1e-6 * max(a[0], b[0]):
        return a[0] > b[0]
    return a[1:] > b[1:]


def _rides(combo: tuple[Option, ...], shared: set[int], hosts: set[int]) -> list[dict[str, int]]:
    """The ways the pools may go: each on devices of its own ({}), or one type's riding on a
    dedicated multi-device stage of that type ({type: its index}) that may host (as in the
    MILP: one not pinned to devices, with no identical twin)."""
    types = {combo[i].device_type for i in shared}
    return [{}] + [{o.device_type: j} for j, o in enumerate(combo)
                   if j in hosts and j not in shared and o.devices > 1 and o.device_type in types]


def _allocate(problem: PlanProblem, combo: tuple[Option, ...], shared: set[int],
              pools: dict, ride: dict[str, int] | None = None) -> tuple[float, list[int], dict[str, int]] | None:
    """Best throughput for fixed options and sharing: raise the bottleneck while devices last.
    `ride`: pools riding on a stage (type -> its index), which take its time, not devices."""
    ride = ride or {}
    h = problem.headroom
    stages = problem.stages
    left = {t: p.count for t, p in pools.items()}
    replicas = [0 if i in shared else 1 for i in range(len(combo))]
    pool: dict[str, int] = {}
    load: dict[str, float] = {}  # device-seconds per request each pool must give
    for i in shared:
        t = combo[i].device_type
        load[t] = load.get(t, 0.0) + stages[i].visits / (combo[i].shared_rate * h)
        pool[t] = 1
    for t in pool:
        mem = sum(combo[i].cost.mem_per_device for i in shared if combo[i].device_type == t)
        if mem > pools[t].memory_bytes:
            return None
        if t in ride and pooled_bytes(stages[ride[t]], combo[ride[t]]) + sum(
                pooled_bytes(stages[i], combo[i]) for i in shared if combo[i].device_type == t) > pools[t].memory_bytes:
            return None
    for i, o in enumerate(combo):
        left[o.device_type] -= replicas[i] * o.devices
    for t in pool:
        left[t] -= 0 if t in ride else 1
    if any(v < 0 for v in left.values()):
        return None

    def capacities() -> dict[tuple[str, object], float]:
        caps: dict[tuple[str, object], float] = {
            ("stage", i): replicas[i] * combo[i].cost.throughput * h / stages[i].visits
            for i in range(len(combo)) if i not in shared
        }
        caps.update({("pool", t): pool[t] / load[t] for t in pool if t not in ride})
        for t, j in ride.items():  # the host's replicas do its work and the riders'
            caps["stage", j] = replicas[j] / (stages[j].visits / (combo[j].cost.throughput * h) + load[t])
        return caps

    while True:
        caps = capacities()
        x = min(caps.values())
        bottlenecks = [k for k, v in caps.items() if v <= x * (1 + 1e-12)]
        cost: dict[str, int] = {}
        for kind, key in bottlenecks:
            t, n = (combo[key].device_type, combo[key].devices) if kind == "stage" else (key, 1)
            cost[t] = cost.get(t, 0) + n
        if any(cost[t] > left[t] for t in cost):
            return x, replicas, {**pool, **{t: replicas[j] for t, j in ride.items()}}
        for kind, key in bottlenecks:
            if kind == "stage":
                replicas[key] += 1
            else:
                pool[key] += 1
        for t, n in cost.items():
            left[t] -= n
