"""Shared by the planner benchmarks: targets, turning a solution into a runtime plan, and
judging a runtime plan with the discrete-event simulator."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnigraph.codegen.plan_emitter import emit_plan
from omnigraph.dialect.textio import make_context
from omnigraph.passes.place_devices import PlaceDevicesPass
from omnigraph.passes.plan_memory import PlanMemoryPass
from omnigraph.passes.plan_parallel import Problem, write_plan
from omnigraph.passes.planner.plan_problem import PlanSolution
from omnigraph.passes.sim.model import make_requests, sim_pipeline_from_plan
from omnigraph.passes.sim.engine import poisson_arrivals, simulate
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.target import Target

H100 = {"type": "h100", "memory_gib": 80, "peak_tflops": 989, "mem_bandwidth_gb_s": 3350}


@dataclass
class Case:
    name: str
    spec: Path


def write_spec(tmp: Path, doc: dict) -> Path:
    path = tmp / f"{doc['pipeline']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def h100_node(n: int) -> dict:
    devs = [{"name": f"gpu{i}", **H100} for i in range(n)]
    return {"name": "node0", "intra_node_gb_s": 450, "devices": devs,
            "nvlink_domains": [[d["name"] for d in devs]]}


def small_targets(tmp: Path) -> list[str]:
    """Shipped targets of <= 8 devices, plus 2- and 4-GPU H100 boxes."""
    out = ["h100x1"]
    for n in (2, 4):
        path = tmp / f"h100x{n}.yaml"
        path.write_text(yaml.safe_dump({"target": f"h100x{n}", "inter_node_gb_s": 0, "nodes": [h100_node(n)]}))
        out.append(str(path))
    return out + ["h100x8", "h200x8", "mixed"]


def runtime_plan(built: Problem, solution: PlanSolution) -> RuntimePlan:
    """The runtime plan a solution gives: the planning passes' attributes, placed, laid out."""
    write_plan(built.stages, solution, built.works)
    module = built.stages[0].op.get_toplevel_object()
    ctx = make_context()
    PlaceDevicesPass().apply(ctx, module)
    PlanMemoryPass().apply(ctx, module)
    return emit_plan(module, built.target.devices)


def judge(plan: RuntimePlan, target: Target, *, rate: float, requests: int, mix: str | None = None,
          slo_s: float | None = None, seed: int = 0, steady_only: bool = False) -> dict[str, Any]:
    """Replay Poisson traffic at `rate` on the plan with the simulator. `steady_only`: stop at
    the last arrival (the steady figure is the same; the backlog is not drained, so the whole
    run's throughput and latencies are not reported)."""
    shapes = parse_mix(mix)
    pipeline, work = sim_pipeline_from_plan(plan, target, shapes)
    arrivals = poisson_arrivals(rate, requests, seed)
    reqs = make_requests(work, shapes, arrivals, seed)
    report = simulate(pipeline, reqs, slo_s=slo_s, until_s=arrivals[-1] if steady_only else None)
    steady = steady_throughput(report, last=arrivals[-1])
    if steady_only:
        return {"steady_rps": steady}
    return {"throughput_rps": report.throughput, "goodput_rps": report.goodput,
            "steady_rps": steady, "jct_p50_s": report.jct.p50, "jct_p99_s": report.jct.p99}


def steady_throughput(report: Any, last: float | None = None) -> float:
    """Completions per second while requests still arrive, past the first third (warm-up):
    under overload, the plan's capacity without the fill and drain at the ends of a run.
    `last`: the last arrival (a run stopped there reports only what finished)."""
    if last is None:
        last = max(r.arrival_s for r in report.per_request)
    start = last / 3
    done = sum(1 for r in report.per_request if start <= r.finish_s <= last)
    return done / (last - start) if last > start else report.throughput


def requests_for(rate: float, latency_s: float, least: int = 300, most: int = 5000) -> int:
    """Enough requests that arrivals last ~10 end-to-end latencies (warm-up is a small part)."""
    return int(max(least, min(most, rate * 10 * latency_s)))


def evaluate(spec: Path, target: Target, built: Problem, solution: PlanSolution, *, rate: float,
             requests: int) -> dict[str, Any]:
    return judge(runtime_plan(built, solution), target, rate=rate, requests=requests)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="omnigraph-bench-"))
