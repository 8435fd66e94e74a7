"""One cost model that the planner optimises and the simulator replays (issue 20, part 5).

For every example that plans on the shipped GPU targets, the planner's predicted capacity (its
throughput over the headroom it plans at) and what the simulator serves on the same plan, run
saturated, agree within 10%; the prediction is the cost model's capacity of the plan it wrote
(passes/sim/capacity.py `modelled_capacity`). And (part 4) the planner's plan is at least as good
as each vLLM-Omni-style hand placement of benchmarks/planner_vs_hand.py, by that model and by
the simulator.

The simulations are seeded and short: Poisson arrivals at OVERLOAD x the predicted capacity for
about LATENCIES end-to-end latencies (so the first third, which the judge leaves out as warm-up,
holds the ramp), stopped at the last arrival, and the completions per second over the rest
(benchmarks/plan_eval.py `judge`, the benchmarks' judge).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, PREPARED

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan_eval import judge  # noqa: E402
from planner_vs_hand import HAND, TARGETS, hand_plan  # noqa: E402

from omnigraph.codegen.plan_emitter import emit_plan  # noqa: E402
from omnigraph.compiler import compile_path  # noqa: E402
from omnigraph.kinds import KINDS  # noqa: E402
from omnigraph.passes.plan_parallel import PlanParallelPass  # noqa: E402
from omnigraph.passes.planner.cost_rules import admitted_together  # noqa: E402
from omnigraph.passes.planner.cost_types import StageWork  # noqa: E402
from omnigraph.passes.planner.placement_report import placement_report  # noqa: E402
from omnigraph.passes.planner.stage_options import stage_works  # noqa: E402
from omnigraph.passes.planner.workload import parse_mix  # noqa: E402
from omnigraph.passes.sim.capacity import modelled_capacity  # noqa: E402
from omnigraph.passes.sim.engine import SimPipeline, SimRequest, SimStage, simulate  # noqa: E402
from omnigraph.passes.stage_graph import stage_graph  # noqa: E402
from omnigraph.runtime.plan import RuntimePlan  # noqa: E402
from omnigraph.target import load_target  # noqa: E402

HEADROOM = PlanParallelPass().headroom
AGREE = 0.10  # predicted and simulated capacity within 10% (issue 20)
# Arrivals above what the model rates the plan at, so every plan runs saturated; one the
# simulator serves at more than 1.3x of that reads as 1.3x, which still fails.
OVERLOAD = 1.3
LATENCIES = 3.5  # arrivals last about this many end-to-end latencies
LUMPS = 10  # rounds of each batch stage's replicas the judged window holds
LEAST, MOST = 600, 4000  # requests per simulation
TOKENS = 500_000
SEED = 7
# The planner's plan against a hand placement in the simulator: both see the same seeded
# arrivals (common random numbers), so what differs is the plans. What is left is where the
# judged window's edges cut a batch stage's batches, which end all at once (a Wan DiT at batch 4
# against batch 1 at equal rates moves the count by up to ~1%): 2% covers that, and a plan that
# is really worse (the closest case here, Qwen2.5-Omni's hand placement with the planner's
# batches, serves 7% less) still fails.
SIM_TOLERANCE = 0.02

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.yaml") if p.stem not in PREPARED)


@functools.lru_cache(maxsize=None)  # one plan per case in a session
def _planned(example: str, target: str) -> tuple[float, int, RuntimePlan]:
    """(predicted requests/s, requests a saturated run of it needs, runtime plan) for an example
    on a target. Enough requests that arrivals last LATENCIES end-to-end latencies (each stage's
    latency as often as a request visits it) and that the judged window holds LUMPS rounds of
    every batch stage's replicas (a batch ends all at once: too few, and where the window's
    edges cut them moves the count); where the pipeline is cheap to simulate, more (up to TOKENS
    tokens and forwards a run simulates: a longer run is a steadier one)."""
    comp = compile_path(str(EXAMPLES / f"{example}.yaml"), target=target)
    report = placement_report(comp.module)
    rate = OVERLOAD * report["throughput_rps"] / HEADROOM
    latency = sum(r["latency_s"] * r["visits"] for r in report["stages"])
    lumps = max((r["replicas"] * r["batch"] / r["visits"] for r in report["stages"]
                 if not KINDS[r["kind"]].traits.continuous), default=0)
    works = stage_works(stage_graph(comp.module), parse_mix(None))
    tokens = sum(st.visits * (w.decode_steps + 1) * w.repeats for st in stage_graph(comp.module)
                 for w in works[st.name][:1])
    requests = int(min(MOST, max(LEAST, rate * LATENCIES * latency, 1.5 * LUMPS * lumps, TOKENS / tokens)))
    return report["throughput_rps"], requests, emit_plan(comp.module, comp.target.devices)


def _served(plan: RuntimePlan, example: str, target: str) -> float:
    """Requests/s the simulator serves on `plan` under the case's seeded saturating arrivals."""
    predicted, requests, _ = _planned(example, target)
    return judge(plan, load_target(target), rate=OVERLOAD * predicted / HEADROOM, requests=requests, seed=SEED,
                 steady_only=True)["steady_rps"]


