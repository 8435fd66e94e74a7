"""Calibrating the simulator against measured runs of a plan on one machine.

The runtime records each step a stage's worker takes (LocalBackend.stage_timings:
batch, new, seconds, start). Steps of different stages that overlap in time share the
machine, so each took longer than it would alone. Given a device capacity C (see
sim/engine.py: k steps at once run at min(1, C/k) of full speed each), every measured
step is turned back into the time it would take alone by integrating that speed over
its span; those times fit the stage's step-time curves (sim_model.fit_batch, fit_ar).
C itself is the value whose simulation best reproduces the calibration runs'
throughput and mean JCT. A runtime's hand-off delay (from a stage's inputs being in to
its worker picking the work up) can be fitted the same way (`handoffs`), but on
LocalBackend it is a fraction of a millisecond that the fit cannot tell from noise
(tried: it picked the grid's edge), so by default it is held at 0. Per stage, the hand-off is
measured instead (stage_handoffs: each request's wait from dispatch to its first step, when
short), and the simulator delays each stage's work by its own. Runs used to calibrate should
not be the runs used to judge.
"""
from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from omnigraph.kinds import KINDS
from omnigraph.passes.sim.model import StageTimings, make_requests, sim_pipeline_from_measurements
from omnigraph.passes.sim.engine import SimReport, SimulationError, shared_speed, simulate
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.runtime.plan import RuntimePlan

Step = tuple[int, int, float, float]  # batch, new, seconds, started (any clock, one per run)
CAPACITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5)
HANDOFFS = (0.0,)  # seconds; see the module's docstring
LIGHT_WAIT_S = 0.02  # a wait shorter than this is the runtime's hand-off, not a queue


@dataclass
class MeasuredRun:
    """One load replayed on the real backend: what arrived when, and what came out."""

    name: str
    arrivals: list[float]
    throughput: float  # completed / (last completion - first arrival)
    mean_jct_s: float
    steps: dict[str, list[Step]] = field(default_factory=dict)
    # Per stage, each request's wait from its inputs being in (the engine dispatching it) to the
    # first step that ran it: the runtime's hand-off, measured, not fitted (stage_handoffs).
    waits: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Calibration:
    capacity: float
    handoff_s: float
    timings: dict[str, StageTimings]
    errors: dict[tuple[float, float], float]  # (capacity, handoff) -> sum of squared log ratios
    stage_handoff_s: dict[str, float] = field(default_factory=dict)  # per stage, measured (see MeasuredRun.waits)


def stage_handoffs(plan: RuntimePlan, runs: Sequence[MeasuredRun], busy_below: float = LIGHT_WAIT_S) -> dict[str, float]:
    """Per stage, the median wait of a request from dispatch to its first step, over the waits
    short enough to be the runtime's own delay (a worker's wake-up) rather than queueing behind
    busy steps, less the batch fill window the simulator already models: the calibration's
    per-stage hand-off."""
    fill = {n.name: 0.0 if KINDS[n.kind].traits.continuous else n.batching.max_wait_ms / 1000 for n in plan.stages()}
    merged: dict[str, list[float]] = {}
    for run in runs:
        for stage, waits in run.waits.items():
            merged.setdefault(stage, []).extend(w for w in waits if 0 <= w <= busy_below)
    return {stage: max(0.0, statistics.median(w) - fill.get(stage, 0.0)) for stage, w in merged.items() if w}


def deshare(steps: dict[str, list[Step]], capacity: float) -> dict[str, list[tuple[int, int, float]]]:
    """Each step's time alone: its span, weighted by the speed it had while others ran."""
    spans = [(s[3], s[3] + s[2]) for stage in steps.values() for s in stage]
    starts = sorted(a for a, _ in spans)
    ends = sorted(b for _, b in spans)
    cuts = sorted({t for span in spans for t in span})
    speed = []  # per elementary segment between cuts
    for a, b in zip(cuts, cuts[1:]):
        mid = (a + b) / 2
        k = bisect.bisect_right(starts, mid) - bisect.bisect_right(ends, mid)
        speed.append(shared_speed(capacity, k) if k else 1.0)
    out: dict[str, list[tuple[int, int, float]]] = {}
    for name, stage in steps.items():
        rows = out.setdefault(name, [])
        for batch, new, seconds, started in stage:
            end = started + seconds
            i = bisect.bisect_right(cuts, started) - 1
            alone = 0.0
            while 0 <= i < len(speed) and cuts[i] < end:
                alone += (min(cuts[i + 1], end) - max(cuts[i], started)) * speed[i]
                i += 1
            rows.append((batch, new, max(alone, 1e-7)))
    return out


