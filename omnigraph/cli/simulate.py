"""`omnigraph simulate`: a plan under a synthetic load, in the discrete-event simulator.

    omnigraph simulate plan.json --rate 20 --requests 500 --mix chat:0.7,long:0.3 --slo 5
    omnigraph simulate examples/tiny/moe_tiny.yaml --target cpu-local --burst --requests 64 --json

Step times come from the cost rules on the target's devices (see passes/sim/model.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omnigraph.cli.common import console as make_console, working
from omnigraph.cli.plan import SPLIT_HELP, slo_arg
from omnigraph.errors import OmnigraphError

_SPEC_SUFFIXES = (".yaml", ".yml", ".og", ".mlir")


def register(sub: Any) -> None:
    """Register `simulate` on the CLI's subparsers."""
    p = sub.add_parser("simulate", help="simulate a plan under load: throughput, latency, utilisation")
    p.add_argument("plan", help="a plan JSON (compile --emit plan) or a spec (.yaml, .og)")
    p.add_argument("--target", help="target name or YAML file (default: the plan's, else cpu-local)")
    p.add_argument("--rate", type=float, help="Poisson arrivals per second (0: all at once)")
    p.add_argument("--burst", action="store_true", help="all requests arrive at t=0")
    p.add_argument("--requests", "-n", type=int, default=200, help="how many requests (default 200)")
    p.add_argument("--mix", help="request mix: preset:weight,... (chat, long, image, speech, video) or a YAML file")
    p.add_argument("--slo", type=slo_arg, help="latency targets goodput counts requests within: seconds end to end "
                   "(5), or ttft=0.5,tpot=0.05[,e2e=20][,ttfa=4] (ttfa: to the first speech out); a spec is "
                   "planned for them (see compile --slo)")
    p.add_argument("--split", help=SPLIT_HELP + " (a spec, with a target)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrivals and the mix (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--timeline", metavar="OUT", help="draw the stage replicas' steps over time (.svg, .png, .pdf; "
                   "needs the viz extra), or write them as a Chrome trace (.json: Perfetto, chrome://tracing)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return simulate_command(args.plan, target=args.target, rate=args.rate, burst=args.burst,
                            requests=args.requests, mix=args.mix, slo=args.slo, seed=args.seed,
                            as_json=args.json, timeline=args.timeline, split=args.split)


def simulate_command(plan_path: str, *, target: str | None, rate: float | None, burst: bool, requests: int,
                     mix: str | None, slo: Any, seed: int, as_json: bool, timeline: str | None = None,
                     split: str | None = None) -> int:
    from omnigraph.passes.sim.model import simulate_plan
    from omnigraph.passes.planner.workload import parse_mix
    from omnigraph.target import load_target

    if rate is None and not burst:
        raise OmnigraphError("give an arrival rate (--rate R, requests/s) or --burst")
    if rate is not None and not rate >= 0:
        raise OmnigraphError(f"--rate {rate:g}: a rate is requests per second, 0 or more (0: a burst)")
    if requests < 1:
        raise OmnigraphError(f"--requests {requests}: simulate at least one request")
    if timeline is not None and not timeline.lower().endswith(".json"):
        from omnigraph.draw.figures import check_output

        check_output(timeline)  # a wrong suffix fails before simulating
    from omnigraph.cli.plan import as_slo

    slo = as_slo(slo)
    shapes = parse_mix(mix)
    plan = _load_plan(plan_path, target, mix, slo, split)
    tgt = load_target(target or plan.target or "cpu-local")
    all_at_once = burst or not rate
    with working(f"simulating {requests} requests of {plan.pipeline} on {tgt.target} …"):
        report = simulate_plan(plan, tgt, shapes, rate=None if all_at_once else rate, requests=requests, seed=seed,
                               slo=slo, trace=timeline is not None)
    if timeline is not None:
        _write_timeline(report, timeline, f"{plan.pipeline} on {tgt.target} (simulated)")
    load = {"arrivals": "burst" if all_at_once else "poisson", "rate_req_s": None if all_at_once else rate,
            "requests": requests, "seed": seed,
            "mix": [{"name": s.name, "weight": s.weight} for s in shapes]}
    if as_json:
        doc = {"pipeline": plan.pipeline, "target": tgt.target, "load": load, **report.to_dict()}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print(plan.pipeline, tgt.target, load, report)
    return 0


def _write_timeline(report: Any, out: str, title: str) -> None:
    if out.lower().endswith(".json"):
        from omnigraph.draw.trace import write_trace

        written = write_trace(report.spans, out, title)
    else:
        from omnigraph.draw.timeline import draw_timeline

        requests = [(r.id, r.arrival_s, r.finish_s) for r in report.per_request]
        written = draw_timeline(report.spans, requests, out, title)
    make_console(stderr=True).print(f"[green]wrote[/] {written}")


def _load_plan(path_text: str, target: str | None, mix: str | None, slo: Any, split: str | None = None) -> Any:
    from omnigraph.runtime.plan import RuntimePlan

    path = Path(path_text)
    if path.suffix.lower() in _SPEC_SUFFIXES:
        from omnigraph.api import compile_plan
        from omnigraph.cli.plan import planning_options

        # A spec is planned for the load it is simulated under.
        return compile_plan(path, target, plan_options=planning_options(mix, slo, split=split) if target else None)
    if not path.is_file():
        raise OmnigraphError(f"no such file: {path}")
    try:
        return RuntimePlan.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()
        detail = f" ({first[0]}{': ' + first[2].strip() if len(first) > 2 else ''})" if first else ""
        raise OmnigraphError(f"{path}: not a runtime plan{detail}",
                             hint="write one with: omnigraph compile SPEC --emit plan -o plan.json") from None


def _print(pipeline: str, target: str, load: dict[str, Any], report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = make_console()
    what = "burst" if load["arrivals"] == "burst" else f"Poisson {load['rate_req_s']:g} req/s"
    mix = ", ".join(f"{m['name']}:{m['weight']:g}" for m in load["mix"])
    table = Table(title=f"{pipeline} on {target}: {load['requests']} requests, {what}, mix {mix}")
    for col in ("stage", "replicas", "utilisation", "mean batch", "queue wait", "jobs"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in report.stages.values():
        table.add_row(s.name, str(s.replicas), f"{100 * s.utilisation:.1f}%", f"{s.mean_batch:.1f}",
                      _time(s.mean_queue_wait_s), str(s.jobs))
    console.print(table)
    console.print(f"throughput [bold]{report.throughput:.3g}[/] req/s over {_time(report.makespan_s)}"
                  + (f"; goodput [bold]{report.goodput:.3g}[/] req/s within {report.slo} "
                     f"({report.attainment:.0%} of requests)" if report.slo is not None else ""))
    for name, lat in (("JCT", report.jct), ("TTFT", report.ttft), ("TPOT", report.tpot), ("TTFA", report.ttfa)):
        if lat is not None:
            console.print(f"{name:<5} mean {_time(lat.mean)}  p50 {_time(lat.p50)}  p90 {_time(lat.p90)}  "
                          f"p99 {_time(lat.p99)}")


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"
