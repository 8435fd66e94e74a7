"""`omnigraph` command line: check, compile, run, inspect, viz, schema, kinds.

A user's mistake prints `file:line:col: error: …` with the line and a caret, and
exits 2; never a traceback (set OMNIGRAPH_DEBUG=1 to see one for internal errors).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from omnigraph import __version__
from omnigraph.errors import OmnigraphError
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _write(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OmnigraphError(f"cannot write {output}: {exc.strerror}") from None
    _console(stderr=True).print(f"[green]wrote[/] {output}")


def cmd_check(args: argparse.Namespace) -> int:
    from omnigraph.compiler import compile_path

    comp = compile_path(args.spec)
    console = _console()
    if comp.loaded is None:
        console.print(f"[green]ok[/] {args.spec}: IR verifies")
        return 0
    spec = comp.loaded.spec
    n_stages = len(spec.stages) + sum(len(l.stages) for l in spec.loops.values())
    console.print(
        f"[green]ok[/] {args.spec}: pipeline [bold]{spec.pipeline}[/], {len(spec.inputs)} input(s), "
        f"{n_stages} stage(s), {len(spec.loops)} loop(s), {len(spec.outputs)} output(s)"
    )
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from omnigraph.compiler import compile_path
    from omnigraph.dialect.textio import print_module

    from omnigraph.plan_command import planning_options

    options = planning_options(args.mix, args.slo)
    if args.target:
        from omnigraph.target import load_target

        load_target(args.target)  # fails early, listing the known targets
    if args.kernels and args.emit != "bundle":
        raise OmnigraphError("--kernels ships fusion kernels in a bundle: use it with --emit bundle",
                             hint="to see or write kernels alone: --emit kernels, or --dump-kernels DIR")
    if args.emit == "kernels" or args.dump_kernels:
        from omnigraph.kernels_command import kernels_command

        return kernels_command(args.spec, args.target, options, args.emit == "kernels", args.dump_kernels,
                               args.output, force=args.force)
    if args.emit == "plan":
        from omnigraph.api import compile_plan

        plan = compile_plan(args.spec, args.target, plan_options=options)
        _write(plan.to_json(), args.output)
        return 0
    if args.emit == "bundle":
        return _emit_bundle(args, options)
    if args.emit == "spec":
        from omnigraph.frontend.load import load_spec
        import yaml

        doc = load_spec(args.spec).spec.to_document()
        _write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), args.output)
        return 0
    hook = None
    if args.print_ir_after_all:
        def hook(name: str, module) -> None:  # noqa: ANN001 - xDSL ModuleOp
            sys.stderr.write(f"// -----// IR Dump After {name} //----- //\n")
            sys.stderr.write(print_module(module, generic=args.generic))
    comp = compile_path(args.spec, target=args.target, pass_pipeline=args.pass_pipeline, after_pass=hook,
                        plan_options=options)
    _write(print_module(comp.module, generic=args.generic), args.output)
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
    comp, plan = compile_spec_plan(args.spec, args.target, options, fused=args.kernels)
    kernels = kernel_files(comp)[0] if args.kernels else None
    written = write_bundle(plan, args.output, kernels=kernels, force=args.force)
    forms = ", ".join(f"{s.name}: {s.form}" for s in written.manifest.stages)
    _console(stderr=True).print(f"[green]wrote[/] bundle {written.path} "
                                f"({written.manifest.total_size() / 1e6:.1f} MB; {forms})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from omnigraph.inspect_command import inspect_command

    return inspect_command(args.bundle, as_json=args.json)


def cmd_plan(args: argparse.Namespace) -> int:
    from omnigraph.plan_command import plan_command

    return plan_command(args.spec, args.target, mix=args.mix, slo=args.slo, as_json=args.json)


def cmd_run(args: argparse.Namespace) -> int:
    from omnigraph.run_command import run_command

    return run_command(args.spec, args.input or [], target=args.target, output_dir=args.output_dir,
                       as_json=args.json, stats=args.stats, timeout=args.timeout, trust_code=args.trust_code,
                       backend=args.backend, address=args.address, device_resource=args.device_resource,
                       step_timeout=args.step_timeout or None)


def cmd_viz(args: argparse.Namespace) -> int:
    from omnigraph.compiler import compile_path
    from omnigraph.viz import to_dot, to_mermaid

    comp = compile_path(args.spec)
    render = to_mermaid if args.format == "mermaid" else to_dot
    _write(render(comp.module), args.output)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from omnigraph.spec import json_schema

    _write(json.dumps(json_schema(), indent=2) + "\n", args.output)
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    from rich.table import Table

    from omnigraph.kinds import KINDS

    table = Table(title="stage kinds")
    for col in ("kind", "inputs", "outputs", "what"):
        table.add_column(col)
    for kind in KINDS.values():
        ins = ", ".join(f"{p.name}{'?' if p.optional else ''}{'*' if p.variadic else ''}: "
                        f"{'|'.join(p.modalities)}" for p in kind.inputs) or "(declared)"
        outs = ", ".join(f"{p.name}: {p.modality}" for p in kind.outputs) or "(from params)"
        table.add_row(kind.name, ins, outs, kind.summary)
    _console().print(table)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from omnigraph.runtime import cache

    if args.action == "clear":
        freed = cache.clear()
        _console(stderr=True).print(f"cleared {cache.cache_root()} ({freed / 1e6:.1f} MB freed)")
        return 0
    found = cache.entries()
    if args.json:
        sys.stdout.write(json.dumps({"root": str(cache.cache_root()), "entries": [
            {"section": e.section, "path": str(e.path), "bytes": e.bytes, "source": e.source} for e in found]},
            indent=2) + "\n")
        return 0
    from rich.table import Table

    table = Table(title=f"omnigraph cache: {cache.cache_root()}")
    for col in ("section", "entry", "size", "made from"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for e in found:
        table.add_row(e.section, e.path.name[:16], f"{e.bytes / 1e6:.1f} MB", e.source or "-")
    console = _console()
    console.print(table)
    console.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {sum(e.bytes for e in found) / 1e6:.1f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnigraph", description="Declarative graph compiler for any-to-any multimodal pipelines.")
    parser.add_argument("--version", action="version", version=f"omnigraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate a spec (.yaml, .og) or IR (.mlir)")
    p.add_argument("spec")
    p.set_defaults(func=cmd_check)

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
    p.add_argument("--slo", type=float, help="end-to-end latency target in seconds (with --target)")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.add_argument("--force", action="store_true", help="let --emit bundle / --dump-kernels replace a bundle "
                   "or kernel dump omnigraph wrote before (never anything else)")
    p.add_argument("--pass-pipeline", help="comma-separated passes (default: verify,infer-types, then "
                   "estimate-cost,plan-parallel,place-devices,plan-memory with --target)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after each pass to stderr")
    p.add_argument("--generic", action="store_true", help="print IR in MLIR's generic form")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("plan", help="plan parallelism, placement and memory for a target")
    p.add_argument("spec")
    p.add_argument("--target", required=True, help="target name (see targets/) or YAML file")
    p.add_argument("--mix", help="request mix: presets (chat:0.7,long:0.3) or a YAML file")
    p.add_argument("--slo", type=float, help="end-to-end latency target in seconds")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a pipeline (a spec, or a compiled bundle) here or on a Ray cluster")
    p.add_argument("spec", help="a spec (.yaml, .og, .mlir), or a bundle directory or .ogb file")
    p.add_argument("--input", "-i", action="append", metavar="NAME=VALUE",
                   help="an input; NAME=@FILE reads a file (repeat for each input)")
    p.add_argument("--output-dir", "-o", help="write each output here (WAV, PNG, TXT)")
    p.add_argument("--target", help="target name or YAML file")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead")
    p.add_argument("--stats", action="store_true", help="print a per-stage timing table")
    p.add_argument("--timeout", type=float, help="fail the request after this many seconds")
    p.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT_S, metavar="S",
                   help=f"fail the requests of a stage step that runs longer (default {DEFAULT_STEP_TIMEOUT_S:g}; 0: no limit)")
    p.add_argument("--trust-code", action="store_true", help="let a bundle run the Python code it carries")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: one Ray actor per stage instance")
    p.add_argument("--address", help="with --backend ray: the cluster (auto, or HOST:PORT of `ray start --head`); "
                   "default: start a local one")
    p.add_argument("--device-resource", metavar="NAME",
                   help="with --backend ray: the Ray resource one plan device takes (default GPU or CPU)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="show a bundle: manifest, stages, plan, sizes (and check its files)")
    p.add_argument("bundle", help="a bundle directory or .ogb file")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_inspect)

    from omnigraph.simulate_command import add_simulate_parser

    add_simulate_parser(sub)

    p = sub.add_parser("viz", help="draw the pipeline graph (Mermaid or Graphviz DOT)")
    p.add_argument("spec")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("schema", help="print the JSON Schema of YAML specs (for editors)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("kinds", help="list the stage kinds and their ports")
    p.set_defaults(func=cmd_kinds)

    p = sub.add_parser("cache", help="list or clear the on-disk cache (dequantized GGUF models, profiles)")
    p.add_argument("action", choices=["ls", "clear"])
    p.add_argument("--json", action="store_true", help="ls: print JSON")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `omnigraph plan --json | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
        return 0
    except OmnigraphError as exc:
        _console(stderr=True).print(exc.render(), markup=False, emoji=False)  # shown verbatim
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in omnigraph, not the user's input
        if os.environ.get("OMNIGRAPH_DEBUG"):
            raise
        _console(stderr=True).print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in omnigraph; rerun with OMNIGRAPH_DEBUG=1 for a traceback", markup=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
