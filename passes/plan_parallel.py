"""`plan-parallel`: choose each stage's parallel config and replica count for the target.

Per stage, stage_options.py lists the configs that fit (tp divides heads, ep divides
experts, TP x EP inside one NVLink domain, memory) scored by the cost rules for the request
mix; plan_milp.py picks one per stage and the replica counts that maximise throughput under
the device budget and the latency target. The result lands on each stage as
`#omni.parallel<…>` plus `#omni.plan<…>` (batch, device type, sharing, predicted rate and
times, memory needs) that place-devices and plan-memory read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace


from xdsl.dialects.builtin import ModuleOp

from omnigraph.dialect.attrs import ParallelAttr, PlanAttr
from omnigraph.errors import IRError
from omnigraph.kinds import KINDS
from omnigraph.passes.planner.pins import device_pin, pinned_counts
from omnigraph.passes.planner.plan_explain import no_fit, no_plan
from omnigraph.passes.planner.plan_milp import solve
from omnigraph.passes.planner.cost_types import StageWork
from omnigraph.passes.planner.plan_problem import PlanProblem, PlanSolution, StageChoices, rated_as, throughput_of
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.stage_graph import FlatStage, stage_graph
from omnigraph.passes.planner.stage_options import (
    DeviceType, device_types, latency_at, little_batch, pinned_degrees, stage_options, stage_works,
)
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.target import Target


REFINE_ROUNDS = 4  # solve, re-rate the shared pools, solve again: at most this many times
# Seconds the MILP searches, all rounds together, unless the pass is told otherwise. Small
# graphs are solved to proven optimality long before; a wide graph of many distinct stages
# stops here with the best plan found, and the plan says how far from the best it may be.
SOLVE_BUDGET_S = 0.6
MIN_SOLVE_S = 0.15  # a round that starts with the budget spent still gets this long


@dataclass(frozen=True)
class PlanParallelPass(CompilerPass):
    name = "plan-parallel"

    mix: str = ""  # request mix: presets `chat:0.7,long:0.3` or a YAML file; "" = default
    slo: float = 0.0  # end-to-end latency target in seconds; 0 = none
    headroom: float = 0.9  # highest utilisation a stage is planned at
    solve_s: float = 0.0  # seconds the MILP may search (the plan then says how far from proven best); 0: default

    def run(self, comp: Compilation) -> None:
        solution, stages, works = plan(comp.module, comp.need_target(self.name), self.mix, self.slo or None,
                                       self.headroom, self.solve_s)
        write_plan(stages, solution, works)


@dataclass
class Problem:
    """A module's planning problem, with what building it learned along the way."""

    problem: PlanProblem
    stages: list[FlatStage]
    works: dict[str, list[StageWork]]
    types: list[DeviceType]
    target: Target
    mix: str | None = None
    deadline: float = float("inf")  # time.perf_counter() by which the search should stop


def build_problem(module: ModuleOp, target: Target, mix: str | None, slo: float | None,
                  headroom: float) -> Problem:
    """Each stage's feasible options for the mix (raises IRError, explained, if one has none)."""
    shapes = parse_mix(mix or None)
    stages = stage_graph(module)
    if not stages:
        raise IRError("nothing to plan: the pipeline has no stages")
    types = device_types(target)
    works = stage_works(stages, shapes)
    choices = []
    for st in stages:
        pin = device_pin(st, target)
        options, misfits = stage_options(st, works[st.name], shapes, types, pin)
        if not options:
            if pin is not None:
                raise IRError(f"stage '{st.name}': no configuration of it runs on its pinned devices "
                              f"{', '.join(pin.devices)}" + (f" within memory_share {st.params['memory_share']}"
                                                            if st.params.get("memory_share") else ""),
                              where=f"stage '{st.name}'", hint="pin more devices, or a larger memory_share")
            raise no_fit(st, works[st.name], target.target, types, misfits)
        in_bytes = sum(max(w.out_bytes for w in works[p]) for p, _ in st.preds)
        choices.append(StageChoices(st.name, st.visits, tuple(options), tuple(st.preds),
                                    pinned_degrees(st).get("replicas"), in_bytes,
                                    swappable=not KINDS[st.kind].traits.continuous,
                                    pinned_devices=len(pin.devices) if pin else 0))
    taken = pinned_counts(stages, target)
    pools = tuple(replace(t.pool(), count=t.pool().count - taken.get(t.type, 0)) for t in types)
    return Problem(PlanProblem(tuple(choices), pools, slo, headroom), stages, works, types, target, mix)


