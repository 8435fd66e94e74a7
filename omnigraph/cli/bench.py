"""`omnigraph bench URL`: load a running `omnigraph serve` (or any OpenAI-compatible chat
server) and report throughput, TTFT, time per output token, time to first audio, real-time
factor and errors (omnigraph/serve/bench.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omnigraph.errors import OmnigraphError


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="load a serving endpoint over HTTP and report latency and throughput")
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--rate", type=float, default=float("inf"), help="requests per second, Poisson (default inf: all at once)")
    p.add_argument("-n", "--num-requests", type=int, default=100, dest="n")
    p.add_argument("--concurrency", type=int, help="requests in flight at most (default: no limit)")
    p.add_argument("--dataset", metavar="FILE", help="prompts, one per line (default: a built-in set)")
    p.add_argument("--max-tokens", type=int, help="max_tokens of each request")
    p.add_argument("--text-only", action="store_true", help="never ask for audio")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    import asyncio

    try:
        from omnigraph.serve.bench import BenchConfig, run_bench
    except ImportError as exc:
        raise OmnigraphError(f"bench needs the [serve] extra ({exc.name} is missing)",
                             hint="pip install 'omnigraph[serve]'") from None
    if args.n < 1 or (args.concurrency is not None and args.concurrency < 1) or args.rate <= 0:
        raise OmnigraphError("-n, --concurrency and --rate must be positive")
    cfg = BenchConfig(url=args.url.rstrip("/"), n=args.n, rate=args.rate, concurrency=args.concurrency,
                      max_tokens=args.max_tokens, api_key=args.api_key, seed=args.seed,
                      audio=False if args.text_only else None)
    if args.dataset:
        try:
            cfg.prompts = [ln.strip() for ln in Path(args.dataset).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            raise OmnigraphError(f"--dataset {args.dataset}: {exc.strerror}") from None
        if not cfg.prompts:
            raise OmnigraphError(f"--dataset {args.dataset}: no prompts in it")
    try:
        result = asyncio.run(run_bench(cfg))
    except Exception as exc:  # noqa: BLE001 - an unreachable server is the user's to fix
        raise OmnigraphError(f"cannot bench {args.url}: {type(exc).__name__}: {exc}") from None
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _print(result)
    return 0 if result["completed"] else 1


def _print(r: dict[str, Any]) -> None:
    from rich.table import Table

    from omnigraph.cli.common import console

    out = console()
    out.print(f"[bold]{r['model']}[/] at {r['url']}: {r['completed']}/{r['requests']} completed in {r['wall_s']} s "
              f"(rate {r['rate']}, concurrency {r['concurrency'] or 'unbounded'}, audio {r['audio']})")
    out.print(f"throughput {r['throughput_req_s']} req/s, {r['output_tokens_per_s']} output tokens/s, "
              f"{r['audio_seconds']} s of audio")
    table = Table()
    for col in ("metric", "mean", "p50", "p90", "p99"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, label in (("ttft_s", "time to first token (s)"), ("tpot_s", "time per output token (s)"),
                       ("ttfa_s", "time to first audio (s)"), ("e2e_s", "end to end (s)"), ("rtf", "real-time factor")):
        d = r[key]
        table.add_row(label, *("-" if d[q] is None else f"{d[q]:.4f}" for q in ("mean", "p50", "p90", "p99")))
    out.print(table)
    if r["errors"]:
        out.print(f"[red]errors:[/] {r['errors']}")
