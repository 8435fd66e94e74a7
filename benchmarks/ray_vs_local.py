"""RayBackend vs LocalBackend on this machine, side by side in one run:

  throughput  a burst of requests (all at t=0) through the real `speak` pipeline and through
              `moe_tiny`; the overhead ratio is Ray's throughput over Local's
  per hop     the latency one stage-to-stage channel adds: single requests through a chain
              of 1 and of 5 identity projectors; (latency(5) - latency(1)) / 4

Ray starts here with the machine's CPUs and one stand-in device resource; every stage is one
actor (num_cpus=0), so both backends share the same cores. Models are loaded and warmed
before timing. Run it where Ray may bind its ports; on a machine whose network it must not
touch, in a network namespace of its own:

    unshare -n sh -c 'ip link set lo up; exec python benchmarks/ray_vs_local.py'

Writes benchmarks/results/ray_vs_local.json and its section of results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import omnigraph
from omnigraph.api import compile_plan
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.runtime.values import Audio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "## Ray vs Local backend (this machine)"
RESOURCE = "omni_device"
PROMPTS = ["The capital of France is", "Name three primary colours.", "What is 12 times 12?",
           "Why is the sky blue?", "Write one sentence about autumn.", "What does a CPU do?",
           "Who wrote Hamlet?", "What do bees make?"]


def load(plan: RuntimePlan, backend: str) -> omnigraph.Pipeline:
    extra = {"device_resource": RESOURCE} if backend == "ray" else {}
    return omnigraph.load(plan, backend=backend, **extra)


def burst(pipe: omnigraph.Pipeline, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    start = time.monotonic()
    handles = [pipe.submit(i, timeout=1800) for i in inputs]
    outputs = [h.result(timeout=1800) for h in handles]
    makespan = time.monotonic() - start
    jct = [h.request.finished_at - h.request.submitted for h in handles]
    return {"throughput_req_s": round(len(inputs) / makespan, 3), "makespan_s": round(makespan, 3),
            "mean_jct_s": round(statistics.mean(jct), 4), "outputs": outputs}


def compare(plan: RuntimePlan, make_inputs: Callable[[], list[dict[str, Any]]], reps: int,
            key: str) -> dict[str, Any]:
    """Each backend in turn, warmed, the burst `reps` times (median throughput)."""
    runs: dict[str, Any] = {}
    for backend in ("local", "ray"):
        started = time.monotonic()
        with load(plan, backend) as pipe:
            load_s = time.monotonic() - started
            burst(pipe, make_inputs()[:2])  # warm-up, not timed
            measured = [burst(pipe, make_inputs()) for _ in range(reps)]
        best = sorted(measured, key=lambda r: r["throughput_req_s"])[len(measured) // 2]
        runs[backend] = {**{k: v for k, v in best.items() if k != "outputs"}, "load_s": round(load_s, 2),
                         "throughputs": [r["throughput_req_s"] for r in measured], key: [o[key] for o in best["outputs"]]}
    same = sum(a == b for a, b in zip(runs["local"][key], runs["ray"][key]))
    for run in runs.values():
        del run[key]
    return {"requests": len(make_inputs()), **runs, f"same_{key}": same,
            "ray_over_local_throughput": round(runs["ray"]["throughput_req_s"] / runs["local"]["throughput_req_s"], 3)}


def moe_inputs(n: int) -> Callable[[], list[dict[str, Any]]]:
    def make() -> list[dict[str, Any]]:
        rng = np.random.default_rng(0)
        return [{"prompt": f"question {i}",
                 "image": torch.from_numpy(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)),
                 "audio": Audio(rng.uniform(-0.3, 0.3, 16000).astype(np.float32), 16000)} for i in range(n)]
    return make


def chain_plan(hops: int, folder: Path) -> RuntimePlan:
    """x -> p1 -> ... -> p{hops} -> y, identity projectors on [16, 64] embeddings."""
    lines = ["pipeline: chain", "inputs: {x: embedding}", f"outputs: {{y: {{from: p{hops}.embeds, modality: embedding}}}}",
             "stages:"]
    for i in range(1, hops + 1):
        source = "x" if i == 1 else f"p{i - 1}.embeds"
        lines += [f"  p{i}:", "    kind: projector", '    model: "py:torch.nn:Identity"',
                  f"    inputs: [{source}]", "    params: {in_dim: 64, out_dim: 64}"]
    path = folder / f"chain{hops}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return compile_plan(path)


def hop_latency(samples: int) -> dict[str, Any]:
    x = torch.randn(16, 64)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plans = {h: chain_plan(h, Path(tmp)) for h in (1, 5)}
    for backend in ("local", "ray"):
        latency = {}
        for hops, plan in plans.items():
            with load(plan, backend) as pipe:
                for _ in range(5):
                    pipe.run({"x": x}, timeout=60)  # warm-up
                times = []
                for _ in range(samples):
                    start = time.perf_counter()
                    pipe.run({"x": x}, timeout=60)
                    times.append(time.perf_counter() - start)
            latency[hops] = statistics.median(times)
        out[backend] = {"latency_1_stage_ms": round(1e3 * latency[1], 3),
                        "latency_5_stages_ms": round(1e3 * latency[5], 3),
                        "per_hop_ms": round(1e3 * (latency[5] - latency[1]) / 4, 3)}
    out["ray_over_local_per_hop"] = round(out["ray"]["per_hop_ms"] / out["local"]["per_hop_ms"], 2)
    return out


def write_section(result: dict[str, Any]) -> None:
    """Replace this benchmark's section of results.md (or append it)."""
    lines = [SECTION, "",
             f"`ray_vs_local.py`, {result['machine']}; Ray {result['ray']} started here, every stage one "
             f"actor with num_cpus=0 (both backends share the same cores); median of {result['reps']} bursts; "
             f"load average {result['load_average']['start']} at the start, {result['load_average']['end']} at the end "
             f"(the machine is shared).", "",
             "| pipeline | burst | Local throughput | Ray throughput | Ray / Local | Local mean JCT | Ray mean JCT |",
             "|---|---|---|---|---|---|---|"]
    for name in ("speak", "moe_tiny"):
        r = result[name]
        lines.append(f"| {name} | {r['requests']} | {r['local']['throughput_req_s']:.2f}/s | "
                     f"{r['ray']['throughput_req_s']:.2f}/s | {r['ray_over_local_throughput']:.2f} | "
                     f"{r['local']['mean_jct_s']:.2f} s | {r['ray']['mean_jct_s']:.2f} s |")
    h = result["hop"]
    lines += ["", f"Per-hop latency of a channel (identity projectors, [16, 64] embeddings, median of "
                  f"{result['hop_samples']} single requests): Local {h['local']['per_hop_ms']:.2f} ms, "
                  f"Ray {h['ray']['per_hop_ms']:.2f} ms ({h['ray_over_local_per_hop']:.1f}x).", ""]
    path = RESULTS / "results.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Recorded benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start].rstrip("\n") + "\n\n" + "\n".join(lines) + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speak-requests", type=int, default=16)
    ap.add_argument("--moe-requests", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hop-samples", type=int, default=50)
    args = ap.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, resources={RESOURCE: 8}, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    speak = compile_plan(ROOT / "examples" / "speak.yaml")
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {cpus} CPUs, {torch.get_num_threads()} torch threads, CPU only",
        "ray": ray.__version__, "reps": args.reps, "hop_samples": args.hop_samples,
        "speak": compare(speak, lambda: [{"prompt": PROMPTS[i % len(PROMPTS)]}
                                         for i in range(args.speak_requests)], args.reps, "reply"),
        "moe_tiny": compare(compile_plan(ROOT / "examples" / "tiny" / "moe_tiny.yaml"),
                            moe_inputs(args.moe_requests), args.reps, "reply"),
        "hop": hop_latency(args.hop_samples),
    }
    ray.shutdown()
    # The machine may be shared: say how busy it was (1-minute load averages).
    result["load_average"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_vs_local.json").write_text(json.dumps(result, indent=2) + "\n")
    write_section(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
