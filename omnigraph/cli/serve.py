"""`omnigraph serve`: load a pipeline once and serve it over HTTP (OpenAI-compatible routes,
the general run route, health and metrics) until SIGINT/SIGTERM. Needs the `[serve]` extra."""
from __future__ import annotations

import os
from typing import Any

from omnigraph.cli.options_file import option_defaults
from omnigraph.errors import OmnigraphError

API_KEY_ENV = "OMNIGRAPH_API_KEY"


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a pipeline over HTTP (OpenAI-compatible), until Ctrl-C")
    p.add_argument("spec", help="a spec (.yaml, .og, .mlir), or a bundle directory or .ogb file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="with --backend ray: the cluster (auto, or HOST:PORT); default: start one")
    p.add_argument("--target", help="plan for this target (default: local, this machine; `none`: unplanned)")
    p.add_argument("--api-key", help=f"require `Authorization: Bearer KEY` (also read from ${API_KEY_ENV})")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests in flight at most; more get 429 with Retry-After (default 256)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="a request's deadline in seconds (504 after it; default 600)")
    p.add_argument("--grace", type=float, default=30.0, metavar="S",
                   help="on SIGINT/SIGTERM, how long requests in flight may finish (default 30)")
    p.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB", help="largest request body (default 32)")
    p.add_argument("--trust-code", action="store_true", help="let a bundle run the Python code it carries")
    p.add_argument("--mixes", help="plan one variant per request mix (chat,image,long; or 'chat;chat:0.5,long:0.5')")
    p.add_argument("--replan", nargs="?", const="", metavar="POLICY",
                   help="switch between the --mixes plans as the observed load shifts (window=5,hold=3,margin=0.2)")
    p.add_argument("--config", metavar="FILE", help="options from a YAML file (keys as the long flags); flags win")
    p.set_defaults(func=_cmd, option_defaults=option_defaults(p))


def _cmd(args: Any) -> int:
    from omnigraph.cli.options_file import apply_options_file

    apply_options_file(args, args.config, args.option_defaults)
    try:
        from omnigraph.serve.server import ServeOptions, Serving
        from omnigraph.serve.wire import Limits
    except ImportError as exc:
        raise OmnigraphError(f"serving needs the [serve] extra ({exc.name} is missing)",
                             hint="pip install 'omnigraph[serve]'") from None
    from omnigraph.runtime.bundle import is_bundle

    if args.max_queue < 1:
        raise OmnigraphError("--max-queue must be at least 1")
    bundle = is_bundle(args.spec)
    if bundle and args.target is not None:
        raise OmnigraphError("--target: a bundle is already compiled for its target")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    target = None if bundle or args.target == "none" else (args.target or "local")

    def load() -> Any:
        import omnigraph
        from omnigraph.api import plan_here

        spec: Any = args.spec
        if target == "local" and args.target is None and not args.mixes:  # this machine, else unplanned
            spec = plan_here(args.spec, lambda note: _say(f"[yellow]note:[/] {note}"))
        return omnigraph.load(spec, target=target, trust_code=args.trust_code, backend=args.backend,
                              address=args.address, max_inflight=args.max_queue, mixes=args.mixes,
                              replan=args.replan)

    limits = Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)), timeout_s=args.timeout or None)
    options = ServeOptions(host=args.host, port=args.port, api_key=api_key, grace_s=args.grace, limits=limits,
                           announce=_announce)
    serving = Serving(load, options)
    _say(f"[dim]listening on {serving.url}; loading {args.spec} …[/]")
    if args.host not in ("127.0.0.1", "::1", "localhost") and api_key is None:
        _say("[yellow]warning:[/] listening beyond this machine without --api-key: anyone who can reach "
             "the port can use the pipeline")
    try:
        serving.run()
    except OmnigraphError:
        raise
    except Exception as exc:  # the load failed: say why, as `run` would
        raise OmnigraphError(f"cannot serve {args.spec}: {exc}") from None
    _say("[dim]stopped[/]")
    return 0


def _announce(url: str, server: Any) -> None:
    from rich.table import Table

    from omnigraph.cli.common import console

    table = Table(title=f"serving '{server.surface.name}' at {url}", title_justify="left")
    for col in ("method", "path", "serves"):
        table.add_column(col)
    for method, path, what in server.surface.endpoints():
        table.add_row(method, path, what)
    console(stderr=True).print(table)
    _say("[dim]Ctrl-C (SIGINT) or SIGTERM stops taking requests, lets those in flight finish, and exits[/]")


def _say(text: str) -> None:
    from omnigraph.cli.common import console

    console(stderr=True).print(text)
