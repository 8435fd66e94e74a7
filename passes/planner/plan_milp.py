"""Solve the planning problem (plan_problem.py) as a MILP with PuLP: HiGHS when highspy is
installed, else the CBC that ships with PuLP.

Two solves: first the highest throughput X, then, holding X, the fewest devices (and among
those the quickest configs), so that a stage gets no replicas it cannot use and no batch
that only adds waiting. Options dominated by another of the same stage
(no faster, no smaller, no quicker to answer, on the same device type and group size) are
dropped first; they can never be in an optimum and they slow the solver down.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import replace
from collections.abc import Iterator
from typing import Any

import pulp

from omnigraph.passes.planner.plan_problem import (
    EPS, Option, PlanProblem, PlanSolution, StageChoices, StagePlan, path_latency, pool_key,
)

TIME_LIMIT_S = 20.0


def prune(problem: PlanProblem) -> PlanProblem:
    """Drop dominated options, stage by stage."""
    timed = problem.latency_target_s is not None

    def key(o: Option, with_mem: bool) -> tuple[float, ...]:  # smaller is better everywhere
        c = o.cost
        k: tuple[float, ...] = (-c.throughput,)
        if with_mem:  # matter only to a single-device option that may share a pool
            k += (-o.shared_rate, c.mem_per_device)
        if timed:
            k += (c.latency_s, c.first_output_s)
        return k

    def dominates(p: Option, o: Option, first: bool) -> bool:
        if p.device_type != o.device_type or p.devices > o.devices:
            return False
        kp, ko = key(p, o.devices == 1), key(o, o.devices == 1)
        return all(a <= b for a, b in zip(kp, ko)) and (kp != ko or first)

    stages = []
    for st in problem.stages:
        kept: list[Option] = []
        for i, o in enumerate(st.options):
            dominated = any(dominates(p, o, j < i or p.devices < o.devices) for j, p in enumerate(st.options) if j != i)
            if not dominated:
                kept.append(o)
        stages.append(replace(st, options=tuple(kept)))
    return replace(problem, stages=tuple(stages))


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints a banner from C on creation, whatever msg says: hide fd 1 meanwhile."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced sys.stdout
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _solve(m: pulp.LpProblem, solver: pulp.LpSolver) -> int:
    with _quiet_stdout():
        return m.solve(solver)


def _solver(time_limit: float) -> pulp.LpSolver:
    highs = pulp.HiGHS(msg=False, timeLimit=time_limit)
    return highs if highs.available() else pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)


def solve(problem: PlanProblem, time_limit: float = TIME_LIMIT_S, pools_per_type: int = 1) -> PlanSolution | None:
    """The best plan, or None when no assignment is feasible (the caller explains why). With
    `pools_per_type` > 1 the shared stages of a type may split into that many pools."""
    started = time.perf_counter()
    problem = prune(problem)
    if any(not st.options for st in problem.stages):
        return None
    pools = {p.type: p for p in problem.pools}
    h = problem.headroom
    # An upper bound on X: every device of a stage's best type on that stage alone.
    def most(st: StageChoices, o: Option) -> int:
        """Replicas it may have: what its pinned devices or its type's pool hold."""
        return (st.pinned_devices or pools[o.device_type].count) // o.devices

    x_ub = min(
        max(o.cost.throughput * h * most(st, o) for o in st.options) / st.visits
        for st in problem.stages
    )
    if x_ub <= 0:
        return None
    K = {t: max(1, min(pools_per_type, p.count)) for t, p in pools.items()}

    m = pulp.LpProblem("plan", pulp.LpMaximize)
    X = m.add_variable("X", 0, x_ub)
    idx = [(s, i) for s, st in enumerate(problem.stages) for i in range(len(st.options))]
    y = {k: m.add_variable(f"y_{k[0]}_{k[1]}", cat="Binary") for k in idx}
    r = {}
    z: dict[tuple[int, int, int], Any] = {}  # (stage, option, pool) -> in that shared pool
    w: dict[tuple[int, int, int], Any] = {}  # its device-seconds per second there
    for s, i in idx:
        st, o = problem.stages[s], problem.stages[s].options[i]
        cap = most(st, o)
        r[s, i] = m.add_variable(f"r_{s}_{i}", 0, cap, cat="Integer")
        m += r[s, i] <= cap * y[s, i]
        if st.pinned_devices:  # pinned on devices of its own choosing: its replicas tile them
            m += r[s, i] * o.devices == st.pinned_devices * y[s, i]
        elif st.replicas is not None:  # pinned by the spec: exactly that many, each its own
            m += r[s, i] == st.replicas * y[s, i]
        elif o.devices == 1:
            per_request = st.visits * (1 / (o.shared_rate * h) + problem.swap_seconds(st, o))
            big = per_request * x_ub
            for k in range(K[o.device_type]):
                z[s, i, k] = m.add_variable(f"z_{s}_{i}_{k}", cat="Binary")
                w[s, i, k] = m.add_variable(f"w_{s}_{i}_{k}", 0)
                m += w[s, i, k] >= per_request * X - big * (1 - z[s, i, k])
            pooled = pulp.lpSum(z[s, i, k] for k in range(K[o.device_type]))
            m += pooled <= y[s, i]
            m += r[s, i] <= cap * (y[s, i] - pooled)
            m += r[s, i] >= y[s, i] - pooled
        else:
            m += r[s, i] >= y[s, i]
    S = {(t, k): m.add_variable(f"S_{n}_{k}", 0, p.count, cat="Integer")
         for n, (t, p) in enumerate(pools.items()) for k in range(K[t])}
    for s, st in enumerate(problem.stages):
        ks = [k for k in idx if k[0] == s]
        m += pulp.lpSum(y[k] for k in ks) == 1
        shared = pulp.lpSum(v for (zs, _, _), v in z.items() if zs == s)
        m += (pulp.lpSum(st.options[i].cost.throughput * h * r[s, i] for _, i in ks)
              >= st.visits * X - st.visits * x_ub * shared)
    for t, pool in pools.items():  # pinned stages' devices left the pool before (pinned_counts)
        of_type = [k for k in idx if problem.stages[k[0]].options[k[1]].device_type == t
                   and not problem.stages[k[0]].pinned_devices]
        m += (pulp.lpSum(problem.stages[s].options[i].devices * r[s, i] for s, i in of_type)
              + pulp.lpSum(S[t, k] for k in range(K[t])) <= pool.count)
        for k in range(K[t]):
            members = [(s, i) for s, i in of_type if (s, i, k) in z]
            m += pulp.lpSum(w[s, i, k] for s, i in members) <= S[t, k]
            if t in problem.swap:  # swapped weights in host memory: the device holds one stage's at a time
                slot = m.add_variable(f"slot_{t}_{k}", 0)
                held = []
                for s, i in members:
                    st, o = problem.stages[s], problem.stages[s].options[i]
                    weights = o.cost.weight_bytes_per_device if problem.swaps(st, o) else 0
                    m += slot >= weights * z[s, i, k]
                    held.append((_pooled_bytes(st, o) - weights) * z[s, i, k])
                m += pulp.lpSum(held) + slot <= pool.memory_bytes
            else:
                m += (pulp.lpSum(_pooled_bytes(problem.stages[s], problem.stages[s].options[i]) * z[s, i, k]
                                 for s, i in members) <= pool.memory_bytes)
            for s, i in members:
                m += S[t, k] >= z[s, i, k]
            if k:  # pools of a type are interchangeable: order them, largest first
                m += S[t, k - 1] >= S[t, k]
    _order_identical_stages(m, problem, z, K)
    if problem.latency_target_s is not None:
        _latency_constraints(m, problem, y)

    devices_used = (pulp.lpSum(problem.stages[s].options[i].devices * r[s, i] for s, i in idx
                               if not problem.stages[s].pinned_devices) + pulp.lpSum(S.values()))
    solver = _solver(time_limit)
    m.setObjective(X)
    if _solve(m, solver) != pulp.LpStatusOptimal or (X.value() or 0) <= EPS:
        return None
    best = X.value()
    found = {v.name: v.value() for v in m.variables()}  # the first solve's plan, should the second find none
    m += X >= best * (1 - 1e-6)
    m.sense = pulp.LpMinimize
    # Fewest devices; among those, the quickest configs (a tie-break worth less than a device).
    slowest = sum(max(o.cost.latency_s for o in st.options) for st in problem.stages) or 1.0
    latency = pulp.lpSum(problem.stages[s].options[i].cost.latency_s * y[s, i] for s, i in idx)
    m.setObjective(devices_used + 0.5 / slowest * latency)
    # With several pools the second solve only trims devices from a plan already in hand: a
    # shorter limit (the first plan is kept if it finds nothing better).
    tidy = solver if max(K.values(), default=1) <= 1 else _solver(time_limit / 4)
    if _solve(m, tidy) != pulp.LpStatusOptimal or any(v.value() is None for v in y.values()):
        for v in m.variables():  # stopped with no plan in hand (a time limit): keep the first
            v.varValue = found.get(v.name)

    chosen: dict[str, StagePlan] = {}
    for s, st in enumerate(problem.stages):
        i = max(range(len(st.options)), key=lambda i: y[s, i].value() or 0)
        t = st.options[i].device_type
        pool = next((k for k in range(K[t]) if (s, i, k) in z and (z[s, i, k].value() or 0) > 0.5), None)
        chosen[st.name] = StagePlan(st.options[i], round(r[s, i].value() or 0), pool is not None,
                                    pool_key(t, pool) if pool else "")
    latency_s = path_latency(problem, {n: p.option for n, p in chosen.items()})
    return PlanSolution(
        throughput=best, stages=chosen,
        shared_devices={pool_key(t, k): round(v.value() or 0) for (t, k), v in S.items()},
        latency_s=latency_s, solver=solver.name, seconds=time.perf_counter() - started,
    )


