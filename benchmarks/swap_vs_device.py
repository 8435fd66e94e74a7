"""Swapping weights from host memory vs a second device, simulated: a Wan2.2-A14B-style
two-expert video pipeline (examples/wan22_two_experts.yaml: UMT5 -> high-noise DiT -> low-noise
DiT -> VAE) on one H100, where its stages only fit by taking turns (the planner chooses
`swap`), against two H100s, where the planner keeps every weight resident.

For the video as shipped (20 steps per expert), and for shorter jobs (fewer steps, a smaller
clip) where the same weight loads weigh more: the saturated throughput per device and the
latency of a lone request, each plan replayed by the simulator (every load of a swapped stage
costed at the host link). Swapping wins where the loads are small next to the compute (one
device serves a lone request about as fast, at half the devices); a second device wins where
they are not, or where the load needs two devices' compute.

    python benchmarks/swap_vs_device.py

Writes benchmarks/results/swap_vs_device.json.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from omnigraph.api import compile_plan
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.passes.sim.model import simulate_plan
from omnigraph.target import load_target

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples/wan22_two_experts.yaml"
JOBS = {"video 480x832, 20+20 steps": {}, "video 480x832, 4+4 steps": {"steps": 4},
        "clip 240x416, 2+2 steps": {"steps": 2, "height": 240, "width": 416}}


def two_h100(folder: Path) -> str:
    doc = yaml.safe_load((ROOT / "targets/h100x1.yaml").read_text())
    doc["target"] = "h100x2"
    node = doc["nodes"][0]
    node["devices"].append({**node["devices"][0], "name": "gpu1"})
    node["nvlink_domains"] = [["gpu0", "gpu1"]]
    path = folder / "h100x2.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def variant(folder: Path, name: str, change: dict) -> Path:
    doc = yaml.safe_load(SPEC.read_text())
    for stage in ("dit_high", "dit_low"):
        doc["stages"][stage]["params"].update(change)
    path = folder / f"{name.split(',')[0].replace(' ', '_')}_{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def judge(spec: Path, target: str) -> dict:
    plan = compile_plan(spec, target)
    tgt, mix = load_target(target), parse_mix(None)
    devices = len({d for n in plan.stages() for i in n.instances for d in i.devices})
    alone = simulate_plan(plan, tgt, mix, rate=None, requests=1)
    full = simulate_plan(plan, tgt, mix, rate=None, requests=24)  # a burst: what it sustains
    swaps = sum(1 for n in plan.stages() if n.resources.swap)
    return {"devices": devices, "swapped_stages": swaps, "lone_request_s": round(alone.jct.mean, 2),
            "throughput_req_per_hour": round(full.throughput * 3600, 2),
            "per_device_req_per_hour": round(full.throughput * 3600 / devices, 2)}


LOADS_PER_HOUR = (4, 8, 11, 15, 19)


def under_load(spec: Path, target: str) -> dict:
    """p90 time to a video at Poisson loads around one device's capacity."""
    plan = compile_plan(spec, target)
    out = {}
    for per_hour in LOADS_PER_HOUR:
        rep = simulate_plan(plan, load_target(target), parse_mix(None), rate=per_hour / 3600, requests=40, seed=1)
        out[str(per_hour)] = round(rep.jct.p90, 1)
    return out


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    two = two_h100(folder)
    loads = {"one_h100_swap": under_load(SPEC, "h100x1"), "two_h100_resident": under_load(SPEC, two)}
    print("p90 seconds per video at req/hour:", json.dumps(loads))
    rows = []
    for name, change in JOBS.items():
        spec = variant(folder, name, change)
        one, pair = judge(spec, "h100x1"), judge(spec, two)
        row = {"job": name, "one_h100_swap": one, "two_h100_resident": pair,
               "lone_latency_ratio": round(one["lone_request_s"] / pair["lone_request_s"], 3),
               "per_device_ratio": round(one["per_device_req_per_hour"] / pair["per_device_req_per_hour"], 3)}
        rows.append(row)
        print(json.dumps(row))
    out = ROOT / "benchmarks/results/swap_vs_device.json"
    out.write_text(json.dumps({"spec": SPEC.name, "host_link_gb_s": 55.0, "runs": rows,
                               "p90_jct_s_by_load_per_hour": loads}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
