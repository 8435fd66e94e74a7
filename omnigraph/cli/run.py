"""`omnigraph run`: a spec (compiled here) or a bundle (checked, then run as it is), one request."""
from __future__ import annotations

from typing import Any

from omnigraph.cli.options_file import option_defaults
from omnigraph.errors import OmnigraphError
from omnigraph.runtime.run_once import run_plan
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a pipeline (a spec, or a compiled bundle) here or on a Ray cluster")
    p.add_argument("spec", help="a spec (.yaml, .og, .mlir), or a bundle directory or .ogb file")
    p.add_argument("--input", "-i", action="append", metavar="NAME=VALUE",
                   help="an input; NAME=@FILE reads a file (repeat for each input)")
    p.add_argument("--output-dir", "-o", help="write each output here (WAV, PNG, TXT)")
    p.add_argument("--target", help="plan for this target (name or YAML file); default: local, this machine "
                                    "(its GPUs, else its CPU: dtype, cores, KV pool); `none`: run unplanned")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead")
    p.add_argument("--stats", action="store_true", help="print a per-stage timing table")
    p.add_argument("--timeout", type=float, help="fail the request after this many seconds")
    p.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT_S, metavar="S",
                   help=f"fail the requests of a stage step that runs longer (default {DEFAULT_STEP_TIMEOUT_S:g}; 0: no limit)")
    p.add_argument("--trace", metavar="OUT", help="write the stage steps of the run as a Chrome trace (.json: "
                   "Perfetto, chrome://tracing) or draw them (.svg, .png: needs the viz extra)")
    p.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE", dest="settings",
                   help="a stage param for this request (e.g. thinker.max_new_tokens=128, thinker.temperature=0.7)")
    p.add_argument("--config", metavar="FILE", help="options from a YAML file (keys as the long flags: target, "
                   "timeout, set: {thinker: {temperature: 0.7}}, ...); flags given here win")
    p.add_argument("--trust-code", action="store_true", help="let a bundle run the Python code it carries")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: one Ray actor per stage instance")
    p.add_argument("--address", help="with --backend ray: the cluster (auto, or HOST:PORT of `ray start --head`); "
                   "default: start a local one")
    p.add_argument("--device-resource", metavar="NAME",
                   help="with --backend ray: the Ray resource one plan device takes (default GPU or CPU)")
    p.set_defaults(func=_cmd, option_defaults=option_defaults(p))



def _cmd(args: Any) -> int:
    from omnigraph.cli.options_file import apply_options_file
    from omnigraph.runtime.request_settings import merge_settings, parse_assignments

    from_file = apply_options_file(args, args.config, args.option_defaults)
    settings = merge_settings(from_file.get("set"), parse_assignments(args.settings or []))
    return run_command(args.spec, (from_file.get("input") or []) + (args.input or []), target=args.target,
                       output_dir=args.output_dir, as_json=args.json, stats=args.stats, timeout=args.timeout,
                       trust_code=args.trust_code, backend=args.backend, address=args.address,
                       device_resource=args.device_resource, step_timeout=args.step_timeout or None,
                       settings=settings, trace=args.trace)


def run_command(spec: str, pairs: list[str], *, target: str | None, output_dir: str | None,
                as_json: bool, stats: bool, timeout: float | None, trust_code: bool = False,
                backend: str = "local", address: str | None = None, device_resource: str | None = None,
                step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S,
                settings: dict[str, dict[str, Any]] | None = None, trace: str | None = None) -> int:
    """Run one request through a spec (compiled here) or a bundle (checked, then run as it is),
    on this machine or (backend "ray") on a Ray cluster."""
    where = {"backend": backend, "address": address, "device_resource": device_resource,
             "step_timeout": step_timeout, "settings": settings, "trace": trace}
    from omnigraph.runtime.bundle import is_bundle, open_bundle

    if is_bundle(spec):  # no compiler from here on: a bundle runs with the runtime alone
        if target is not None:
            raise OmnigraphError("--target: a bundle is already compiled for its target",
                                 hint="recompile the spec: omnigraph compile SPEC --target T --emit bundle")
        with open_bundle(spec) as bundle:
            return run_plan(bundle.runnable_plan(trust_code), pairs, output_dir=output_dir, as_json=as_json,
                            stats=stats, timeout=timeout, **where)
    from omnigraph.api import compile_plan, plan_here

    if target is None:  # this machine, unless it cannot hold the plan (then unplanned, with a note)
        from omnigraph.cli.common import console

        plan = plan_here(spec, lambda note: console(stderr=True).print(f"[yellow]note:[/] {note}"))
    else:
        plan = compile_plan(spec, None if target == "none" else target)
    return run_plan(plan, pairs, output_dir=output_dir, as_json=as_json, stats=stats, timeout=timeout, **where)