def _pooled_bytes(st: StageChoices, o: Option) -> int:
    """What a shared stage holds on each pool device, as plan-memory will count it."""
    return o.cost.mem_per_device + 2 * o.cost.config.batch * st.in_bytes


def _order_identical_stages(m: pulp.LpProblem, problem: PlanProblem, z: dict, K: dict[str, int]) -> None:
    """Stages with the same options, load and producers (a fan-in of like encoders) are
    interchangeable: any plan can swap them. Ordering their pools (0: dedicated, k+1: pool k)
    removes those swaps, which the solver would otherwise search one by one."""
    if max(K.values(), default=1) <= 1:
        return
    groups: dict[tuple, list[int]] = {}
    for s, st in enumerate(problem.stages):
        options = tuple((o.device_type, o.dtype, o.devices, o.cost.config, o.cost.throughput, o.cost.mem_per_device,
                         o.cost.latency_s, o.cost.first_output_s, o.shared_rate) for o in st.options)
        groups.setdefault((options, st.visits, st.preds, st.replicas), []).append(s)

    def pool_index(s: int) -> pulp.LpAffineExpression:
        return pulp.lpSum((k + 1) * v for (zs, _, k), v in z.items() if zs == s)

    for members in groups.values():
        for a, b in zip(members, members[1:]):
            m += pool_index(a) <= pool_index(b)


def _latency_constraints(m: pulp.LpProblem, problem: PlanProblem, y: dict) -> None:
    """Finish time T_s of every stage along the graph; the last must meet the target."""
    T = {st.name: m.add_variable(f"T_{s}", 0) for s, st in enumerate(problem.stages)}
    pos = {st.name: s for s, st in enumerate(problem.stages)}

    def chosen(s: int, attr: str) -> pulp.LpAffineExpression:
        return pulp.lpSum(getattr(o.cost, attr) * y[s, i] for i, o in enumerate(problem.stages[s].options))

    for s, st in enumerate(problem.stages):
        own = chosen(s, "latency_s")
        m += T[st.name] >= own
        for pred, stream in st.preds:
            if pred not in pos:
                continue
            if stream:
                p = pos[pred]
                m += T[st.name] >= T[pred] - chosen(p, "latency_s") + chosen(p, "first_output_s") + own
                m += T[st.name] >= T[pred]
            else:
                m += T[st.name] >= T[pred] + own
        m += T[st.name] <= problem.latency_target_s