def plan(module: ModuleOp, target: Target, mix: str | None, slo: float | None, headroom: float,
         solve_s: float = 0.0) -> tuple[PlanSolution, list[FlatStage], dict[str, list[StageWork]]]:
    """The solved plan for a module (raises IRError, explained, when none exists)."""
    built = build_problem(module, target, mix, slo, headroom)
    built.deadline = time.perf_counter() + (solve_s or SOLVE_BUDGET_S)
    solution, _ = refine(built)
    if solution is None or _pooled(solution):
        # Stages that share a device and do not fit on it together may still take turns:
        # their weights in host memory, each loaded when it runs (costed by the host link).
        # Tried too when they fit only split over several pools, which may cost more devices.
        resident = built.problem
        built.problem = replace(resident, swap=frozenset(t.type for t in built.types))
        swapping, _ = refine(built)
        built.problem = resident
        if swapping is not None and (solution is None or swapping.throughput > solution.throughput * (1 + 1e-6)):
            swapping.swap = True
            solution = swapping
        if solution is None:
            raise no_plan(resident, target.target, built.types, swapping=True)
    return solution, built.stages, built.works


def refine(built: Problem, rounds: int = REFINE_ROUNDS) -> tuple[PlanSolution | None, PlanProblem]:
    """Solve, then re-rate the shared pools at the batches their traffic really fills, and
    solve again until the plan stops changing; the best plan under its own rates wins.

    A config's rate assumes a full batch. A stage that shares a pool sees only its share of
    the traffic per device copy, so its batch fills as far as Little's law allows (rate x
    time inside), and a half-empty batch costs the pool more device time per request. A
    dedicated replica does not care: the time it idles is its own. Returns the best plan and
    the problem whose rates its throughput is counted at.
    """
    problem = built.problem
    best: PlanSolution | None = None
    best_problem = problem
    seen: set[tuple] = set()
    solution = None
    for round_ in range(rounds):
        left = built.deadline - time.perf_counter()
        if round_ > 1 and left <= 0:  # out of time after one re-rating: the best plan so far
            break
        solution = solve_pooled(problem, start=solution, time_limit=max(MIN_SOLVE_S, left))
        if solution is None:
            break
        rerated = _rerate(built, problem, solution)
        solution.throughput = throughput_of(rerated, rated_as(rerated, solution), solution.shared_devices)
        if best is None or solution.throughput > best.throughput * (1 + 1e-6):
            best, best_problem = solution, rerated
        if rerated == problem or _pooled(solution) or problem.swap:  # hard MILPs: one round
            break
        decided = _assignment(solution)
        if decided in seen:  # the plan stopped changing: another round re-derives it
            break
        seen.add(decided)
        problem = rerated
    return best, best_problem


def _assignment(solution: PlanSolution) -> tuple:
    """What a plan decides (configs, replicas, pools), apart from the rates it is counted at."""
    return (tuple((name, sp.option.device_type, sp.option.cost.config, sp.replicas, sp.pool_key if sp.shared else "")
                  for name, sp in sorted(solution.stages.items())),
            tuple(sorted(solution.shared_devices.items())))


def _pooled(solution: PlanSolution) -> bool:
    """Whether the plan needed more than one shared pool for a device type."""
    return any("#" in key for key, count in solution.shared_devices.items() if count)


MAX_POOLS = 8  # shared pools per device type a plan may use
POOLED_TIME_LIMIT_S = 2.0  # per solve with several pools: the best plan found by then


