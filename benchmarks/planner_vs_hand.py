"""Planner vs hand placement in the style of vLLM-Omni's shipped stage configs.

For real architectures (Qwen2.5-Omni, Qwen3-Omni-30B-A3B, a Janus AR + image decoder, a Wan
2.1 video DiT) on h100x8, h200x8 and h100-2x8, three plans are replayed by the simulator:

- **planner**: `omnigraph plan` (the MILP over the cost rules' configs);
- **hand (shipped)**: one device set per stage as vLLM-Omni's stage configs give it, TP only
  where they use it, their max_batch_size; the stages a config folds into another (encoders
  into the thinker, projections into the talker) sit on that stage's devices. One copy of the
  pipeline needs 1 or 2 GPUs, so the hand plan runs as many copies as the target holds (what
  a user does to fill a node);
- **hand (planner's batches)**: the same placement with the planner's batch per stage, which
  isolates what placement and parallelism alone are worth.

The judge is the simulator: Poisson arrivals at 1.5x the planner's predicted capacity (above
what any plan serves), long enough for ~10 end-to-end latencies and at least LEAST requests (a
Wan DiT ends a batch of videos at once: with a few hundred requests, where the judged window's
edges cut those batches moves the count by a percent or two), and the requests completed per
second after the first third of the run are each plan's sustained capacity (goodput with no
latency target). Every plan sees the same seeded arrivals.

Each plan is also scored by the planner's cost model (passes/sim/capacity.py `modelled_capacity`:
the planner's rates for the configs it runs, each device's time split among the stages on it
as the simulator splits it), and the planner's own prediction (its throughput over the headroom
it plans at) is set beside what the simulator serves on its plan (`sim_vs_predicted`; issue 20
asks for 10%).

    python benchmarks/planner_vs_hand.py [--requests N]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan_eval import judge, requests_for  # noqa: E402

from omnigraph.api import compile_plan  # noqa: E402
from omnigraph.cli.plan import plan_spec  # noqa: E402
from omnigraph.passes.plan_parallel import PlanParallelPass  # noqa: E402
from omnigraph.passes.planner.workload import parse_mix  # noqa: E402
from omnigraph.passes.sim.capacity import modelled_capacity  # noqa: E402
from omnigraph.runtime.plan import Instance, RuntimePlan  # noqa: E402
from omnigraph.target import load_target  # noqa: E402

GOAL = 1.5
TARGETS = ("h100x8", "h200x8", "h100-2x8")
LEAST = 2000  # requests per simulation, at least
HEADROOM = PlanParallelPass().headroom


@dataclass(frozen=True)
class Hand:
    devices: tuple[int, ...]  # within one copy of the pipeline
    batch: int


# From vLLM-Omni's stage_configs: qwen2_5_omni.yaml (thinker "0", talker "1" batch 3,
# code2wav "0"), qwen3_omni_moe.yaml (thinker tp2 "0,1", talker "1", code2wav "0", batch 1),
# bagel.yaml (the AR stage "0", the image generator "1", batch 1); a diffusion pipeline
# (Wan) is one stage on one GPU.
HAND: dict[str, dict[str, Hand]] = {
    "qwen2_5_omni": {
        "audio_encoder": Hand((0,), 1), "vision_encoder": Hand((0,), 1), "thinker": Hand((0,), 1),
        "thinker_to_talker": Hand((1,), 3), "talker": Hand((1,), 3), "token2wav": Hand((0,), 1),
    },
    "qwen3_omni_moe": {
        "audio_encoder": Hand((0,), 1), "vision_encoder": Hand((0,), 1), "thinker": Hand((0, 1), 1),
        "hidden_projection": Hand((1,), 1), "talker": Hand((1,), 1), "code2wav": Hand((0,), 1),
    },
    "janus_image": {"janus": Hand((0,), 1), "vq_decoder": Hand((1,), 1)},
    "wan_video": {"text_encoder": Hand((0,), 1), "dit": Hand((0,), 1), "vae": Hand((0,), 1)},
}


def hand_plan(planned: RuntimePlan, example: str, devices: list[str], planner_batches: bool) -> RuntimePlan:
    hand = HAND[example]
    per_copy = 1 + max(i for h in hand.values() for i in h.devices)
    copies = len(devices) // per_copy
    plan = planned.model_copy(deep=True)
    for node in plan.stages():
        h = hand[node.name]
        node.instances = [Instance(devices=[devices[c * per_copy + i] for i in h.devices], tp=len(h.devices))
                          for c in range(copies)]
        if not planner_batches:
            node.batching.max_batch = h.batch
    return plan


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000, help="most requests per simulation")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "planner_vs_hand.json"))
    args = ap.parse_args()
    rows = []
    for example in HAND:
        for tname in TARGETS:
            target = load_target(tname)
            planned = compile_plan(ROOT / "examples" / f"{example}.yaml", tname)
            plans = {
                "planner": planned,
                "hand_shipped": hand_plan(planned, example, target.devices, planner_batches=False),
                "hand_planner_batches": hand_plan(planned, example, target.devices, planner_batches=True),
            }
            # Offer more than the planner's prediction: every plan runs saturated.
            report = plan_spec(str(ROOT / "examples" / f"{example}.yaml"), tname)
            predicted = report["throughput_rps"]
            latency = sum(r["latency_s"] * r["visits"] for r in report["stages"])
            n = requests_for(1.5 * predicted, latency, least=LEAST, most=args.requests)
            # The steady figure is over by the last arrival: the runs stop there (same figure).
            results = {name: judge(p, target, rate=1.5 * predicted, requests=n, steady_only=True)
                       for name, p in plans.items()}
            model = {name: modelled_capacity(p, target, parse_mix(None)) for name, p in plans.items()}
            sim = {name: v["steady_rps"] for name, v in results.items()}
            row = {
                "example": example, "target": tname, "predicted_rps": predicted,
                "predicted_capacity_rps": predicted / HEADROOM,
                "requests": n,
                **{f"{k}_rps": v for k, v in sim.items()},
                **{f"{k}_model_rps": v for k, v in model.items()},
                "sim_vs_predicted": sim["planner"] / (predicted / HEADROOM),
                "vs_hand_shipped": sim["planner"] / sim["hand_shipped"],
                "vs_hand_planner_batches": sim["planner"] / sim["hand_planner_batches"],
                "model_vs_hand_shipped": model["planner"] / model["hand_shipped"],
                "model_vs_hand_planner_batches": model["planner"] / model["hand_planner_batches"],
                "planner_stages": {n.name: {"instances": len(n.instances), "tp": n.instances[0].tp,
                                            "batch": n.batching.max_batch} for n in planned.stages()},
            }
            rows.append(row)
            print(f"{example:16s} {tname:9s} planner {row['planner_rps']:9.4g} req/s "
                  f"({row['sim_vs_predicted']:.2f}x predicted) | hand shipped "
                  f"{row['hand_shipped_rps']:9.4g} ({row['vs_hand_shipped']:.2f}x; model "
                  f"{row['model_vs_hand_shipped']:.2f}x) | hand + planner batches "
                  f"{row['hand_planner_batches_rps']:9.4g} ({row['vs_hand_planner_batches']:.2f}x; model "
                  f"{row['model_vs_hand_planner_batches']:.2f}x)", flush=True)
    summary = {
        "goal": GOAL, "most_requests_per_simulation": args.requests,
        "min_vs_hand_shipped": min(r["vs_hand_shipped"] for r in rows),
        "min_vs_hand_planner_batches": min(r["vs_hand_planner_batches"] for r in rows),
        "min_model_vs_hand_shipped": min(r["model_vs_hand_shipped"] for r in rows),
        "min_model_vs_hand_planner_batches": min(r["model_vs_hand_planner_batches"] for r in rows),
        "sim_vs_predicted_range": [min(r["sim_vs_predicted"] for r in rows), max(r["sim_vs_predicted"] for r in rows)],
        "cases_sim_within_10pct_of_predicted": sum(abs(r["sim_vs_predicted"] - 1) <= 0.10 for r in rows),
        "cases_meeting_goal_vs_shipped": sum(r["vs_hand_shipped"] >= GOAL for r in rows),
        "cases_meeting_goal_vs_planner_batches": sum(r["vs_hand_planner_batches"] >= GOAL for r in rows),
        "cases": len(rows),
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
