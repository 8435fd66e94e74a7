"""`omnigraph plan SPEC --target T`: plan a pipeline and show what was decided.

A table per stage (config, replicas, devices, memory per device, predicted times,
utilisation at the planned rate) and the bottleneck; `--json` for machines.
"""
from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from omnigraph.cli.common import console as make_console, working
from omnigraph.errors import OmnigraphError

GIB = 1 << 30


def planning_options(mix: str | None, slo: Any = None, headroom: float | None = None,
                     split: str | None = None, solve_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Pass options from the planning flags: the mix and end-to-end target for plan-parallel;
    TTFT/TPOT targets and --split for split-prefill-decode."""
    slo = as_slo(slo)
    opts: dict[str, Any] = {}
    if mix:
        opts["mix"] = mix
    if slo is not None and slo.e2e_s:
        opts["slo"] = slo.e2e_s
    if headroom:
        opts["headroom"] = headroom
    if solve_s:
        opts["solve_s"] = solve_s
    out = {"plan-parallel": opts} if opts else {}
    if split or (slo is not None and slo.token_targets):
        out["split-prefill-decode"] = {"slo": str(slo) if slo else "", "split": split or "", "mix": mix or "",
                                       **({"headroom": headroom} if headroom else {})}
    return out


def as_slo(slo: Any) -> Any:
    """An Slo from what callers pass: None, seconds end to end, the --slo text, or an Slo."""
    from omnigraph.passes.sim.sim_types import Slo, parse_slo

    return slo if isinstance(slo, Slo) or slo is None else parse_slo(slo)


def slo_arg(text: str) -> Any:
    """argparse type of --slo: seconds end to end, or ttft=…,tpot=…[,e2e=…]."""
    import argparse

    from omnigraph.passes.sim.sim_types import SimulationError, parse_slo

    try:
        return parse_slo(text)
    except SimulationError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--slo: ")) from None


SLO_HELP = ("latency targets: seconds end to end (5), or ttft=0.5,tpot=0.05[,e2e=20] (time to first token, "
            "per output token: an LLM stage is split into prefill and decode instances where that serves more "
            "requests within them)")
SPLIT_HELP = "split these LLM stages into prefill and decode replicas as given: llm=1:3 (prefill:decode)"


def plan_spec(spec: str, target: str, mix: str | None = None, slo: Any = None,
              split: str | None = None, solve_s: float | None = None) -> dict[str, Any]:
    """Compile and plan; the placement report (planner/placement_report.py) and how long planning took."""
    from omnigraph.compiler import compile_path
    from omnigraph.passes.planner.placement_report import placement_report
    from omnigraph.target import load_target

    load_target(target)  # an unknown target fails here, with the list of known ones
    slo = as_slo(slo)
    started = time.perf_counter()
    comp = compile_path(spec, target=target, plan_options=planning_options(mix, slo, split=split, solve_s=solve_s))
    report = placement_report(comp.module)
    if not report["stages"]:
        raise OmnigraphError(f"{spec}: nothing was planned (the pipeline has no stages to place)")
    report["planning_s"] = time.perf_counter() - started
    report["mix"] = mix or "default"
    report["slo_s"] = slo.e2e_s if slo is not None else None
    report["slo"] = str(slo) if slo is not None else None
    report["edges"] = _stage_edges(comp)
    return report


def _stage_edges(comp: Any) -> list[dict[str, Any]]:
    """Which stage feeds which (stream: delivered in chunks), as the runtime plan wires them."""
    from omnigraph.codegen.plan_emitter import emit_plan

    plan = emit_plan(comp.module, comp.target.devices if comp.target is not None else None)
    names = {n.name for n in plan.stages()}
    edges = {}
    for node in plan.stages():
        for b in node.inputs:
            src = b.source.split(".")[0]
            if src in names and src != node.name:
                edges[(src, node.name)] = edges.get((src, node.name), False) or b.stream
    return [{"from": a, "to": b, "stream": s} for (a, b), s in edges.items()]


def _devices(devs: list[str]) -> str:
    """`node0:gpu0-3,6` for a list of device ids, node by node."""
    by_node: dict[str, list[str]] = {}
    for d in dict.fromkeys(devs):
        node, _, name = d.partition(":")
        by_node.setdefault(node, []).append(name)
    parts = []
    for node, names in by_node.items():
        stem = names[0].rstrip("0123456789")
        if all(n.rstrip("0123456789") == stem and n[len(stem):].isdigit() for n in names):
            parts.append(f"{node}:{stem}{_ranges(sorted(int(n[len(stem):]) for n in names))}")
        else:
            parts.append(f"{node}:{','.join(names)}")
    return " ".join(parts)


def _cores(ids: list[int] | None) -> str:
    """` cores 0-1` when the stage has its own share of a CPU's cores."""
    return f" cores {_ranges(ids)}" if ids else ""


def _ranges(ids: list[int]) -> str:
    out, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{report['pipeline']} on {report['target']}  (memory in GiB per device)")
    left = ("stage", "config", "devices")
    for col in ("stage", "config", "×", "devices", "dtype", "params", "weights", "kv", "act", "offload", "time",
                "first", "util"):
        table.add_column(col, justify="left" if col in left else "right", overflow="fold")
    for r in report["stages"]:
        m = r["memory"]
        mark = " ◀" if r["stage"] == report["bottleneck"] else ""
        table.add_row(
            r["stage"] + mark, r["config"] + (f" on {r['rides_on']}" if r.get("rides_on") else " shared" if r["shared"] else "") + (" swap" if r.get("swap") else ""),
            str(r["replicas"]), _devices(r["devices"]) + _cores(r.get("cores")), r.get("dtype") or "-", _params(r),
            *(f"{m.get(k, 0) / GIB:.1f}" for k in ("weights", "kv", "arena", "offload")),
            _secs(r["latency_s"]), _secs(r["first_output_s"]), f"{r['utilisation']:.0%}",
        )
    console.print(table)
    counted = sorted({r["counted"] for r in report["stages"]})
    console.print("params " + "; ".join(_HOW[c] for c in counted if c in _HOW))
    for r in report["stages"]:
        if r.get("split") and not r["split"].startswith("decode of"):
            console.print(f"split {r['stage']}: {r['split'].removeprefix('prefill of ')}")
    for r in report["stages"]:
        if r["counted"] == "guess":
            console.print(f"[bold yellow]warning:[/] stage {r['stage']}: {r['note']}")
    console.print(
        f"predicted throughput [bold]{report['throughput_rps']:.3g} req/s[/] on {report['devices_used']} "
        f"device(s); bottleneck [bold]{report['bottleneck']}[/]; mix {report['mix']}"
        + (f"; latency targets {report['slo']}" if report.get("slo") else "")
        + f"; planned in {report['planning_s']:.2f} s"
        + (f" (within {report['optimality_gap']:.2%} of the best plan: the search stopped at its time budget, "
           f"--solve-time gives it longer)" if report.get("optimality_gap", 0) > 1e-4 else "")
    )


_MARK = {"meta": "", "checkpoint": "", "file": "", "config": "~", "guess": "?"}
_HOW = {"meta": "counted on a meta instance", "checkpoint": "read from checkpoint headers",
        "file": "read from weights file headers",
        "config": "~ from the config's sizes by formula", "guess": "? GUESSED (the plan rests on a guess)"}


def _params(row: dict[str, Any]) -> str:
    n = row.get("params")
    if not isinstance(n, int):
        return "-"
    shown = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"
    return _MARK.get(row["counted"], "") + shown


def _secs(s: float) -> str:
    return f"{s * 1e3:.0f}ms" if s < 10 else f"{s:.1f}s"


def plan_command(spec: str, target: str, *, mix: str | None, slo: Any, as_json: bool,
                 viz: str | None = None, split: str | None = None, solve_s: float | None = None) -> int:
    if viz is not None:
        from omnigraph.draw.figures import check_output

        check_output(viz)  # a wrong suffix fails before planning
    with working(f"planning {spec} for {target} …"):
        report = plan_spec(spec, target, mix, slo, split, solve_s)
    if viz is not None:
        _draw(report, target, viz)
    console = make_console()
    console.width = max(120, console.width)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, console)
    return 0


