"""A RuntimePlan as a SimPipeline: stages, edges, replicas, and what each step costs.

Two sources of step times:

- `sim_pipeline_from_plan`: the cost rules (arch_profile + cost_rules) on the
  target's devices, for any plan the compiler or the planner writes;
- `sim_pipeline_from_measurements`: step times measured on this machine
  (LocalBackend.stage_timings), the calibrated `cpu-local` model.

Both return the pipeline and a work function giving each request's StageWork per
stage, and `make_requests` turns a mix and arrival times into SimRequests;
`simulate_plan` does all of it for a plan on a target (the planner's judge).

Control flow is modelled in expectation, not executed:
- a route takes one case per request, drawn by `route_weights` (even by default);
  the stages of the other cases are skipped for that request, as the runtime skips
  them (also those whose only readers are skipped);
- a loop's body runs once, with its work multiplied by the loop's expected
  iterations (`loop_iters`; by default max_iters, the upper bound, as the planner
  provisions for it): repeats for batch stages; for AR stages as many rounds, each a
  sequence of its own that is admitted, prefilled and decoded again (engine.py).
"""
from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from omnigraph.kinds import KINDS, settings
from omnigraph.passes.planner.cost_types import ParallelConfig, RequestShape, StageWork
from omnigraph.passes.planner.offload import HOST_LINK_GB_S
from omnigraph.passes.sim.engine import (
    SimEdge, SimPipeline, SimReport, SimRequest, SimStage, SimulationError, Slo, burst_arrivals, poisson_arrivals,
    simulate,
)
from omnigraph.passes.planner.work_rules import chunk_tokens
from omnigraph.passes.planner.workload import sample_shapes
from omnigraph.passes.stage_graph import FlatStage, GraphError, StageGraph
from omnigraph.passes.stage_graph import plan_graph as flat_plan_graph
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.target import Device, Target

WorkFn = Callable[[RequestShape, random.Random], dict[str, StageWork]]


@dataclass(frozen=True)
class StageTimings:
    """Measured steps of one stage: (batch, new, seconds) each, as LocalBackend records them."""

    samples: tuple[tuple[int, int, float], ...]

    @classmethod
    def of(cls, records: Sequence[Any]) -> StageTimings:
        """From LocalBackend.stage_timings() records (or (batch, new, seconds) tuples)."""
        return cls(tuple((int(r[0]), int(r[1]), float(r[2])) if isinstance(r, tuple)
                         else (r.batch, r.new, r.seconds) for r in records))


def plan_graph(plan: RuntimePlan, loop_iters: dict[str, float] | None = None) -> StageGraph:
    """The plan flattened (passes/stage_graph.py: the graph the planner plans on)."""
    try:
        return flat_plan_graph(plan, loop_iters)
    except GraphError as exc:
        raise SimulationError(exc.message) from None


def sim_pipeline_from_plan(plan: RuntimePlan, target: Target, mix: list[RequestShape], *,
                           route_weights: dict[str, dict[str, float]] | None = None,
                           loop_iters: dict[str, float] | None = None,
                           device_capacity: float = 1.0, handoff_s: float = 0.0) -> tuple[SimPipeline, WorkFn]:
    """The plan on `target`, timed by the cost rules. Replicas are the plan's instances
    (timed as the first one: the planner gives a stage's replicas one configuration);
    stages on one device share it (see sim/engine.py)."""
    from omnigraph.passes.planner.arch_profile import profile_stage
    from omnigraph.passes.planner.cost_rules import stage_cost, stage_work

    from omnigraph.passes.sim.split_goodput import LlmTimes

    from omnigraph.passes.planner.precision import at_dtype

    graph = plan_graph(plan, loop_iters)
    # The profiles and configs the planner costed: at the stage's planned dtype, with its pp and ep.
    profiles = {name: at_dtype(profile_stage(st.node.kind, st.node.model, st.node.params), st.node.resources.dtype)
                for name, st in graph.stages.items()}
    stages = []
    for name, st in graph.stages.items():
        node = st.node
        inst = node.instances[0]
        at = _device(target, node.name, inst.devices, inst.pp)
        cost = CostTimes(stage_cost, node.kind, profiles[name], inst.tp, at.device, at.link, at.inter, pp=inst.pp,
                         ep=inst.ep, hop=at.hop, hop_inter=at.hop_inter)
        prefill = cost.prefill
        if _phase(node) == "decode":  # its "prefill" is taking the KV over from the prefill half
            prefill = LlmTimes(cost.prefill, cost.step, profiles[name].kv_bytes_per_token, at.hop).handover
        swap_s = profiles[name].param_bytes / (inst.tp * HOST_LINK_GB_S * 1e9) if node.resources.swap else 0.0
        batch_time = (lambda ws, f=cost.prefill: f(ws) * _mean_repeats(ws)) if _phase(node) == "prefill" else cost.batch
        stages.append(replace(_sim_stage(graph, st, batch_time=batch_time,
                                         prefill_time=prefill, step_time=cost.step), swap_s=swap_s))

    # With no route to draw and whole loop iterations, a shape's works are the same for every
    # request (and draw nothing from `rng`): worked out once per shape.
    fixed = not graph.routes and all(float(st.iters).is_integer() for st in graph.stages.values())
    known: dict[RequestShape, dict[str, StageWork]] = {}

    def works(shape: RequestShape, rng: random.Random) -> dict[str, StageWork]:
        if not fixed:
            return draw(shape, rng)
        if shape not in known:
            known[shape] = draw(shape, rng)
        return dict(known[shape])

    def draw(shape: RequestShape, rng: random.Random) -> dict[str, StageWork]:
        out: dict[str, StageWork] = {}
        for name in graph.choose(rng, route_weights or {}):
            st = graph.stages[name]
            if _phase(st.node) == "decode":  # the request as the whole stage would see it
                out[name] = next(out[p] for p, _ in st.reads if p in out)
                continue
            inputs = [out[p] for p, _ in st.reads if p in out]
            feeds = [plan.inputs[i].modality for i in st.inputs if i in plan.inputs]
            base = stage_work(st.node.kind, st.node.params, profiles[name], shape, inputs, feeds)
            out[name] = _repeat(st.node.kind, base, st.iters, rng)
        return out

    for shape in mix:  # every shape of the mix costs out here, not midway through a simulation
        works(shape, random.Random(0))
    return _pipeline(graph, stages, device_capacity, handoff_s), works


