"""How long planning takes: 8 devices (goal <= 1 s) and 1,024 devices (goal <= 10 s).

Times each pass of `omnigraph compile SPEC --target T` for the real-architecture examples:
estimate-cost (building each module on `meta` and counting it: done once per model, then
cached) and the planning proper (plan-parallel, place-devices, plan-memory). The first
compile of a model in a process pays the meta build; the figures below separate the two.

    python benchmarks/planning_time.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("qwen2_5_omni", "qwen3_omni_moe", "janus_image", "wan_video", "omni_moe", "bagel_route")
PLANNING = ("plan-parallel", "place-devices", "plan-memory")


def h100_cluster(nodes: int, tmp: Path) -> str:
    dev = {"type": "h100", "memory_gib": 80, "peak_tflops": 989, "mem_bandwidth_gb_s": 3350}
    doc = {"target": f"h100x{nodes * 8}", "inter_node_gb_s": 400,
           "nodes": [{"name": f"node{i}", "intra_node_gb_s": 450,
                      "devices": [{"name": f"gpu{j}", **dev} for j in range(8)]} for i in range(nodes)]}
    path = tmp / f"h100x{nodes * 8}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def timed_compile(spec: Path, target: str) -> dict[str, float]:
    from omnigraph.compiler import compile_path

    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    compile_path(spec, target=target, after_pass=lambda name, _m: marks.append((name, time.perf_counter())))
    out, prev = {}, start
    for name, t in marks:
        out[name] = t - prev
        prev = t
    out["planning_s"] = sum(out[p] for p in PLANNING)
    out["total_s"] = prev - start
    return out


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        targets = {"h100x8": "h100x8", "h100x1024": h100_cluster(128, Path(d))}
        for example in EXAMPLES:
            spec = ROOT / "examples" / f"{example}.yaml"
            cold = timed_compile(spec, "h100x8")  # first build of the models on meta
            for name, target in targets.items():
                warm = timed_compile(spec, target)
                row = {"example": example, "target": name, "devices": 8 if name == "h100x8" else 1024,
                       "planning_s": warm["planning_s"], "estimate_cost_warm_s": warm["estimate-cost"],
                       "estimate_cost_cold_s": cold["estimate-cost"], "compile_total_s": warm["total_s"]}
                rows.append(row)
                print(f"{example:16s} {name:10s} planning {row['planning_s']:.3f} s  (profiling: "
                      f"{row['estimate_cost_cold_s']:.2f} s cold, {row['estimate_cost_warm_s']:.3f} s cached)",
                      flush=True)
    summary = {
        "max_planning_s_8": max(r["planning_s"] for r in rows if r["devices"] == 8),
        "max_planning_s_1024": max(r["planning_s"] for r in rows if r["devices"] == 1024),
        "max_profiling_cold_s": max(r["estimate_cost_cold_s"] for r in rows),
        "goal_8_s": 1.0, "goal_1024_s": 10.0,
    }
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "results" / "planning_time.json"
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