def plan_placement_picture(spec: str, target: str, out: str) -> int:
    """`viz SPEC --plan --target T -o OUT`: the placement picture alone."""
    from omnigraph.draw.figures import check_output

    check_output(out)
    with working(f"planning {spec} for {target} …"):
        report = plan_spec(spec, target)
    _draw(report, target, out)
    return 0


def _draw(report: dict[str, Any], target: str, out: str) -> None:
    from omnigraph.draw.placement import draw_placement
    from omnigraph.target import load_target

    tgt = load_target(target)
    devices = [(f"{n.name}:{d.name}", d.memory_gib) for n in tgt.nodes for d in n.devices]
    drawn = draw_placement(report, devices, [(e["from"], e["to"], e["stream"]) for e in report["edges"]], out)
    make_console(stderr=True).print(f"[green]wrote[/] {drawn}")


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="plan parallelism, placement and memory for a target")
    p.add_argument("spec")
    p.add_argument("--target", required=True, help="target name (see targets/) or YAML file")
    p.add_argument("--mix", help="request mix: presets (chat:0.7,long:0.3) or a YAML file")
    p.add_argument("--slo", type=slo_arg, help=SLO_HELP)
    p.add_argument("--split", help=SPLIT_HELP)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--solve-time", type=_seconds, metavar="S", help="seconds the planner's MILP may search "
                   "(default 0.6; small graphs are solved to proven optimality long before, and a plan "
                   "found when the time ran out says how far from the best it may be)")
    p.add_argument("--viz", metavar="OUT.svg", help="also draw the placement (devices as lanes, memory per "
                   "device, stream edges) to a .svg, .png or .pdf (needs the viz extra: matplotlib)")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    return plan_command(args.spec, args.target, mix=args.mix, slo=args.slo, as_json=args.json, viz=args.viz,
                        split=args.split, solve_s=args.solve_time)


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text}")
    return value
