"""Pipeline parallelism in the planner and the simulator (issue 20; benchmarks/pipeline_parallel.py
--simulate): a Llama-3.1-405B-shaped model in bf16, which no node of eight H100s holds, plans
as tp8·pp2 over the two nodes of h100-2x8, each pipeline stage's tp group inside one node; and
the simulator's decode step for that instance pays the pipeline's bubble (one step's stages run
one after the other), where it would be half as long if the stages overlapped."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omnigraph.api import compile_plan
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_rules import stage_cost
from omnigraph.passes.planner.precision import at_dtype
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.passes.sim.model import CostTimes, sim_pipeline_from_plan
from omnigraph.target import load_target

pytest.importorskip("transformers")

LLAMA_405B = {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
              "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("pp")) / "llama405.yaml"
    llm = {"kind": "ar_llm", "model": "transformers:LlamaForCausalLM", "inputs": ["prompt"],
           "params": {"weights": "random", "chat": False, "config": LLAMA_405B}}
    path.write_text(yaml.safe_dump({"pipeline": "llama405", "inputs": {"prompt": "text"},
                                    "outputs": {"reply": {"from": "llm.text", "modality": "text"}},
                                    "stages": {"llm": llm}}))
    return compile_plan(path, "h100-2x8"), load_target("h100-2x8")


def test_405b_plans_as_tp8_pp2_over_both_nodes(planned) -> None:
    plan, _ = planned
    (node,) = plan.stages()
    (inst,) = node.instances
    assert (inst.tp, inst.pp, len(inst.devices)) == (8, 2, 16)
    assert node.resources.dtype == "bf16"
    # Rank r runs stage r // 8: each stage's tp group on one node, the two stages on two.
    stages = [{d.partition(":")[0] for d in inst.devices[s * 8:(s + 1) * 8]} for s in range(2)]
    assert all(len(s) == 1 for s in stages) and stages[0] != stages[1]


def test_the_simulated_decode_step_of_a_pp2_instance_pays_the_bubble(planned) -> None:
    plan, target = planned
    (node,) = plan.stages()
    (inst,) = node.instances
    pipeline, _ = sim_pipeline_from_plan(plan, target, parse_mix("chat"))
    (stage,) = pipeline.stages
    assert stage.mode == "ar" and stage.placement == (tuple(inst.devices),)
    profile = at_dtype(profile_stage(node.kind, node.model, node.params), node.resources.dtype)
    device = target.nodes[0].devices[0]
    # The same tp group running every layer (it would not fit: the cost rules time it anyway),
    # its collectives inside one node as each of the pp instance's tp groups has them.
    whole = CostTimes(stage_cost, node.kind, profile, 8, device, target.nodes[0].intra_node_gb_s, False)
    for running in (1, 32):
        pp2, pp1 = stage.step_time(running, 320), whole.step(running, 320)
        # Half the layers each, but the stages of a step wait on each other: no faster than
        # one group doing it all (a bubble-free pipeline would take about half).
        assert pp2 >= 0.98 * pp1, (running, pp2, pp1)


@pytest.mark.parametrize("rows,tokens", [(32, 1), (256, 1), (1, 600), (4, 600), (16, 2048)])
def test_the_cost_rules_cut_a_forward_as_the_runtime_does(planned, rows: int, tokens: int) -> None:
    # One rule (runtime/pp_schedule.py) for the runtime that cuts and the cost model that
    # prices: a decode step goes through whole, a long forward in up to 4 micro-batches, and
    # the pipeline's m + pp - 1 slots are what the pass costs (pp - 1 of them the bubble).
    from omnigraph.passes.planner.cost_rules import ReplicaTimes
    from omnigraph.passes.planner.cost_types import ParallelConfig
    from omnigraph.runtime.pp_schedule import micro_batches

    plan, target = planned
    (node,) = plan.stages()
    profile = at_dtype(profile_stage(node.kind, node.model, node.params), node.resources.dtype)
    device, node0 = target.nodes[0].devices[0], target.nodes[0]
    times = ReplicaTimes(node.kind, profile, ParallelConfig(tp=8, pp=2), device, node0.intra_node_gb_s, False,
                         target.inter_node_gb_s, True)
    one = times.run(rows, tokens, tokens, 0)
    m = micro_batches(rows, tokens)
    assert m == (1 if rows * tokens < 512 else min(rows, 4))
    slot = one.bubble_s  # pp - 1 = 1 slot of bubble
    assert one.seconds == pytest.approx((m + 1) * slot, rel=1e-9)