def sim_pipeline_from_measurements(plan: RuntimePlan, measured: dict[str, StageTimings], *,
                                   route_weights: dict[str, dict[str, float]] | None = None,
                                   loop_iters: dict[str, float] | None = None,
                                   device_capacity: float = 1.0, handoff_s: float = 0.0) -> tuple[SimPipeline, WorkFn]:
    """The plan timed by measured steps (see fit_batch, fit_ar): per batch size for batch
    stages; per running batch (a decode step) and per admitted count (a prefill) for AR
    stages. Decode steps per request come from max_new_tokens (the prefill writes the
    first token)."""
    graph = plan_graph(plan, loop_iters)
    missing = [n for n in graph.stages if n not in measured or not measured[n].samples]
    if missing:
        raise SimulationError(f"no measured steps for stage(s) {', '.join(missing)}")
    stages = []
    for name, st in graph.stages.items():
        samples = measured[name].samples
        if KINDS[st.node.kind].traits.autoregressive:
            prefill_only = settings(st.node.kind, st.node.params).max_new_tokens <= 1
            prefill, step = fit_ar(samples, prefill_only)
            stages.append(_sim_stage(graph, st, prefill_time=prefill, step_time=step))
        else:
            per_batch = fit_batch(samples)
            stages.append(_sim_stage(graph, st, batch_time=lambda ws, f=per_batch: f(len(ws)) * _mean_repeats(ws)))

    def works(shape: RequestShape, rng: random.Random) -> dict[str, StageWork]:
        out = {}
        for name in graph.choose(rng, route_weights or {}):
            node = graph.stages[name].node
            ar = KINDS[node.kind].traits.autoregressive
            decode = max(0, settings(node.kind, node.params).max_new_tokens - 1) if ar else 0
            base = StageWork(tokens=shape.prompt_tokens, decode_steps=decode)
            out[name] = _repeat(node.kind, base, graph.stages[name].iters, rng)
        return out

    return _pipeline(graph, stages, device_capacity, handoff_s), works


def simulate_plan(plan: RuntimePlan, target: Target, mix: list[RequestShape], *, rate: float | None = None,
                  requests: int = 200, seed: int = 0, slo_s: float | None = None, trace: bool = False,
                  slo: Slo | None = None, **options: Any) -> SimReport:
    """A plan timed by the cost rules under Poisson arrivals at `rate` (None or 0: a burst).
    `options` go to sim_pipeline_from_plan (route_weights, loop_iters, device_capacity)."""
    pipeline, work_fn = sim_pipeline_from_plan(plan, target, mix, **options)
    arrivals = poisson_arrivals(rate, requests, seed) if rate else burst_arrivals(requests)
    return simulate(pipeline, make_requests(work_fn, mix, arrivals, seed), slo_s=slo_s, trace=trace, slo=slo)


def make_requests(work_fn: WorkFn, mix: list[RequestShape], arrivals: Sequence[float],
                  seed: int = 0) -> list[SimRequest]:
    """One SimRequest per arrival, shapes drawn from the mix; the same seed, the same list."""
    shapes = sample_shapes(mix, len(arrivals), seed)
    rng = random.Random(seed + 1)  # route choices
    return [SimRequest(i, t, work_fn(shape, rng)) for i, (t, shape) in enumerate(zip(arrivals, shapes))]


