"""`omnigraph compile`: lower and run the passes, and emit a stage of the flow (IR, the
normalized spec, the runtime plan, a bundle, or the Triton kernels)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omnigraph.cli.common import console, working, write
from omnigraph.cli.plan import SLO_HELP, SPLIT_HELP, slo_arg
from omnigraph.errors import OmnigraphError


def register(sub: Any) -> None:
    p = sub.add_parser("compile", help="compile a spec and emit a stage of the flow")
    p.add_argument("spec")
    p.add_argument("--target", help="target name (see targets/) or YAML file")
    p.add_argument("--emit", choices=["spec", "ir", "plan", "bundle", "kernels"], default="ir",
                   help="bundle: a standalone directory (or -o FILE.ogb, one zip file) the runtime runs alone; "
                   "kernels: the generated Triton kernels of every fused stage")
    p.add_argument("--dump-kernels", metavar="DIR", help="write the generated kernels to DIR (one file per "
                   "stage entry, plus index.json)")
    p.add_argument("--kernels", action="store_true", help="with --emit bundle: fuse the stages and ship their "
                   "Triton kernels in the bundle (kernels/; they run only with `run --trust-code`)")
    p.add_argument("--mix", help="request mix the planner optimises for (with --target)")
    p.add_argument("--slo", type=slo_arg, help=SLO_HELP + " (with --target)")
    p.add_argument("--split", help=SPLIT_HELP + " (with --target)")
    p.add_argument("--mixes", help="with --target --emit plan: a plan family, one plan per request mix "
                   "(chat,image,long; or 'chat;chat:0.5,long:0.5'), each checked by the simulator; "
                   "serve it with --replan")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.add_argument("--force", action="store_true", help="let --emit bundle / --dump-kernels replace a bundle "
                   "or kernel dump omnigraph wrote before (never anything else)")
    p.add_argument("--pass-pipeline", help="comma-separated passes (default: verify,infer-types, then "
                   "estimate-cost,plan-parallel,split-prefill-decode,place-devices,plan-cores,plan-memory with --target)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after each pass to stderr")
    p.add_argument("--generic", action="store_true", help="print IR in MLIR's generic form")
    p.set_defaults(func=cmd_compile)



def cmd_compile(args: argparse.Namespace) -> int:
    from omnigraph.compiler import compile_path
    from omnigraph.dialect.textio import print_module

    from omnigraph.cli.plan import planning_options

    options = planning_options(args.mix, args.slo, split=args.split)
    if args.target:
        from omnigraph.target import load_target

        load_target(args.target)  # fails early, listing the known targets
    if args.kernels and args.emit != "bundle":
        raise OmnigraphError("--kernels ships fusion kernels in a bundle: use it with --emit bundle",
                             hint="to see or write kernels alone: --emit kernels, or --dump-kernels DIR")
    if args.emit == "kernels" or args.dump_kernels:
        from omnigraph.cli.kernels import kernels_command

        with working(f"capturing and fusing the stages of {args.spec} into Triton kernels …"):
            return kernels_command(args.spec, args.target, options, args.emit == "kernels", args.dump_kernels,
                                   args.output, force=args.force)
    if args.mixes and (args.emit != "plan" or not args.target):
        raise OmnigraphError("--mixes plans a family: use it with --target and --emit plan",
                             hint="then serve or run it with --replan")
    if args.emit == "plan":
        from omnigraph.api import compile_plan

        if args.mixes:
            from omnigraph.plan_family import compile_family, split_mixes

            with working(f"planning {args.spec} once per mix and simulating each plan …"):
                plan = compile_family(args.spec, args.target, split_mixes(args.mixes), options)
        else:
            plan = compile_plan(args.spec, args.target, plan_options=options)
        write(plan.to_json(), args.output)
        return 0
    if args.emit == "bundle":
        return _emit_bundle(args, options)
    if args.emit == "spec":
        from omnigraph.frontend.load import load_spec
        import yaml

        doc = load_spec(args.spec).spec.to_document()
        write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), args.output)
        return 0
    def dump(name: str, module: Any) -> None:
        sys.stderr.write(f"// -----// IR Dump After {name} //----- //\n")
        sys.stderr.write(print_module(module, generic=args.generic))

    hook = dump if args.print_ir_after_all else None
    comp = compile_path(args.spec, target=args.target, pass_pipeline=args.pass_pipeline, after_pass=hook,
                        plan_options=options)
    write(print_module(comp.module, generic=args.generic), args.output)
    return 0


def _emit_bundle(args: argparse.Namespace, options: dict | None) -> int:
    from omnigraph.codegen.bundle_writer import write_bundle

    if not args.output or args.output == "-":
        raise OmnigraphError("--emit bundle writes files: name them with -o DIR or -o FILE.ogb")
    from omnigraph.api import compile_spec_plan
    from omnigraph.codegen.kernel_module import kernel_files
    from omnigraph.output_paths import refuse_unowned
    from omnigraph.runtime.bundle_files import written_by_omnigraph

    refuse_unowned(Path(args.output), written_by_omnigraph, "bundle", args.force)  # before compiling
    with working(f"compiling {args.spec}" + (" and fusing its kernels" if args.kernels else "") + " …"):
        comp, plan = compile_spec_plan(args.spec, args.target, options, fused=args.kernels)
        kernels = kernel_files(comp)[0] if args.kernels else None
    with working(f"writing the bundle {args.output} (weights, exported stages) …"):
        written = write_bundle(plan, args.output, kernels=kernels, force=args.force)
    forms = ", ".join(f"{s.name}: {s.form}" for s in written.manifest.stages)
    console(stderr=True).print(f"[green]wrote[/] bundle {written.path} "
                                f"({written.manifest.total_size() / 1e6:.1f} MB; {forms})")
    return 0


