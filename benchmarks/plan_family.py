"""A plan family under a shifting request mix: static plans vs the family switching as the
replanner would vs an oracle re-planned at every shift, judged by the simulator.

Qwen2.5-Omni on 8 x H100. The traffic shifts chat -> image-heavy -> long replies, each phase
at 85% of what the plan made for that mix sustains. Static: every plan of the family, and the
plan for the whole run's mix, each kept throughout (the best of them is the baseline).
Family: for each phase, the variant the simulator found serving that mix best
(PlanVariant.serves), switched to after the replanner's detection delay (window x hold =
5 s x 3) plus a model load time for new replicas. Oracle: the same variants from each phase's
first request, nothing to load. Goodput: requests/s whose
time to first token is within the target.

Measured on this machine: a plan switch under a steady stream of requests (a tiny LLM, one
instance -> two -> one), requests lost and failed, and the p99 latency around the switch.

    python benchmarks/plan_family.py

Writes benchmarks/results/plan_family.json.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import omnigraph  # noqa: E402
from omnigraph.passes.sim.sim_types import Slo  # noqa: E402
from omnigraph.plan_family import compile_family, simulate_shift  # noqa: E402

SPEC, TARGET = ROOT / "examples/qwen2_5_omni.yaml", "h100x8"
MIXES = ["chat", "image", "long"]
PHASE_S, LOAD = 60.0, 0.85
DETECT_S, MODEL_LOAD_S = 15.0, 10.0
SLO = Slo(ttft_s=2.0)


def simulated() -> dict:
    family = compile_family(SPEC, TARGET, MIXES)
    phases = [(v.mix, LOAD * v.rate, PHASE_S) for v in family.family]
    whole = compile_family(SPEC, TARGET, ["chat:1,image:1,long:1", "chat"], check=False)
    statics = {}
    for v in family.family + whole.family[:1]:
        plan = family.model_copy(deep=True)
        plan.family = [v]
        for node in plan.stages():
            node.instances = v.instances[node.name]
        statics[f"static {v.name}"] = simulate_shift(plan, TARGET, phases, follow=False, slo=SLO)
    runs = {**statics,
            "family": simulate_shift(family, TARGET, phases, follow=True, delay_s=DETECT_S, load_s=MODEL_LOAD_S, slo=SLO),
            "oracle": simulate_shift(family, TARGET, phases, follow=True, slo=SLO)}
    rows = {name: {"goodput_req_s": round(r.goodput, 3), "attainment": round(r.attainment, 4),
                   "ttft_p99_s": round(r.ttft.p99, 3), "requests": r.requests} for name, r in runs.items()}
    best = max(statics, key=lambda n: statics[n].goodput)
    out = {"phases": [{"mix": m, "rate_req_s": round(r, 2), "seconds": s} for m, r, s in phases],
           "variants": [{"name": v.name, "planned_rate": round(v.rate, 3), "serves": v.serves} for v in family.family],
           "served_by": {m: family.best_for(m).name for m in MIXES},
           "runs": rows, "best_static": best,
           "family_vs_best_static": round(runs["family"].goodput / statics[best].goodput, 3),
           "family_vs_oracle": round(runs["family"].goodput / runs["oracle"].goodput, 3)}
    for name, row in rows.items():
        print(f"{name:<34} {row}")
    print(f"family / best static ({best}): {out['family_vs_best_static']}x; family / oracle: {out['family_vs_oracle']}x")
    return out


def measured() -> dict:
    from omnigraph.runtime.replan import switch
    from test_ar_llm import prompts
    from test_plan_family import tiny_family

    plan = tiny_family(Path(tempfile.mkdtemp()), tokens=32)
    ps = prompts()
    with omnigraph.load(plan) as pipe:
        expected = [pipe.run({"prompt": p})["ids"].tolist() for p in ps]
        sent: list = []
        stop = threading.Event()

        def stream() -> None:
            i = 0
            while not stop.is_set():
                sent.append((i % len(ps), pipe.submit({"prompt": ps[i % len(ps)]})))
                i += 1
                time.sleep(0.01)

        feeder = threading.Thread(target=stream)
        feeder.start()
        time.sleep(1.0)
        windows = []
        for name in ("two", "one"):
            t0 = time.monotonic()
            moved = switch(pipe.backend, plan.variant(name))
            windows.append((t0, time.monotonic(), name, moved))
            time.sleep(1.0)
        stop.set()
        feeder.join()
        failed = identical = 0
        during = []
        for i, h in sent:
            try:
                identical += h.result(60)["ids"].tolist() == expected[i]
            except Exception:
                failed += 1
            r = h.request
            if any(r.submitted <= b and (r.finished_at or b) >= a for a, b, _, _ in windows):
                during.append(r.finished_at - r.submitted)
    during.sort()
    out = {"requests": len(sent), "failed": failed, "lost": len(sent) - failed - identical if failed else 0,
           "tokens_identical": identical, "switches": [{"to": n, "seconds": round(b - a, 3), "migrated": m}
                                                       for a, b, n, m in windows],
           "latency_p99_around_switch_s": round(during[min(len(during) - 1, round(0.99 * (len(during) - 1)))], 3)
           if during else None}
    print(f"measured: {out}")
    return out


def main() -> None:
    result = {"machine": platform.processor() or platform.machine(), "spec": SPEC.name, "target": TARGET,
              "slo": str(SLO), "detect_s": DETECT_S, "model_load_s": MODEL_LOAD_S,
              "simulated": simulated(), "measured": measured()}
    out = ROOT / "benchmarks/results/plan_family.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
