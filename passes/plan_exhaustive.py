"""Brute force over every assignment of the planning model: the yardstick for the MILP.

Tries every option of every stage, dedicated with every replica count that fits or shared,
and gives every device left over to the shared pools (more pool devices never hurt).
Exponential: meant for the small cases of the benchmark (<= 4 stages, <= 8 devices).
"""
from __future__ import annotations

import time

from omnigraph.passes.plan_problem import (
    EPS, PlanProblem, PlanSolution, StagePlan, path_latency, throughput_of,
)


def exhaustive(problem: PlanProblem) -> PlanSolution | None:
    started = time.perf_counter()
    pools = {p.type: p for p in problem.pools}
    best: tuple[float, int] | None = None  # (throughput, -devices used)
    best_plan: tuple[dict[str, StagePlan], dict[str, int]] | None = None
    stages = problem.stages

    def leaf(plan: dict[str, StagePlan], left: dict[str, int]) -> None:
        nonlocal best, best_plan
        shared_types = {p.option.device_type for p in plan.values() if p.shared}
        for t in shared_types:
            mem = sum(p.option.cost.mem_per_device for p in plan.values()
                      if p.shared and p.option.device_type == t)
            if left[t] < 1 or mem > pools[t].memory_bytes:
                return
        if problem.latency_target_s is not None:
            if path_latency(problem, {n: p.option for n, p in plan.items()}) > problem.latency_target_s + EPS:
                return
        pool = {t: left[t] for t in shared_types}
        x = throughput_of(problem, plan, pool)
        if x <= EPS:
            return
        # Fewest devices for this X: shrink pools and replica counts while X holds.
        used = sum(p.devices for p in plan.values()) + sum(pool.values())
        for t in shared_types:
            while pool[t] > 1 and throughput_of(problem, plan, {**pool, t: pool[t] - 1}) >= x * (1 - 1e-9):
                pool[t] -= 1
                used -= 1
        score = (x, -used)
        if best is None or score > best:
            best, best_plan = score, (dict(plan), pool)

    def walk(s: int, plan: dict[str, StagePlan], left: dict[str, int]) -> None:
        if s == len(stages):
            leaf(plan, left)
            return
        st = stages[s]
        for o in st.options:
            t = o.device_type
            if o.devices == 1:
                plan[st.name] = StagePlan(o, 0, True)
                walk(s + 1, plan, left)
            for n in range(1, left[t] // o.devices + 1):
                plan[st.name] = StagePlan(o, n, False)
                walk(s + 1, plan, {**left, t: left[t] - n * o.devices})
        plan.pop(st.name, None)

    walk(0, {}, {t: p.count for t, p in pools.items()})
    if best_plan is None:
        return None
    plan, pool = best_plan
    # Drop replicas that X does not need (the MILP's second solve does the same).
    x = best[0]
    for name in list(plan):
        sp = plan[name]
        while not sp.shared and sp.replicas > 1:
            fewer = {**plan, name: StagePlan(sp.option, sp.replicas - 1, False)}
            if throughput_of(problem, fewer, pool) < x * (1 - 1e-9):
                break
            plan, sp = fewer, fewer[name]
    return PlanSolution(
        throughput=x, stages=plan, shared_devices=pool,
        latency_s=path_latency(problem, {n: p.option for n, p in plan.items()}),
        solver="exhaustive", seconds=time.perf_counter() - started,
    )
