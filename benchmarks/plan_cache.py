"""`omnigraph plan` the first time (models counted on `meta`: transformers imported, each
class built) and again (the counts read from omnigraph's cache), each in a fresh process as
a user runs it, side by side in one run.

    python benchmarks/plan_cache.py [--repeats 3]

Writes benchmarks/results/plan_cache.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("examples/qwen3_omni_moe.yaml", "h100x8"), ("examples/vision_chat.yaml", "h100x8"),
         ("examples/tiny/moe_tiny.yaml", "cpu-local")]
PROBE = ("import sys, runpy; sys.argv = ['omnigraph'] + sys.argv[1:]; from omnigraph.cli import main; code = main(); "
         "print('IMPORTED=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr); "
         "sys.exit(code)")


def plan_once(spec: str, target: str, cache: str) -> tuple[float, list[str]]:
    """Seconds for one `omnigraph plan` in a fresh process, and which heavy libraries it imported."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "plan", spec, "--target", target, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMNIGRAPH_CACHE": cache})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED=")][-1]
    return seconds, [m for m in line.removeprefix("IMPORTED=").split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for spec, target in CASES:
        cold, warm, libs_cold, libs_warm = [], [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                seconds, libs_cold = plan_once(spec, target, cache)
                cold.append(seconds)
                seconds, libs_warm = plan_once(spec, target, cache)
                warm.append(seconds)
        rows.append({"spec": spec, "target": target, "first_s": round(statistics.median(cold), 3),
                     "again_s": round(statistics.median(warm), 3),
                     "speedup": round(statistics.median(cold) / statistics.median(warm), 2),
                     "imported_first": libs_cold, "imported_again": libs_warm})
        print(rows[-1], flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "repeats": args.repeats,
              "python": platform.python_version(), "rows": rows}
    (ROOT / "benchmarks" / "results" / "plan_cache.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
