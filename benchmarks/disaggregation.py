"""Prefill/decode disaggregation and live migration: simulated where the split pays, measured
here that it changes no token.

Simulated (the planner's own judge, sim/split_goodput.py): Qwen2.5-Omni's thinker on 8 x H100
with the long mix (4k-token prompts, 512-token replies), for a range of TPOT targets: the
goodput (requests/s at 90% within TTFT and TPOT) of the stage whole and of each
prefill:decode split of its replicas, and what split-prefill-decode chose. Then the two
plans (compiled with and without the targets) replayed whole by `simulate_plan` at one load.

Measured on this machine (a tiny random Llama, one process): the split plan and a plan whose
instances are drained mid-generation give the same greedy tokens as the whole stage, and the
latency of requests in flight during a drain.

    python benchmarks/disaggregation.py

Writes benchmarks/results/disaggregation.json.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import omnigraph  # noqa: E402
from omnigraph.compiler import compile_path  # noqa: E402
from omnigraph.passes.planner.workload import parse_mix  # noqa: E402
from omnigraph.passes.sim.model import simulate_plan  # noqa: E402
from omnigraph.passes.sim.sim_types import parse_slo  # noqa: E402
from omnigraph.target import load_target  # noqa: E402

SPEC, TARGET, MIX = ROOT / "examples/qwen2_5_omni.yaml", "h100x8", "long"
TARGETS = ["ttft=4,tpot=0.05", "ttft=4,tpot=0.012", "ttft=4,tpot=0.009", "ttft=4,tpot=0.007", "ttft=1,tpot=0.007"]


def simulated() -> list[dict]:
    rows = []
    for text in TARGETS:
        started = time.perf_counter()
        comp = compile_path(SPEC, target=TARGET, plan_options={"plan-parallel": {"mix": MIX},
                                                                "split-prefill-decode": {"slo": text, "mix": MIX}})
        seconds = time.perf_counter() - started
        notes = {op.label: op.plan.split for op in comp.module.walk()
                 if getattr(op, "plan", None) is not None and op.plan.split and "one replica" not in op.plan.split}
        rows.append({"slo": text, "decision": notes, "planning_s": round(seconds, 2)})
        print(f"{text:<20} {next(iter(notes.values()), '-')}")
    return rows


def replayed(text: str, rate: float) -> dict:
    """The whole plan and the split plan, each replayed whole by the simulator at one load."""
    slo, target, mix = parse_slo(text), load_target(TARGET), parse_mix(MIX)
    out = {}
    for name, options in (("whole", {"plan-parallel": {"mix": MIX}}),
                          ("split", {"plan-parallel": {"mix": MIX}, "split-prefill-decode": {"slo": text, "mix": MIX}})):
        plan = omnigraph.compile_plan(SPEC, TARGET, plan_options=options)
        report = simulate_plan(plan, target, mix, rate=rate, requests=400, slo=slo)
        out[name] = {"goodput_req_s": round(report.goodput, 3), "attainment": round(report.attainment, 3),
                     "ttft_p99_s": round(report.ttft.p99, 4), "tpot_p99_s": round(report.tpot.p99, 5)}
    out["goodput_ratio"] = round(out["split"]["goodput_req_s"] / max(1e-9, out["whole"]["goodput_req_s"]), 3)
    print(f"replayed at {rate} req/s under {text}: {out}")
    return {"slo": text, "rate_req_s": rate, **out}


def measured() -> dict:
    from test_ar_llm import prompts, write_tiny

    path = write_tiny(Path(tempfile.mkdtemp()), "max_new_tokens: 48, stream_chunk: token")
    whole = omnigraph.compile_plan(path)
    split = omnigraph.compile_plan(path, None, plan_options={"split-prefill-decode": {"split": "llm=1:1"}})
    two = whole.model_copy(deep=True)
    two.nodes[0].instances = [two.nodes[0].instances[0]] * 2
    ps = prompts() * 4
    with omnigraph.load(whole) as pipe:
        base = [pipe.run({"prompt": p})["ids"].tolist() for p in ps]
    with omnigraph.load(split) as pipe:
        started = time.perf_counter()
        split_out = [h.result()["ids"].tolist() for h in [pipe.submit({"prompt": p}) for p in ps]]
        split_s = time.perf_counter() - started
    with omnigraph.load(two) as pipe:
        started = time.perf_counter()
        handles = [pipe.submit({"prompt": p}) for p in ps]
        for kind, _, _ in handles[0].events():
            if kind == "chunk":
                break
        moved = pipe.backend.drain("llm", 0)
        migrated = [h.result()["ids"].tolist() for h in handles]
        latencies = sorted(h.request.finished_at - h.request.submitted for h in handles)
        drain_s = time.perf_counter() - started
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    out = {"requests": len(ps), "split_tokens_identical": split_out == base, "split_wall_s": round(split_s, 3),
           "drained_requests_moved": moved, "migrated_tokens_identical": migrated == base,
           "latency_p99_during_drain_s": round(p99, 3), "drain_run_wall_s": round(drain_s, 3)}
    print(f"measured: {out}")
    return out


def main() -> None:
    result = {"machine": platform.processor() or platform.machine(), "spec": SPEC.name, "target": TARGET, "mix": MIX,
              "simulated": simulated(), "replayed": replayed("ttft=4,tpot=0.007", 3.0), "measured": measured()}
    out = ROOT / "benchmarks/results/disaggregation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