# -- fitting measured steps ----------------------------------------------------------------

def fit_batch(samples: Sequence[tuple[int, int, float]]) -> Callable[[int], float]:
    """Seconds per batch size, from measured (batch, new, seconds) steps."""
    return _curve([(batch, seconds) for batch, _, seconds in samples])


def fit_ar(samples: Sequence[tuple[int, int, float]],
           prefill_only: bool = False) -> tuple[Callable[[Sequence[StageWork]], float], Callable[[int, float], float]]:
    """(prefill_time, step_time) for an AR stage from its measured steps. A step that
    admitted nobody is one decode step of its batch; one that admitted `new` requests
    prefilled them and then decoded the whole batch (unless the stage only prefills,
    max_new_tokens 1), so what it took beyond that decode step is their prefill."""
    decode = [(batch, seconds) for batch, new, seconds in samples if new == 0]
    step_at = _curve(decode) if decode else (lambda n: 0.0)
    extra = [(new, seconds - (0.0 if prefill_only else step_at(batch))) for batch, new, seconds in samples if new > 0]
    if not extra:
        raise SimulationError("no measured step admitted a request: cannot time the prefill")
    prefill_at = _curve(extra)
    return (lambda works: max(prefill_at(len(works)), 1e-6)), (lambda n, ctx=0.0: max(step_at(n), 1e-6))


def _curve(points: Sequence[tuple[float, float]], min_count: int = 3) -> Callable[[float], float]:
    """y as a function of x: the median y at each x seen at least `min_count` times (all
    x when none is), linear in between, continued along the last segment beyond (never
    falling), and held at the first value below. Medians: a stall (a GC pause) now and
    then does not move the curve."""
    by: dict[float, list[float]] = {}
    for x, y in points:
        by.setdefault(x, []).append(y)
    knots = sorted(x for x, ys in by.items() if len(ys) >= min_count) or sorted(by)
    xs = [float(x) for x in knots]
    ys = [statistics.median(by[x]) for x in knots]
    slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])) if len(xs) > 1 else 0.0

    def at(x: float) -> float:
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1] + slope * (x - xs[-1])
        i = bisect.bisect_left(xs, x)
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])

    return at


# -- shared pieces ---------------------------------------------------------------------------

def _phase(node: Any) -> str:
    """`prefill` / `decode` for the halves of a split LLM stage, else `whole`."""
    return str(node.params.get("phase", "whole"))


def _sim_stage(graph: StageGraph, st: FlatStage, **timing: Any) -> SimStage:
    node = st.node
    # A prefill half runs batches of prompts and hands each on: a batch stage.
    ar = KINDS[node.kind].traits.autoregressive and _phase(node) != "prefill"
    streams_out = any(s and not KINDS[graph.stages[c].node.kind].traits.autoregressive
                      for c, other in graph.stages.items() for p, s in other.reads if p == node.name)
    chunk = chunk_tokens(node.params) if ar and streams_out else 0
    wanted = ("prefill_time", "step_time") if ar else ("batch_time",)
    return SimStage(
        name=node.name, mode="ar" if ar else "batch", replicas=len(node.instances),
        max_batch=node.batching.max_batch, chunk_tokens=chunk,
        max_wait_s=0.0 if KINDS[node.kind].traits.continuous else node.batching.max_wait_ms / 1000,
        placement=tuple(tuple(i.devices) for i in node.instances),
        **{k: timing[k] for k in wanted})


def _pipeline(graph: StageGraph, stages: list[SimStage], capacity: float, handoff_s: float) -> SimPipeline:
    edges = [SimEdge(p, name, stream) for name, st in graph.stages.items() for p, stream in st.reads]
    inputs: dict[str, list[str]] = {}
    for name, st in graph.stages.items():
        for i in st.inputs:
            inputs.setdefault(i, []).append(name)
    devices = {d for s in stages for rep in s.placement for d in rep}
    return SimPipeline(stages, edges, inputs, graph.outputs, graph.text_output, graph.audio_output,
                       device_capacity={d: capacity for d in devices}, handoff_s=handoff_s)


def _repeat(kind: str, work: StageWork, iters: float, rng: random.Random | None = None) -> StageWork:
    """A loop body's work over its expected iterations. A batch stage runs them as one job of
    `iters` x the repeats; an AR stage runs them as `repeats` rounds, each a sequence of its
    own (its prompt, its decode steps), as the runtime runs one per iteration and the planner
    counts them (`visits`); a fractional expectation is drawn per request (2.5: 2 or 3)."""
    if iters == 1:
        return work
    if KINDS[kind].traits.autoregressive:
        rounds = int(iters)
        if iters > rounds and (rng or random.Random(0)).random() < iters - rounds:
            rounds += 1
        return replace(work, repeats=max(1, rounds) * max(1, work.repeats))
    return replace(work, repeats=max(1, round(work.repeats * iters)))