@functools.lru_cache(maxsize=None)
def _planner_served(example: str, target: str) -> float:
    return _served(_planned(example, target)[2], example, target)


def _cases() -> list[Any]:
    return [pytest.param(e, t, id=f"{e}-{t}") for e in EXAMPLE_NAMES for t in TARGETS]


@pytest.mark.parametrize("example,target", _cases())
def test_predicted_capacity_is_what_the_simulator_serves(example: str, target: str) -> None:
    capacity = _planned(example, target)[0] / HEADROOM
    served = _planner_served(example, target)
    assert served == pytest.approx(capacity, rel=AGREE), (
        f"{example} on {target}: the planner predicts {capacity:.4g} req/s at full utilisation, "
        f"the simulator serves {served:.4g} ({served / capacity:.3f}x)")


# No simulation, no noise: the planner's prediction is its model's capacity of the plan it wrote.
@pytest.mark.parametrize("example,target", _cases())
def test_prediction_is_the_models_capacity_of_the_plan(example: str, target: str) -> None:
    predicted, _, plan = _planned(example, target)
    capacity = modelled_capacity(plan, load_target(target), parse_mix(None))
    # Within 5%: the planner rates a pooled stage at the batch the pool's traffic fills at
    # capacity (Little's law: a small stage sharing a device fills only part of its batch),
    # where this model of the plan counts every batch full; the two agree exactly on a plan
    # with no pooled batch stage, and the simulator lands between them.
    assert predicted / HEADROOM <= capacity * (1 + 1e-3)
    assert predicted / HEADROOM == pytest.approx(capacity, rel=0.05)


@pytest.mark.parametrize("example,target", [(e, t) for e in HAND for t in TARGETS],
                         ids=[f"{e}-{t}" for e in HAND for t in TARGETS])
def test_planner_beats_hand_placements_by_model_and_simulator(example: str, target: str) -> None:
    planned = _planned(example, target)[2]
    tgt = load_target(target)
    mix = parse_mix(None)
    model = modelled_capacity(planned, tgt, mix)
    served = _planner_served(example, target)
    for name, batches in (("hand_shipped", False), ("hand_planner_batches", True)):
        hand = hand_plan(planned, example, tgt.devices, planner_batches=batches)
        hand_model = modelled_capacity(hand, tgt, mix)
        assert model >= hand_model * (1 - 1e-9), (
            f"{example} on {target}: the model rates {name} at {hand_model:.4g} req/s, the plan at {model:.4g}")
        hand_served = _served(hand, example, target)  # the same seeded arrivals as the plan's
        assert served >= hand_served * (1 - SIM_TOLERANCE), (
            f"{example} on {target}: the simulator serves {name} {hand_served:.4g} req/s, "
            f"the planner's plan {served:.4g} ({served / hand_served:.3f}x)")


# -- the mechanisms the two share -------------------------------------------------------------

def test_continuous_batching_admits_about_one_request_at_a_time() -> None:
    assert admitted_together(32, 127) == pytest.approx(1.13, abs=0.01)  # a reply of 128 tokens
    assert admitted_together(32, 0) == 32  # prefill only: a whole batch at once
    assert admitted_together(1, 10) == 1
    assert 1 < admitted_together(32, 15) < 32 / 16 + 1


def test_an_ar_loop_body_runs_one_sequence_per_iteration() -> None:
    """Three rounds of an AR task cost what three requests of one round cost, one after another
    (prefill and decode each time, the context starting over), not one sequence three times as long."""
    def prefill(works: Any) -> float:
        return 0.01 * sum(w.tokens for w in works) / 100

    def step(running: int, context: float) -> float:
        return 0.001 + 1e-5 * context  # grows with the context: a longer sequence costs more a step

    stage = SimStage("llm", mode="ar", max_batch=1, prefill_time=prefill, step_time=step)
    pipe = SimPipeline([stage], [], {"x": ["llm"]}, ["llm"])
    work = StageWork(tokens=100, decode_steps=9)
    rounds = simulate(pipe, [SimRequest(0, 0.0, {"llm": StageWork(tokens=100, decode_steps=9, repeats=3)})])
    three = simulate(pipe, [SimRequest(i, 0.0, {"llm": work}) for i in range(3)])
    assert rounds.makespan_s == pytest.approx(three.makespan_s)
    assert rounds.stages["llm"].jobs == 3  # admitted three times


def test_a_run_stopped_at_the_last_arrival_judges_the_same() -> None:
    predicted, _, plan = _planned("speak", "h100x8")
    tgt = load_target("h100x8")
    rate = OVERLOAD * predicted / HEADROOM
    full = judge(plan, tgt, rate=rate, requests=600, seed=SEED)
    stopped = judge(plan, tgt, rate=rate, requests=600, seed=SEED, steady_only=True)
    assert stopped["steady_rps"] == full["steady_rps"]