def calibrate(plan: RuntimePlan, runs: Sequence[MeasuredRun], capacities: Sequence[float] = CAPACITIES,
              handoffs: Sequence[float] = HANDOFFS) -> Calibration:
    """The device capacity and hand-off delay (and step times) that best reproduce `runs`."""
    return calibrate_many([(plan, runs)], capacities, handoffs)[0]


def calibrate_many(cases: Sequence[tuple[RuntimePlan, Sequence[MeasuredRun]]],
                   capacities: Sequence[float] = CAPACITIES,
                   handoffs: Sequence[float] = HANDOFFS) -> list[Calibration]:
    """One capacity and hand-off for the machine, fitted over several pipelines' runs at once."""
    if not cases or not all(runs for _, runs in cases):
        raise SimulationError("calibration needs at least one measured run per pipeline")
    errors: dict[tuple[float, float], float] = {}
    fitted: dict[float, list[dict[str, StageTimings]]] = {}
    for c in capacities:
        fitted[c] = [timings_at(runs, c) for _, runs in cases]
        for h in handoffs:
            errors[(c, h)] = sum(_error(replay(plan, timings, c, group[0].arrivals, h, stage_handoff_s=stage_handoffs(plan, runs)),
                                        group)
                                 for (plan, runs), timings in zip(cases, fitted[c])
                                 for group in _by_name(runs).values())
    best_c, best_h = min(errors, key=lambda key: errors[key])
    return [Calibration(best_c, best_h, t, errors, stage_handoffs(plan, runs))
            for t, (plan, runs) in zip(fitted[best_c], cases)]


def timings_at(runs: Sequence[MeasuredRun], capacity: float) -> dict[str, StageTimings]:
    merged: dict[str, list[tuple[int, int, float]]] = {}
    for run in runs:
        for name, rows in deshare(run.steps, capacity).items():
            merged.setdefault(name, []).extend(rows)
    return {name: StageTimings(tuple(rows)) for name, rows in merged.items()}


def replay(plan: RuntimePlan, timings: dict[str, StageTimings], capacity: float,
           arrivals: Sequence[float], handoff_s: float = 0.0, seed: int = 0,
           stage_handoff_s: dict[str, float] | None = None) -> SimReport:
    """Simulate the plan, timed by `timings` (and per-stage hand-offs), under the given arrivals."""
    pipeline, work_fn = sim_pipeline_from_measurements(plan, timings, device_capacity=capacity,
                                                       handoff_s=handoff_s)
    if stage_handoff_s:
        pipeline.stages = [replace(st, handoff_s=stage_handoff_s.get(st.name, 0.0)) for st in pipeline.stages]
    mix = parse_mix(None)  # measured step times do not depend on request sizes
    return simulate(pipeline, make_requests(work_fn, mix, arrivals, seed))


def median_of(runs: Sequence[MeasuredRun]) -> tuple[float, float]:
    """(throughput, mean JCT) of repeated runs of one load: the medians, robust to a stall."""
    return statistics.median(r.throughput for r in runs), statistics.median(r.mean_jct_s for r in runs)


def _by_name(runs: Sequence[MeasuredRun]) -> dict[str, list[MeasuredRun]]:
    out: dict[str, list[MeasuredRun]] = {}
    for run in runs:
        out.setdefault(run.name, []).append(run)
    return out


def _error(report: SimReport, group: Sequence[MeasuredRun]) -> float:
    throughput, jct = median_of(group)
    return math.log(report.throughput / throughput) ** 2 + math.log(report.jct.mean / jct) ** 2