def _mean_repeats(works: Sequence[StageWork]) -> float:
    return sum(w.repeats for w in works) / len(works)


def _mean_work(works: Sequence[StageWork]) -> StageWork:
    n = len(works)
    if n == 1 and works[0].repeats >= 1:
        return works[0]
    tokens = repeats = decode = out_tokens = out_bytes = 0
    for w in works:  # one pass: the simulator averages every batch it times
        tokens += w.tokens
        repeats += w.repeats
        decode += w.decode_steps
        out_tokens += w.out_tokens
        out_bytes += w.out_bytes
    return StageWork(tokens=round(tokens / n), repeats=max(1, round(repeats / n)), decode_steps=round(decode / n),
                     out_tokens=round(out_tokens / n), out_bytes=round(out_bytes / n))


@dataclass(frozen=True)
class InstanceLinks:
    """Where an instance runs and how its ranks talk: the Device (its first), the link of its
    TP/EP collectives (inside a node unless a group spans nodes), and the link between its
    pipeline stages (across nodes when they are on different ones)."""

    device: Device
    link: float
    inter: bool
    hop: float
    hop_inter: bool


def _device(target: Target, stage: str, devices: list[str], pp: int = 1) -> InstanceLinks:
    nodes = {n.name: n for n in target.nodes}
    found = []
    for ref in devices:
        node_name, _, dev_name = ref.partition(":")
        node = nodes.get(node_name)
        dev = next((d for d in node.devices if d.name == dev_name), None) if node else None
        if dev is None:
            raise SimulationError(f"stage '{stage}' is placed on '{ref}', which target '{target.target}' "
                                  f"does not have (devices: {', '.join(target.devices)})")
        found.append((node, dev))
    width = max(1, len(found) // max(1, pp))  # rank r runs pipeline stage r // width
    groups = [{n.name for n, _ in found[i:i + width]} for i in range(0, len(found), width)]
    inter = any(len(g) > 1 for g in groups)  # a TP/EP group across nodes
    across = len({n.name for n, _ in found}) > 1
    intra = min(n.intra_node_gb_s for n, _ in found)
    return InstanceLinks(found[0][1], target.inter_node_gb_s if inter else intra, inter,
                         target.inter_node_gb_s if across else intra, across)


class CostTimes:
    """A stage's step times from the cost rules, cached by batch and (bucketed) size: a batch
    stage's batch is `stage_cost`'s latency, an AR stage's prefill and decode step are the
    ReplicaTimes that `stage_cost` adds up for the planner (passes/planner/cost_rules.py)."""

    def __init__(self, stage_cost: Callable[..., Any], kind: str, profile: Any, tp: int,
                 device: Device, link: float, inter: bool, pp: int = 1, ep: int = 1, hop: float = 0.0,
                 hop_inter: bool = False) -> None:
        from omnigraph.passes.planner.cost_rules import ReplicaTimes

        self.stage_cost, self.kind, self.profile = stage_cost, kind, profile
        self.tp, self.pp, self.ep, self.device, self.link, self.inter = tp, pp, ep, device, link, inter
        self.hop, self.hop_inter = hop, hop_inter
        self.times = ReplicaTimes(kind, profile, ParallelConfig(tp=tp, pp=pp, ep=ep), device, link, inter, hop, hop_inter)
        self._latency = lru_cache(maxsize=4096)(self._latency_uncached)
        self._prefill = lru_cache(maxsize=4096)(lambda seqs, tokens: self.times.prefill(seqs, tokens).seconds)
        self._step = lru_cache(maxsize=4096)(lambda running, context: self.times.step(running, context).seconds)

    def _latency_uncached(self, work: StageWork, batch: int) -> float:
        cfg = ParallelConfig(tp=self.tp, pp=self.pp, ep=self.ep, batch=batch)
        return self.stage_cost(self.kind, self.profile, work, cfg, self.device, self.link, self.inter, self.hop,
                               self.hop_inter).latency_s

    def batch(self, works: Sequence[StageWork]) -> float:
        return self._latency(_mean_work(works), len(works))

    def prefill(self, works: Sequence[StageWork]) -> float:
        """The admitted requests' prompts, prefilled together."""
        return self._prefill(len(works), max(0, _mean_work(works).tokens))

    def step(self, running: int, context: float) -> float:
        """One decode step of `running` sequences at a mean KV context of `context` tokens."""
        return self._step(running, _bucket(context))


def _bucket(x: float) -> int:
    """Round a context length to within 1/8, so the step-time cache stays small."""
    n = max(16, int(x))
    q = 1 << max(0, n.bit_length() - 4)
    return (n // q) * q

