"""The simulated part of benchmarks/pipeline_parallel.py (issue 20): tp8·pp2 over two nodes
against the best one-node plans, replayed in the discrete-event simulator.

A Llama-3.1-405B-shaped model (bf16), which no 8-GPU node of H100s holds, planned on `h100-2x8`
(tp8·pp2 over the two nodes), against `h200x8` in bf16 (less KV room: a smaller batch) and
`h100x8` with an fp8 pin (costed by the planner; the runtime has no fp8 kernels); and a
Llama-3.1-70B shape that fits one node both ways (tp8 on one node vs tp8·pp2 over two). Each
plan is replayed under Poisson loads of the `chat` and `long` mixes: throughput, the share of
requests within TTFT/TPOT targets, and goodput (DistServe's: the highest rate at which 90% meet
them), per device and per node. A pp instance is replayed twice: with the simulator's step times
as they are, and with its pipeline stages timed as omnigraph/runtime/tp/pipeline.py runs them
(PpTimes); `pp_check` puts the two side by side for one decode step and one prefill.

    python benchmarks/pipeline_parallel.py --simulate
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLAMA_405B = {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
              "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
             "torch_dtype": "bfloat16"}
MODELS = {"405B": LLAMA_405B, "70B": LLAMA_70B}
SIM_MAX_BATCH = 256  # high enough that the KV room left, not the stage's cap, sets the planned batch
SIM_NEW_TOKENS = 1024  # so that the long mix's 512-token replies are not cut short
MIXES = ("chat", "long")
SLOS = {"chat": "ttft=2.5,tpot=0.1", "long": "ttft=10,tpot=0.15"}
# Poisson rates (requests/s) per model and mix: from well within every plan's capacity to past it.
LOADS = {("405B", "chat"): (2.5, 5, 7.5, 10, 12.5), ("405B", "long"): (0.2, 0.4, 0.6, 0.8, 1.0),
         ("70B", "chat"): (12.5, 25, 37.5, 50, 62.5, 75), ("70B", "long"): (1, 2, 3, 4, 5)}
MIN_REQUESTS, MAX_REQUESTS = 200, 1200  # per simulated load
SEARCH_STEPS = 6  # bisections of the rate between the loads that did and did not meet the targets


@dataclass(frozen=True)
class SimCase:
    model: str
    target: str
    dtype: str | None = None  # pinned (params.dtype); None: the planner's
    parallel: tuple[tuple[str, int], ...] = ()  # pinned degrees; (): the planner's
    note: str = ""

    @property
    def label(self) -> str:
        pins = [f"{k}{v}" for k, v in self.parallel] + ([self.dtype] if self.dtype else [])
        return f"{self.model} on {self.target}" + (f" ({', '.join(pins)} pinned)" if pins else "")


# Each model's first case is the two-node plan the others are compared with; a pp instance is
# replayed twice: timed as the simulator times it, and as the runtime runs it (PpTimes).
SIM_CASES = (
    SimCase("405B", "h100-2x8", note="the planner's plan: no 8-GPU H100 node holds it"),
    SimCase("405B", "h200x8", note="one node, bf16: less KV room"),
    SimCase("405B", "h100x8", dtype="fp8", note="one node, fp8 pinned: costed, but the runtime has no fp8 kernels"),
    SimCase("405B", "h100x8", note="one node, bf16: does not fit"),
    SimCase("70B", "h100-2x8", parallel=(("tp", 8), ("pp", 2)), note="two nodes, pipelined"),
    SimCase("70B", "h100x8", parallel=(("tp", 8),), note="one node, the same tp"),
    SimCase("70B", "h100x8", note="one node, the planner's plan"),
)


def llama_spec(folder: Path, case: SimCase) -> Path:
    import yaml

    params = {"weights": "random", "chat": False, "max_batch": SIM_MAX_BATCH, "max_new_tokens": SIM_NEW_TOKENS,
              "config": MODELS[case.model]}
    if case.dtype:
        params["dtype"] = case.dtype
    llm = {"kind": "ar_llm", "model": "transformers:LlamaForCausalLM", "inputs": ["prompt"], "params": params}
    if case.parallel:
        llm["parallel"] = dict(case.parallel)
    name = f"llama{case.model}_{case.target}_{case.dtype or ''}_{'_'.join(f'{k}{v}' for k, v in case.parallel)}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pipeline": f"llama{case.model}", "inputs": {"prompt": "text"},
                                    "outputs": {"reply": {"from": "llm.text", "modality": "text"}},
                                    "stages": {"llm": llm}}, sort_keys=False))
    return path


def plan_case(spec_path: Path, target: str, mix: str) -> tuple[Any, dict]:
    """The runtime plan and placement report `omnigraph plan --target T --mix M` gives."""
    from omnigraph.api import compile_spec_plan
    from omnigraph.cli.plan import planning_options
    from omnigraph.passes.planner.placement_report import placement_report

    comp, plan = compile_spec_plan(spec_path, target, planning_options(mix))
    return plan, placement_report(comp.module)


class PpTimes:
    """A pp instance's step times as omnigraph/runtime/tp/pipeline.py runs it: each pipeline
    stage a tp group inside one node (its collectives over that node's link), the hidden state
    handed to the next stage over the link between them, a forward cut into min(rows, 4)
    micro-batches only when it has >= 512 new tokens (else whole), m + pp - 1 slots of the
    slowest stage (the first, which holds the extra layer when they do not divide), and the
    last stage's final hidden states sent to every rank. A stage's pass is the cost rules' pass
    of a pp=1 model of that stage's layers (sim/model.py CostTimes).

    With `micro` M, every forward goes as min(rows, M) micro-batches; with `sim_links`, the
    whole instance talks over the link the simulator gives it (sim/model.py _device: the link
    between nodes, for the tp collectives too, when the instance spans nodes) and nothing is
    sent back from the last stage: the simulator's composition, to see which M it uses."""

    def __init__(self, kind: str, profile: Any, inst: Any, target: Any, *, micro: int | None = None,
                 sim_links: bool = False) -> None:
        from dataclasses import replace

        from omnigraph.passes.planner.cost_rules import COLLECTIVE_LATENCY_S, INTER_NODE_LATENCY_S, stage_cost
        from omnigraph.passes.sim.model import CostTimes
        from omnigraph.runtime.pp_schedule import MICRO_BATCH_TOKENS, MICRO_BATCHES
        from omnigraph.runtime.tp.pipeline import layer_range

        self.pp, self.fixed, self.broadcast = inst.pp, micro, not sim_links
        self.micro_max, self.micro_tokens = MICRO_BATCHES, MICRO_BATCH_TOKENS
        layers = len(layer_range(profile.layers, inst.pp, 0))
        frac = layers / profile.layers
        per_layer = profile.params - profile.embedding_params - profile.encoder_params
        self.stage = replace(profile, layers=layers, params=round(profile.params - per_layer * (1 - frac)),
                             expert_params=round(profile.expert_params * frac),
                             active_params=round(profile.active_params - per_layer * (1 - frac)))
        device = stage_device(target, inst)
        node = next(n for n in target.nodes if n.name == inst.devices[0].partition(":")[0])
        across = len({d.partition(":")[0] for d in inst.devices}) > 1
        # Rank r runs pipeline stage r // width on the instance's r-th device.
        width = len(inst.devices) // inst.pp
        groups = [{d.partition(":")[0] for d in inst.devices[s * width:(s + 1) * width]} for s in range(inst.pp)]
        split = across if sim_links else any(len(g) > 1 for g in groups)  # a tp group across nodes
        self.times = CostTimes(stage_cost, kind, self.stage, inst.tp, device,
                               target.inter_node_gb_s if split else node.intra_node_gb_s, split, ep=inst.ep)
        self.hop_gb_s = target.inter_node_gb_s if across else node.intra_node_gb_s
        self.hop_latency = INTER_NODE_LATENCY_S if across else COLLECTIVE_LATENCY_S
        self.hidden_bytes = profile.hidden * profile.dtype_bytes

    def micro(self, rows: int, new_tokens: float) -> int:
        if self.fixed is not None:
            return max(1, min(rows, self.fixed))
        return min(rows, self.micro_max) if rows * new_tokens >= self.micro_tokens else 1

    def hop(self, rows: float, new_tokens: float) -> float:
        from omnigraph.passes.planner.cost_rules import LINK_EFFICIENCY, MIN_LINK_GB_S

        link = max(self.hop_gb_s, MIN_LINK_GB_S) * 1e9 * LINK_EFFICIENCY
        return rows * new_tokens * self.hidden_bytes / link + self.hop_latency

    def _pipelined(self, rows: int, new_tokens: float, one: Any) -> float:
        m = self.micro(rows, new_tokens)
        part = math.ceil(rows / m)  # bounds rows * i // m: the largest part sets the pace
        back = self.hop(rows, 1) if self.broadcast else 0.0
        return (m + self.pp - 1) * (one(part) + self.hop(part, new_tokens)) + back

    def step(self, running: int, context: float) -> float:
        return self._pipelined(running, 1, lambda part: self.times.step(part, context))

    def prefill(self, works: Any) -> float:
        from dataclasses import replace

        mean = sum(w.tokens for w in works) / len(works)
        like = replace(works[0], tokens=max(1, round(mean)))
        return self._pipelined(len(works), mean, lambda part: self.times.prefill([like] * part))


def _sim_setup(plan: Any, target: Any, shapes: list, faithful: bool) -> tuple[Any, Any]:
    """The simulator's pipeline for the plan; with `faithful`, a pp stage timed by PpTimes."""
    from dataclasses import replace

    from omnigraph.passes.planner.arch_profile import profile_stage
    from omnigraph.passes.planner.precision import at_dtype
    from omnigraph.passes.sim.model import sim_pipeline_from_plan

    pipeline, work_fn = sim_pipeline_from_plan(plan, target, shapes)
    if faithful:
        for i, stage in enumerate(pipeline.stages):
            node = next(n for n in plan.stages() if n.name == stage.name)
            inst = node.instances[0]
            if inst.pp > 1:
                profile = at_dtype(profile_stage(node.kind, node.model, node.params), node.resources.dtype)
                times = PpTimes(node.kind, profile, inst, target)
                pipeline.stages[i] = replace(stage, prefill_time=times.prefill, step_time=times.step)
    return pipeline, work_fn


def pp_check(plan: Any, target: Any, shapes: list) -> dict[str, Any]:
    """For a pp instance, a decode step at the planned batch and a prefill of 8 prompts: the
    simulator's time, the micro-batches M it implies (PpTimes with M and the simulator's links
    that comes nearest, and how near), and the runtime's way: its M, with the simulator's
    links and with its own (PpTimes), beside the formula (p-1)/(M+p-1)."""
    from omnigraph.passes.planner.arch_profile import profile_stage
    from omnigraph.passes.planner.cost_types import StageWork
    from omnigraph.passes.planner.precision import at_dtype
    from omnigraph.passes.planner.workload import mean_shape

    node = plan.stages()[0]
    inst = node.instances[0]
    profile = at_dtype(profile_stage(node.kind, node.model, node.params), node.resources.dtype)
    sim, _ = _sim_setup(plan, target, shapes, faithful=False)
    stage = sim.stages[0]
    runtime = PpTimes(node.kind, profile, inst, target)
    at_sim_links = PpTimes(node.kind, profile, inst, target, sim_links=True)
    fixed = {m: PpTimes(node.kind, profile, inst, target, micro=m, sim_links=True) for m in range(1, 9)}
    shape = mean_shape(shapes)
    batch, pp = node.batching.max_batch, inst.pp
    context = shape.prompt_tokens + shape.reply_tokens / 2
    prompts = min(batch, 8)
    work = [StageWork(tokens=shape.prompt_tokens)] * prompts
    out: dict[str, Any] = {"pp": pp, "tp": inst.tp, "batch": batch, "context": context, "prompts": prompts,
                           "prompt_tokens": shape.prompt_tokens}
    for what, sim_s, time_of, rows, new in (
            ("decode_step", stage.step_time(batch, context), lambda t: t.step(batch, context), batch, 1),
            ("prefill", stage.prefill_time(work), lambda t: t.prefill(work), prompts, shape.prompt_tokens)):
        fits = {m: time_of(t) for m, t in fixed.items() if m <= rows}
        sim_m = min(fits, key=lambda m: abs(fits[m] - sim_s))
        m = runtime.micro(rows, new)
        runtime_s = time_of(runtime)
        out[what] = {"sim_s": round(sim_s, 5), "sim_micro_batches": sim_m,
                     "sim_fit_error": round(abs(fits[sim_m] - sim_s) / sim_s, 4),
                     "sim_bubble": round((pp - 1) / (sim_m + pp - 1), 3),
                     "runtime_micro_batches": m, "formula_bubble": round((pp - 1) / (m + pp - 1), 3),
                     "runtime_at_sim_links_s": round(time_of(at_sim_links), 5),
                     "runtime_s": round(runtime_s, 5), "sim_vs_runtime": round(sim_s / runtime_s, 3)}
    return out


def stage_device(target: Any, inst: Any) -> Any:
    node_name, _, dev_name = inst.devices[0].partition(":")
    node = next(n for n in target.nodes if n.name == node_name)
    return next(d for d in node.devices if d.name == dev_name)


def sim_loads(pipeline: Any, work_fn: Any, shapes: list, rates: list[float], slo: Any, seed: int) -> dict[str, Any]:
    """Poisson loads at `rates`, then goodput: the highest rate at which 90% meet `slo`."""
    import random

    from omnigraph.passes.planner.workload import sample_shapes
    from omnigraph.passes.sim.engine import SimRequest, poisson_arrivals, simulate
    from omnigraph.passes.sim.split_goodput import ATTAINMENT

    works = [work_fn(s, random.Random(seed))["llm"] for s in sample_shapes(shapes, MAX_REQUESTS, seed)]
    alone = simulate(pipeline, [SimRequest(0, 0.0, {"llm": works[0]})]).jct.max
    slots = sum(s.max_batch * s.replicas for s in pipeline.stages)

    def run(rate: float) -> Any:
        # Arrivals over ~10 lone requests' times, and 4x what the replicas hold at once: an
        # overload has to show in the queue, not hide in a batch that never fills.
        n = int(max(MIN_REQUESTS, min(MAX_REQUESTS, max(4 * slots, rate * 10 * alone))))
        arrivals = poisson_arrivals(rate, n, seed)
        return simulate(pipeline, [SimRequest(i, t, {"llm": w}) for i, (t, w) in enumerate(zip(arrivals, works))],
                        slo=slo)

    rows = []
    for rate in rates:
        rep = run(rate)
        rows.append({"rate_rps": rate, "requests": rep.requests, "throughput_rps": round(rep.throughput, 4),
                     "steady_rps": round(steady(rep), 4),
                     "attainment": round(rep.attainment, 3), "goodput_rps": round(rep.goodput, 4),
                     "ttft_p50_s": round(rep.ttft.p50, 3), "ttft_p90_s": round(rep.ttft.p90, 3),
                     "tpot_p50_s": round(rep.tpot.p50, 4) if rep.tpot else None})
    # DistServe's goodput (as sim/split_goodput.py max_goodput): bisect the rate for ATTAINMENT.
    ok = {r["rate_rps"]: r["attainment"] >= ATTAINMENT for r in rows}
    lo = max((r for r in ok if ok[r]), default=0.0)
    hi = min((r for r in ok if not ok[r] and r > lo), default=None)
    for _ in range(8):  # every load met the targets: look higher
        if hi is not None:
            break
        lo, hi = (lo * 2, None) if run(lo * 2).attainment >= ATTAINMENT else (lo, lo * 2)
    hi = hi if hi is not None else lo
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if run(mid).attainment >= ATTAINMENT else (lo, mid)
    return {"lone_request_s": round(alone, 3), "loads": rows, "goodput_rps": round(lo, 4)}


def steady(report: Any) -> float:
    """Completions per second while requests still arrive, past the first third (as
    benchmarks/plan_eval.py steady_throughput): a plan's capacity under overload, without the
    fill and the drain at the ends of a run."""
    last = max(r.arrival_s for r in report.per_request)
    done = sum(1 for r in report.per_request if last / 3 <= r.finish_s <= last)
    return done / (last - last / 3) if last > 0 else report.throughput


def simulate_cases(seed: int = 0) -> dict[str, Any]:
    from omnigraph.errors import OmnigraphError
    from omnigraph.passes.planner.workload import parse_mix
    from omnigraph.passes.sim.sim_types import parse_slo
    from omnigraph.target import load_target

    folder = Path(tempfile.mkdtemp())
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for case in SIM_CASES:
        spec_path = llama_spec(folder, case)
        target = load_target(case.target)
        for mix in MIXES:
            shapes, slo = parse_mix(mix), parse_slo(SLOS[mix])
            row: dict[str, Any] = {"case": case.label, "model": case.model, "target": case.target,
                                   "pins": {**dict(case.parallel), **({"dtype": case.dtype} if case.dtype else {})},
                                   "note": case.note, "mix": mix, "slo": SLOS[mix]}
            try:
                plan, placed = plan_case(spec_path, case.target, mix)
            except OmnigraphError as exc:
                row["error"] = exc.message
                rows.append(row)
                print(f"{case.label} [{mix}]: {exc.message}")
                continue
            (stage,) = placed["stages"]
            inst = plan.stages()[0].instances[0]
            devices = placed["devices_used"]
            nodes = len({d.partition(":")[0] for d in stage["devices"]})
            key = (case.model, mix)
            row.update({"config": stage["config"], "replicas": stage["replicas"], "pp": inst.pp, "tp": inst.tp,
                        "batch": stage["batch"], "dtype": stage["dtype"], "devices": devices, "nodes": nodes,
                        "predicted_rps": round(placed["throughput_rps"], 4)})
            variants = {"sim": False, "sim_runtime_pp": True} if inst.pp > 1 else {"sim": False}
            for name, faithful in variants.items():
                pipeline, work_fn = _sim_setup(plan, target, shapes, faithful)
                got = sim_loads(pipeline, work_fn, shapes, list(LOADS[key]), slo, seed)
                got["goodput_per_device"] = round(got["goodput_rps"] / devices, 4)
                got["goodput_per_node"] = round(got["goodput_rps"] / nodes, 4)
                row[name] = got
            if inst.pp > 1:
                checks.append({"case": case.label, "mix": mix, **pp_check(plan, target, shapes)})
            rows.append(row)
            print_row(row)
    for c in checks:
        print(f"pp check {c['case']} [{c['mix']}] batch {c['batch']}: " + "; ".join(
            f"{w} sim {c[w]['sim_s'] * 1e3:.1f} ms (as M={c[w]['sim_micro_batches']} micro-batches, "
            f"within {c[w]['sim_fit_error']:.1%}: bubble {c[w]['sim_bubble']:.2f}) vs runtime "
            f"{c[w]['runtime_s'] * 1e3:.1f} ms (M={c[w]['runtime_micro_batches']}, bubble "
            f"{c[w]['formula_bubble']:.2f}; {c[w]['runtime_at_sim_links_s'] * 1e3:.1f} ms at the simulator's links): "
            f"{c[w]['sim_vs_runtime']:.2f}x" for w in ("decode_step", "prefill")))
    return {"seed": seed, "max_batch": SIM_MAX_BATCH, "max_new_tokens": SIM_NEW_TOKENS, "slos": SLOS,
            "loads_rps": {f"{m} {x}": list(r) for (m, x), r in LOADS.items()}, "rows": rows, "pp_checks": checks,
            "ratios": ratios(rows)}


def print_row(row: dict[str, Any]) -> None:
    head = (f"{row['case']} [{row['mix']}]: {row['config']} x{row['replicas']} {row['dtype']}, "
            f"{row['devices']} devices on {row['nodes']} node(s), predicted {row['predicted_rps']:.3g} req/s")
    print(head)
    for name in ("sim", "sim_runtime_pp"):
        if name in row:
            got = row[name]
            loads = ", ".join(f"{r['rate_rps']:g}: {r['steady_rps']:.3g} ({r['attainment']:.0%})" for r in got["loads"])
            print(f"  {name}: goodput {got['goodput_rps']:.3g} req/s ({got['goodput_per_node']:.3g}/node, "
                  f"{got['goodput_per_device']:.3g}/device); offered: done/s (within {row['slo']}) {loads}")


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's first plan (two nodes) against each other plan of the same model and mix:
    goodput in all, per node and per device."""
    out = []
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if "sim" not in row:
            continue
        key = (row["model"], row["mix"])
        if key not in firsts:
            firsts[key] = row
            continue
        two = firsts[key]
        for name in ("sim", "sim_runtime_pp"):
            base = two.get(name)
            if base is None:
                continue
            one = row["sim"]
            div = (lambda a, b: round(a / b, 3) if b else None)  # noqa: E731
            out.append({"model": row["model"], "mix": row["mix"], "two_nodes": two["case"], "timed": name,
                        "vs": row["case"], "goodput": div(base["goodput_rps"], one["goodput_rps"]),
                        "per_node": div(base["goodput_per_node"], one["goodput_per_node"]),
                        "per_device": div(base["goodput_per_device"], one["goodput_per_device"])})
    for r in out:
        print(f"{r['two_nodes']} ({r['timed']}) vs {r['vs']} [{r['mix']}]: goodput {r['goodput']}x, "
              f"per node {r['per_node']}x, per device {r['per_device']}x")
    return out
