"""Solve the planning problem (plan_problem.py) as a MILP with PuLP (milp_solver.py).

Two solves: first the highest throughput X, then, holding X, the fewest devices (and among
those the quickest configs), so that a stage gets no replicas it cannot use and no batch
that only adds waiting. Options dominated by another of the same stage
(no faster, no smaller, no quicker to answer, on the same device type and group size) are
dropped first; they can never be in an optimum and they slow the solver down.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pulp

from omnigraph.passes.planner.milp_solver import SOLVER_NAME, make_solver, ran_out_of_time, run_solver, solved_gap
from omnigraph.passes.planner.plan_greedy import greedy_plan
from omnigraph.passes.planner.plan_problem import (
    EPS, Option, PlanProblem, PlanSolution, StageChoices, StagePlan, option_index, path_latency, pool_key,
    pooled_bytes, rated_as, ride_key, throughput_of,
)
from omnigraph.passes.planner.stage_classes import StageClass, stage_classes

# Pools ride on a stage's replicas only on targets with at most this many devices of the type:
# there a pool's whole devices are a real share of the target; on a large cluster they are a
# rounding error, and the host choices' binaries slow a search that has thousands of replicas.
RIDE_MAX_DEVICES = 32
RIDE_HOSTS = 8  # host options considered per device type, the heaviest first
TIME_LIMIT_S = 20.0  # a search that has found no plan at all by its budget goes on this long
MIN_SOLVE_S = 0.1
GIB = float(1 << 30)  # memory rows in GiB: in bytes their 1e10 coefficients beside rates of 1e-3 slow HiGHS down


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
    pruned: dict[str, tuple[Option, ...]] = {}  # like stages (a fan-in of encoders) are pruned once
    for st in problem.stages:
        like = repr(st.options)
        if like not in pruned:
            pruned[like] = tuple(o for i, o in enumerate(st.options) if not any(
                dominates(p, o, j < i or p.devices < o.devices) for j, p in enumerate(st.options) if j != i))
        stages.append(replace(st, options=pruned[like]))
    return replace(problem, stages=tuple(stages))


def solve(problem: PlanProblem, time_limit: float = TIME_LIMIT_S, pools_per_type: int = 1,
          start: PlanSolution | None = None) -> PlanSolution | None:
    """The best plan, or None when no assignment is feasible (the caller explains why). With
    `pools_per_type` > 1 the shared stages of a type may split into that many pools. `start`:
    a plan to start the search from (the previous refinement round's)."""
    started = time.perf_counter()
    problem = prune(problem)
    if any(not st.options for st in problem.stages):
        return None
    classes = stage_classes(problem)
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
    # And the devices' time: every request takes at least each stage's cheapest device-seconds.
    # Far tighter on wide graphs, and every big-M below is scaled by it.
    floor = sum(min(_device_seconds(problem, st, o) for o in st.options) for st in problem.stages
                if not st.pinned_devices)
    if floor > 0:
        x_ub = min(x_ub, sum(p.count for p in problem.pools) / floor)
    if x_ub <= 0:
        return None
    K = {t: max(1, min(pools_per_type, p.count)) for t, p in pools.items()}

    m = pulp.LpProblem("plan", pulp.LpMaximize)
    X = m.add_variable("X", 0, x_ub)
    idx = [(g, i) for g, cl in enumerate(classes) for i in range(len(cl.choices.options))]
    y = {k: m.add_variable(f"y_{k[0]}_{k[1]}", cat="Binary") for k in idx}
    r = {}  # (class, option) -> dedicated replicas of each dedicated member
    replicas: dict[tuple[int, int], Any] = {}  # (class, option) -> dedicated replicas of all its members
    z: dict[tuple[int, int, int], Any] = {}  # (class, option, pool) -> its members in that shared pool
    held: dict[tuple[int, int, int], Any] = {}  # … -> 1 when that pool holds any of them
    w: dict[tuple[int, int, int], Any] = {}  # their device-seconds per second there
    per_req: dict[tuple[int, int], float] = {}  # (class, option) -> a member's device-seconds per request in a pool
    for g, i in idx:
        cl = classes[g]
        st, o, c = cl.choices, cl.choices.options[i], cl.count
        cap = most(st, o)
        r[g, i] = m.add_variable(f"r_{g}_{i}", 0, cap, cat="Integer")
        replicas[g, i] = r[g, i]
        m += r[g, i] <= cap * y[g, i]
        if st.pinned_devices:  # pinned on devices of its own choosing: its replicas tile them
            m += r[g, i] * o.devices == st.pinned_devices * y[g, i]
        elif st.replicas is not None:  # pinned by the spec: exactly that many, each its own
            m += r[g, i] == st.replicas * y[g, i]
        elif o.devices == 1:
            per_request = per_req[g, i] = st.visits * (1 / (o.shared_rate * h) + problem.swap_seconds(st, o))
            for k in range(K[o.device_type]):
                if c == 1:
                    z[g, i, k] = held[g, i, k] = m.add_variable(f"z_{g}_{i}_{k}", cat="Binary")
                    w[g, i, k] = m.add_variable(f"w_{g}_{i}_{k}", 0)
                    m += w[g, i, k] >= per_request * X - per_request * x_ub * (1 - z[g, i, k])
                else:
                    z[g, i, k], held[g, i, k], w[g, i, k] = _class_in_pool(m, f"{g}_{i}_{k}", c, per_request, X, x_ub)
            pooled = pulp.lpSum(z[g, i, k] for k in range(K[o.device_type]))
            m += pooled <= c * y[g, i]
            if c == 1:
                m += r[g, i] <= cap * (y[g, i] - pooled)
                m += r[g, i] >= y[g, i] - pooled
            else:  # the members no pool holds run dedicated, r replicas each
                replicas[g, i] = _dedicated_members(m, f"{g}_{i}", c, cap, c * y[g, i] - pooled, r[g, i],
                                                    o.cost.throughput * h, st.visits, X, x_ub)
        else:
            m += r[g, i] >= y[g, i]
            replicas[g, i] = c * r[g, i]
    S = {(t, k): m.add_variable(f"S_{n}_{k}", 0, p.count, cat="Integer")
         for n, (t, p) in enumerate(pools.items()) for k in range(K[t])}
    for g, cl in enumerate(classes):
        st = cl.choices
        ks = [k for k in idx if k[0] == g]
        m += pulp.lpSum(y[k] for k in ks) == 1
        if cl.count == 1:  # a class of many keeps up member by member (_dedicated_members)
            shared = pulp.lpSum(v for (zg, _, _), v in z.items() if zg == g)
            m += (pulp.lpSum(st.options[i].cost.throughput * h * r[g, i] for _, i in ks)
                  >= st.visits * X - st.visits * x_ub * shared)
        else:
            for _, i in ks:
                if (g, i, 0) not in z:  # multi-device: every member dedicated when chosen
                    m += st.options[i].cost.throughput * h * r[g, i] >= st.visits * X - st.visits * x_ub * (1 - y[g, i])
    ride_on = _ride_choices(m, problem, classes, idx, y, r, z, w, per_req, K, X, x_ub)
    for t, pool in pools.items():  # pinned stages' devices left the pool before (pinned_counts)
        of_type = [k for k in idx if classes[k[0]].choices.options[k[1]].device_type == t
                   and not classes[k[0]].choices.pinned_devices]
        rides = [v for (g, i), v in ride_on.items() if classes[g].choices.options[i].device_type == t]
        riding = pulp.lpSum(rides)
        m += (pulp.lpSum(classes[g].choices.options[i].devices * replicas[g, i] for g, i in of_type)
              + pulp.lpSum(S[t, k] for k in range(K[t])) <= pool.count)
        for k in range(K[t]):
            members = [(g, i) for g, i in of_type if (g, i, k) in z]
            if k == 0 and rides:  # riding on a host's replicas: no devices of its own
                m += S[t, k] <= pool.count * (1 - riding)
                bound = _work_bound(members, classes, per_req, x_ub)
                m += pulp.lpSum(w[g, i, k] for g, i in members) <= S[t, k] + bound * riding
            else:
                m += pulp.lpSum(w[g, i, k] for g, i in members) <= S[t, k]
            if t in problem.swap:  # swapped weights in host memory: the device holds one stage's at a time
                slot = m.add_variable(f"slot_{t}_{k}", 0)
                kept = []
                for g, i in members:
                    st, o = classes[g].choices, classes[g].choices.options[i]
                    weights = o.cost.weight_bytes_per_device / GIB if problem.swaps(st, o) else 0
                    m += slot >= weights * held[g, i, k]
                    kept.append((pooled_bytes(st, o) / GIB - weights) * z[g, i, k])
                m += pulp.lpSum(kept) + slot <= pool.memory_bytes / GIB
            else:
                m += (pulp.lpSum(pooled_bytes(classes[g].choices, classes[g].choices.options[i]) / GIB * z[g, i, k]
                                 for g, i in members) <= pool.memory_bytes / GIB)
            for g, i in members:
                m += S[t, k] >= held[g, i, k] - (riding if k == 0 else 0)
            if k:  # pools of a type are interchangeable: order them, largest first
                m += S[t, k - 1] >= S[t, k]
    if problem.latency_target_s is not None:
        _latency_constraints(m, problem.latency_target_s, classes, y)

    devices_used = (pulp.lpSum(classes[g].choices.options[i].devices * replicas[g, i] for g, i in idx
                               if not classes[g].choices.pinned_devices) + pulp.lpSum(S.values()))
    m.setObjective(X)
    if start is None and not problem.swap and pools_per_type == 1:
        start = greedy_plan(problem, x_ub)
    if start is not None:
        _start_from(start, problem, classes, X, y, r, z, S)
        for v in ride_on.values():  # a start rides nowhere: say so, or HiGHS cannot complete it
            v.setInitialValue(0)
    status = run_solver(m, make_solver(time_limit * 0.75))
    if ran_out_of_time(m, status) and (X.value() or 0) <= EPS and pools_per_type == 1:
        status = run_solver(m, make_solver(TIME_LIMIT_S))  # no plan yet is not no plan: go on looking
    if status != pulp.LpStatusOptimal or (X.value() or 0) <= EPS:
        return None
    best = X.value()
    # > 0 when the time ran out before the search proved this plan the best; x_ub bounds it
    # when the solver had not got as far as a bound of its own.
    gap = min(solved_gap(m), max(0.0, x_ub / best - 1))
    gap = 0.0 if gap < 1e-4 else gap  # HiGHS's own tolerance: proven best
    found = {v.name: v.value() for v in m.variables()}  # the first solve's plan, should the second find none
    m += X >= best * (1 - 1e-6)
    m.sense = pulp.LpMinimize
    # Fewest devices; among those, the quickest configs (a tie-break worth less than a device),
    # then the fewest stages sharing (a stage alone in a pool is its dedicated replicas: say so).
    slowest = sum(max(o.cost.latency_s for o in st.options) for st in problem.stages) or 1.0
    latency = pulp.lpSum(classes[g].count * classes[g].choices.options[i].cost.latency_s * y[g, i] for g, i in idx)
    sharing = pulp.lpSum(z.values()) / max(1, sum(cl.count for cl in classes))
    m.setObjective(devices_used + 0.5 / slowest * latency + 0.01 * sharing)
    # The second solve only trims devices from a plan already in hand (its start): the rest of
    # the time (the first plan is kept if it finds nothing better).
    if run_solver(m, make_solver(max(MIN_SOLVE_S, time_limit * 0.25))) != pulp.LpStatusOptimal or \
            any(v.value() is None for v in y.values()):
        for v in m.variables():  # stopped with no plan in hand (a time limit): keep the first
            v.varValue = found.get(v.name)

    rides = {classes[g].choices.options[i].device_type: (classes[g].members[0], round(r[g, i].value() or 0))
             for (g, i), v in ride_on.items() if (v.value() or 0) > 0.5}
    shared_devices = {pool_key(t, k): round(v.value() or 0) for (t, k), v in S.items()}
    for t, (host, copies) in rides.items():
        del shared_devices[t]
        shared_devices[ride_key(t, host)] = copies
    chosen: dict[str, StagePlan] = {}
    for g, cl in enumerate(classes):
        st = cl.choices
        i = max(range(len(st.options)), key=lambda i: y[g, i].value() or 0)
        t = st.options[i].device_type
        in_pools = [round(z[g, i, k].value() or 0) if (g, i, k) in z else 0 for k in range(K[t])]
        first = ride_key(t, rides[t][0]) if t in rides else t
        places = [pool_key(t, k) if k else first for k, n in enumerate(in_pools) for _ in range(n)]
        for member in cl.members:  # the first members into the pools, in order; the rest dedicated
            pool = places.pop(0) if places else None
            chosen[member] = StagePlan(st.options[i], 0 if pool else round(r[g, i].value() or 0), pool is not None,
                                       "" if pool in (None, t) else pool)
    latency_s = path_latency(problem, {n: p.option for n, p in chosen.items()})
    return PlanSolution(
        throughput=best, stages={st.name: chosen[st.name] for st in problem.stages},
        shared_devices=shared_devices, latency_s=latency_s, solver=SOLVER_NAME, seconds=time.perf_counter() - started, gap=gap,
    )


def _ride_choices(m: pulp.LpProblem, problem: PlanProblem, classes: list[StageClass], idx: list[tuple[int, int]],
                  y: dict, r: dict, z: dict, w: dict, per_req: dict, K: dict[str, int], X: Any,
                  x_ub: float) -> dict[tuple[int, int], Any]:
    """Where a device type's (single) shared pool may ride instead of taking devices: on the
    replicas of one dedicated stage of that type (a binary per candidate host option). The
    host gives the riders' device time out of its own: its replicas must keep up with its
    traffic and the riders' work together (a rider on one device of a TP group holds the
    group up while it runs); each host device holds the riders' memory beside its own."""
    ride_on: dict[tuple[int, int], Any] = {}
    for t, pool in ((p.type, p) for p in problem.pools):
        if K.get(t) != 1 or t in problem.swap or pool.count > RIDE_MAX_DEVICES:
            continue  # several pools (a wide fan-in), swapped weights, a large cluster: pools keep their devices
        members = [(g, i) for g, i, k in z if k == 0 and classes[g].choices.options[i].device_type == t]
        # Hosts span several devices (a TP / PP group): riding on a one-device replica is that
        # replica joining the pool, which the pool already offers.
        hosts = [(g, i) for g, i in idx if classes[g].count == 1 and not classes[g].choices.pinned_devices
                 and classes[g].choices.options[i].device_type == t and classes[g].choices.options[i].devices > 1]
        if not members or not hosts:
            continue
        # The pool's work and memory once, as two variables: each host's rows then stay short.
        work = m.add_variable(f"ridework_{t}", 0)
        m += work >= pulp.lpSum(w[g, i, 0] for g, i in members)
        held = m.add_variable(f"ridemem_{t}", 0)
        m += held >= pulp.lpSum(pooled_bytes(classes[g].choices, classes[g].choices.options[i]) / GIB * z[g, i, 0]
                                for g, i in members)
        bound = _work_bound(members, classes, per_req, x_ub)
        # The heaviest stages host (a pool's riders need a host with time to spare; the light
        # ones would rather be in the pool themselves): a bounded number of binaries.
        hosts = sorted(hosts, key=lambda gi: -_device_seconds(problem, classes[gi[0]].choices,
                                                              classes[gi[0]].choices.options[gi[1]]))[:RIDE_HOSTS]
        for g, i in hosts:
            st, o = classes[g].choices, classes[g].choices.options[i]
            room = (pool.memory_bytes - pooled_bytes(st, o)) / GIB
            if room <= 0:
                continue
            v = ride_on[g, i] = m.add_variable(f"ride_{g}_{i}", cat="Binary")
            m += v <= y[g, i]
            mu = o.cost.throughput * problem.headroom
            m += work <= r[g, i] - st.visits / mu * X + (st.visits / mu * x_ub + bound) * (1 - v)
            m += held <= room + pool.memory_bytes / GIB * (1 - v)
        m += pulp.lpSum(v for (g, i), v in ride_on.items() if classes[g].choices.options[i].device_type == t) <= 1
    return ride_on


def _work_bound(members: list[tuple[int, int]], classes: list[StageClass], per_req: dict, x_ub: float) -> float:
    """The most device-seconds per second a pool's members can ask for (a big-M)."""
    return sum(per_req[g, i] * x_ub * classes[g].count for g, i in members)


def _device_seconds(problem: PlanProblem, st: StageChoices, o: Option) -> float:
    """Device-seconds a request takes of `st` at `o` at best: dedicated, or in a pool."""
    h = problem.headroom
    own = st.visits * o.devices / (o.cost.throughput * h)
    if o.devices == 1 and st.replicas is None:
        own = min(own, st.visits * (1 / (o.shared_rate * h) + problem.swap_seconds(st, o)))
    return own


def _start_from(start: PlanSolution, problem: PlanProblem, classes: list[StageClass], X: Any, y: dict, r: dict,
                z: dict, S: dict) -> None:
    """Set the decision variables to `start`'s plan, at the throughput it sustains under this
    problem's rates (what it does not decide, the solver completes). A plan that does not fit
    this problem's classes or options is no start."""
    values: dict[Any, float] = {}
    for g, cl in enumerate(classes):
        plans = [start.stages.get(member) for member in cl.members]
        if any(p is None or p.option.cost.config != plans[0].option.cost.config for p in plans):
            return
        options = cl.choices.options
        i = option_index(options, plans[0].option)
        if i is None:
            return
        values.update({y[g, j]: float(j == i) for j in range(len(options))})
        values[r[g, i]] = max(p.replicas for p in plans)
        for key in (key for key in z if key[:2] == (g, i)):
            name = pool_key(options[i].device_type, key[2])
            values[z[key]] = sum(1 for p in plans if p.shared and p.pool_key == name)
    x = throughput_of(problem, rated_as(problem, start), start.shared_devices) * (1 - 1e-6)
    if x <= EPS:
        return
    values[X] = x
    for (t, k), v in S.items():
        values[v] = start.shared_devices.get(pool_key(t, k), 0)
    for var, value in values.items():
        var.setInitialValue(value)


def _binary_digits(m: pulp.LpProblem, name: str, count: int, value: Any) -> list[tuple[int, Any]]:
    """`value` (an integer from 0 to `count`) as binary digits: [(2^b, digit b)]."""
    digits = [(1 << b, m.add_variable(f"{name}_b{b}", cat="Binary")) for b in range(count.bit_length())]
    m += pulp.lpSum(p * d for p, d in digits) == value
    return digits


def _class_in_pool(m: pulp.LpProblem, name: str, count: int, per_request: float, X: Any,
                   x_ub: float) -> tuple[Any, Any, Any]:
    """How many of a class's `count` members a shared pool holds (n), whether it holds any, and
    the device-seconds per second they take there (per_request x X x n, made linear by taking
    n digit by digit: each digit's share of X is X when the digit is 1, else 0)."""
    n = m.add_variable(f"z_{name}", 0, count, cat="Integer")
    held = m.add_variable(f"h_{name}", cat="Binary")
    m += n <= count * held
    m += held <= n
    w = m.add_variable(f"w_{name}", 0)
    shares = []
    for power, digit in _binary_digits(m, f"z_{name}", count, n):
        share = m.add_variable(f"x_{name}_{power}", 0)
        m += share >= X - x_ub * (1 - digit)
        shares.append(power * share)
    m += w >= per_request * pulp.lpSum(shares)
    return n, held, w


def _dedicated_members(m: pulp.LpProblem, name: str, count: int, cap: int, dedicated: Any, r: Any,
                       rate: float, visits: float, X: Any, x_ub: float) -> Any:
    """The replicas of a class's members that no pool holds: `dedicated` members with `r` each
    (enough to keep up with X). Returns their total (dedicated x r, digit by digit)."""
    some = m.add_variable(f"d_{name}", cat="Binary")  # any member dedicated
    m += dedicated <= count * some
    m += r <= cap * some
    m += r >= some
    m += rate * r >= visits * X - visits * x_ub * (1 - some)
    parts = []
    for power, digit in _binary_digits(m, f"n_{name}", count, dedicated):
        part = m.add_variable(f"q_{name}_{power}", 0, cap)
        m += part >= r - cap * (1 - digit)
        parts.append(power * part)
    return pulp.lpSum(parts)


def _latency_constraints(m: pulp.LpProblem, target_s: float, classes: list[StageClass], y: dict) -> None:
    """Finish time T of every stage class along the graph (a class's members finish together:
    they have the same producers and config); the last must meet the target."""
    T = {g: m.add_variable(f"T_{g}", 0) for g in range(len(classes))}
    pos = {member: g for g, cl in enumerate(classes) for member in cl.members}

    def chosen(g: int, attr: str) -> pulp.LpAffineExpression:
        return pulp.lpSum(getattr(o.cost, attr) * y[g, i] for i, o in enumerate(classes[g].choices.options))

    for g, cl in enumerate(classes):
        own = chosen(g, "latency_s")
        m += T[g] >= own
        for pred, stream in cl.choices.preds:
            if pred not in pos:
                continue
            p = pos[pred]
            if stream:
                m += T[g] >= T[p] - chosen(p, "latency_s") + chosen(p, "first_output_s") + own
                m += T[g] >= T[p]
            else:
                m += T[g] >= T[p] + own
        m += T[g] <= target_s
