"""How `omnigraph check` scales: 1k / 4k / 20k-stage chains in the DSL and in YAML.

Each spec is checked in a fresh process (`omnigraph check FILE`, what a user runs), three
times, and the median wall time is kept; per-stage time shows whether it grows linearly.
Goal (issue 12): a 20k-stage spec checks in a few seconds (before: 4k-stage DSL 83 s,
20k-stage YAML 56 s).

    python benchmarks/check_scale.py
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_frontend_scaling import chain_dsl, chain_yaml  # noqa: E402  (the specs the scaling test uses)

SIZES = (1_000, 4_000, 20_000)


def check_seconds(path: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "omnigraph", "check", str(path)], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return statistics.median(times)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "one.og")
        empty.write_text(chain_dsl(1))
        startup = check_seconds(empty)
        for fmt, make, suffix in (("dsl", chain_dsl, ".og"), ("yaml", chain_yaml, ".yaml")):
            for n in SIZES:
                path = Path(tmp, f"chain{n}{suffix}")
                path.write_text(make(n))
                seconds = check_seconds(path)
                rows.append({"format": fmt, "stages": n, "bytes": path.stat().st_size, "seconds": round(seconds, 2),
                             "ms_per_stage_after_startup": round((seconds - startup) / n * 1000, 3)})
                print(f"{fmt:4s} {n:6d} stages {path.stat().st_size / 1e6:5.1f} MB: {seconds:6.2f} s "
                      f"({rows[-1]['ms_per_stage_after_startup']} ms/stage after {startup:.2f} s startup)")
    out = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
           "startup_seconds": round(startup, 2), "rows": rows}
    path = ROOT / "benchmarks" / "results" / "check_scale.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
