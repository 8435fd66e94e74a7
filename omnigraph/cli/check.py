"""Looking at a spec: `check`, `viz`, `schema`, `kinds`."""
from __future__ import annotations

import argparse
import json
from typing import Any

from omnigraph.cli.common import console, write
from omnigraph.errors import OmnigraphError


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="validate a spec (.yaml, .og) or IR (.mlir)")
    p.add_argument("spec")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("viz", help="draw the pipeline graph (Mermaid or Graphviz DOT), or with --plan its placement")
    p.add_argument("spec")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.add_argument("-o", "--output", help="where to write it (--plan: a .svg, .png or .pdf)")
    p.add_argument("--plan", action="store_true", help="draw the plan for --target instead: devices as lanes, "
                   "stage instances on them, memory per device (as `plan --viz`; needs the viz extra)")
    p.add_argument("--target", help="with --plan: the target to plan for (name or YAML file)")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("schema", help="print the JSON Schema of YAML specs (for editors)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("kinds", help="list the stage kinds and their ports")
    p.add_argument("--json", action="store_true", help="print them as JSON (ports, params, per-request settings)")
    p.set_defaults(func=cmd_kinds)


def cmd_check(args: argparse.Namespace) -> int:
    from omnigraph.compiler import compile_path

    comp = compile_path(args.spec)
    out = console()
    if comp.loaded is None:
        out.print(f"[green]ok[/] {args.spec}: IR verifies")
        return 0
    spec = comp.loaded.spec
    n_stages = len(spec.stages) + sum(len(l.stages) for l in spec.loops.values())
    out.print(
        f"[green]ok[/] {args.spec}: pipeline [bold]{spec.pipeline}[/], {len(spec.inputs)} input(s), "
        f"{n_stages} stage(s), {len(spec.loops)} loop(s), {len(spec.outputs)} output(s)"
    )
    from omnigraph.runtime.run_once import random_weight_notes

    stages = [*spec.stages.items(), *(item for loop in spec.loops.values() for item in loop.stages.items())]
    for note in random_weight_notes((name, stage.params) for name, stage in stages):
        console(stderr=True).print(f"[yellow]warning:[/] {note}")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    if args.plan:
        from omnigraph.cli.plan import plan_placement_picture

        if not args.target or not args.output:
            raise OmnigraphError("viz --plan draws a plan: give --target T and -o OUT.svg (or .png, .pdf)")
        return plan_placement_picture(args.spec, args.target, args.output)
    from omnigraph.compiler import compile_path
    from omnigraph.viz import to_dot, to_mermaid

    comp = compile_path(args.spec)
    render = to_mermaid if args.format == "mermaid" else to_dot
    write(render(comp.module), args.output)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from omnigraph.spec import json_schema

    write(json.dumps(json_schema(), indent=2) + "\n", args.output)
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    from rich.table import Table

    from omnigraph.kinds import KINDS

    if args.json:
        doc = [{"kind": k.name, "summary": k.summary,
                "inputs": [{"name": p.name, "modalities": list(p.modalities), "optional": p.optional,
                            "variadic": p.variadic} for p in k.inputs],
                "outputs": [{"name": p.name, "modality": p.modality} for p in k.outputs],
                "outputs_from": k.outputs_from, "params": sorted(k.params.model_fields),
                "request_params": sorted(k.traits.request_params)} for k in KINDS.values()]
        write(json.dumps(doc, indent=2) + "\n", None)
        return 0
    table = Table(title="stage kinds")
    for col in ("kind", "inputs", "outputs", "what"):
        table.add_column(col)
    for kind in KINDS.values():
        ins = ", ".join(f"{p.name}{'?' if p.optional else ''}{'*' if p.variadic else ''}: "
                        f"{'|'.join(p.modalities)}" for p in kind.inputs) or "(declared)"
        outs = ", ".join(f"{p.name}: {p.modality}" for p in kind.outputs) or "(from params)"
        table.add_row(kind.name, ins, outs, kind.summary)
    console().print(table)
    return 0