def solve_pooled(problem: PlanProblem, start: PlanSolution | None = None,
                 time_limit: float = SOLVE_BUDGET_S) -> PlanSolution | None:
    """One shared pool per device type, as usual; only when that cannot hold the pipeline (a
    wide fan-in of small stages whose copies do not all fit one device), two, four, eight."""
    solution = solve(problem, time_limit=time_limit, start=start)
    most = max((p.count for p in problem.pools), default=1)
    pools = 2
    while solution is None and pools <= min(MAX_POOLS, most):
        solution = solve(problem, time_limit=max(time_limit, POOLED_TIME_LIMIT_S), pools_per_type=pools)
        pools *= 2
    return solution


def _rerate(built: Problem, problem: PlanProblem, solution: PlanSolution) -> PlanProblem:
    """The pool rates of the stages `solution` shares, at the traffic it sends each pool copy
    (the other stages' rates stay: their traffic per copy is not known until they share)."""
    types = {t.type: t for t in built.types}
    by_name = {st.name: st for st in built.stages}
    shapes = parse_mix(built.mix or None)
    stages = []
    for choice in problem.stages:
        st, works = by_name[choice.name], built.works[choice.name]
        if not solution.stages[choice.name].shared:  # its pool rates stay as they were
            stages.append(choice)
            continue
        options = []
        for o in choice.options:
            if o.devices != 1:
                options.append(o)
                continue
            dt = types[o.device_type]
            sp = solution.stages[choice.name]
            key = sp.pool_key if sp.option.device_type == o.device_type else o.device_type
            copies = solution.shared_devices.get(key) or dt.count  # a type it does not use
            # The traffic at capacity (the planned X is capacity x headroom, and the MILP
            # applies the headroom to the rate again): what the batch fills to when saturated.
            rate = solution.throughput / problem.headroom * choice.visits / copies
            cfg = o.cost.config

            def latency(n: int, cfg=cfg, dt=dt) -> float:
                return latency_at(st, works, shapes, dt, replace(cfg, batch=n))

            n = little_batch(rate, latency, cfg.batch)
            pool_rate = o.cost.throughput if n >= cfg.batch else n / latency(n)
            options.append(replace(o, pool_rate=pool_rate))
        stages.append(replace(choice, options=tuple(options)))
    return replace(problem, stages=tuple(stages))


def write_plan(stages: list[FlatStage], solution: PlanSolution, works: dict[str, list[StageWork]]) -> None:
    for st in stages:
        # What plan-memory sizes buffers from: the longest forward, the largest hand-off in.
        forward_tokens = max(w.tokens for w in works[st.name])
        in_bytes = sum(max(w.out_bytes for w in works[p]) for p, _ in st.preds)
        sp = solution.stages[st.name]
        cfg, cost = sp.option.cost.config, sp.option.cost
        replicas = solution.shared_devices[sp.pool_key] if sp.shared else sp.replicas
        st.op.properties["parallel"] = ParallelAttr(tp=cfg.tp, pp=cfg.pp, dp=1, ep=cfg.ep, replicas=replicas)
        st.op.properties["plan"] = PlanAttr(**{
            "batch": cfg.batch,
            "device_type": sp.option.device_type,
            "devices_per_replica": cost.devices,
            "shared": sp.shared,
            "pool": sp.pool if sp.shared else "",
            "visits": st.visits,
            "rate": cost.throughput,  # requests/s one replica sustains
            "latency_s": cost.latency_s,
            "first_output_s": cost.first_output_s,
            "mem_per_device": cost.mem_per_device,
            "weights_per_device": cost.weight_bytes_per_device,
            "kv_per_device": cost.kv_bytes_per_device,
            "activations": cost.activation_bytes,
            "offload": int(cost.breakdown.get("offload_bytes", 0)),
            "forward_tokens": forward_tokens,
            "in_bytes": in_bytes,
            "pipeline_rate": solution.throughput,
            "solver": solution.solver,
            "dtype": sp.option.dtype,
            "swap": solution.swap and sp.shared and not KINDS[st.kind].traits.continuous,
            "gap": solution.gap,
        })
