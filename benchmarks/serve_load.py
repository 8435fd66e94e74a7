"""What HTTP costs: the `speak` pipeline served by `omnigraph serve` (in this process, on
loopback) against the same loaded pipeline called in process, side by side in one run.

  in-process  N streaming requests at once through pipe.astream (the API the server is built on)
  http        the same N through the server: streaming chat completions with audio out
              (`omnigraph bench`'s client), each timed from its send to its first audio delta

Rounds alternate the two so that machine noise hits both; medians of the rounds are kept.
Then 200 concurrent streaming HTTP clients: every request must complete, and the process's
resident memory before and after is recorded.

    python benchmarks/serve_load.py [--requests 32] [--rounds 3] [--clients 200]

Writes benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import omnigraph
from omnigraph.serve.bench import PROMPTS, BenchConfig, run_bench
from omnigraph.serve.server import ServeOptions, Serving

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def in_process(pipe: Any, n: int) -> dict[str, Any]:
    """n requests at once through astream: throughput and time to first audio."""
    started = time.perf_counter()

    async def one(prompt: str) -> float | None:
        t0 = time.perf_counter()
        first = None
        async for kind, name, _ in pipe.astream({"prompt": prompt}):
            if kind == "chunk" and name == "speech" and first is None:
                first = time.perf_counter() - t0
        return first

    firsts = await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in range(n)))
    wall = time.perf_counter() - started
    ttfa = [f for f in firsts if f is not None]
    return {"throughput_req_s": n / wall, "ttfa_p50_s": statistics.median(ttfa), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=200)
    args = ap.parse_args()
    serving = Serving(lambda: omnigraph.load(ROOT / "examples" / "speak.yaml"), ServeOptions(port=0))
    thread = serving.start_thread()
    pipe = serving.state.pipe
    try:
        asyncio.run(in_process(pipe, 4))  # warm-up, not timed
        asyncio.run(run_bench(BenchConfig(url=serving.url, n=4, audio=True)))
        rounds: dict[str, list[dict[str, Any]]] = {"in_process": [], "http": []}
        for _ in range(args.rounds):
            rounds["in_process"].append(asyncio.run(in_process(pipe, args.requests)))
            http = asyncio.run(run_bench(BenchConfig(url=serving.url, n=args.requests, audio=True)))
            assert http["completed"] == args.requests, http["errors"]
            rounds["http"].append({"throughput_req_s": http["throughput_req_s"], "ttfa_p50_s": http["ttfa_s"]["p50"],
                                   "wall_s": http["wall_s"]})
        med = {side: {k: round(statistics.median(r[k] for r in rs), 4) for k in ("throughput_req_s", "ttfa_p50_s")}
               for side, rs in rounds.items()}
        before = rss_mb()
        crowd = asyncio.run(run_bench(BenchConfig(url=serving.url, n=args.clients, audio=True)))
        after = rss_mb()
    finally:
        serving.stop()
        thread.join(timeout=120)
    result = {
        "pipeline": "speak (SmolLM2-135M GGUF -> Piper), planned for this machine",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "requests_per_round": args.requests, "rounds": args.rounds, "side_by_side": med,
        "http_throughput_cost_pct": round(100 * (1 - med["http"]["throughput_req_s"]
                                                 / med["in_process"]["throughput_req_s"]), 2),
        "http_ttfa_added_ms": round(1000 * (med["http"]["ttfa_p50_s"] - med["in_process"]["ttfa_p50_s"]), 1),
        "all_rounds": rounds,
        "concurrent_clients": {"clients": args.clients, "completed": crowd["completed"], "errors": crowd["errors"],
                               "throughput_req_s": crowd["throughput_req_s"], "ttfa_s": crowd["ttfa_s"],
                               "e2e_s": crowd["e2e_s"], "rss_mb_before": round(before, 1),
                               "rss_mb_after": round(after, 1),
                               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)},
    }
    out = ROOT / "benchmarks" / "results" / "serve_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "all_rounds"}, indent=2))


if __name__ == "__main__":
    main()
