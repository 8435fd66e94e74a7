"""Small stages share a GPU with a tensor-parallel group (issue 20, part 5).

A 1 GiB encoder used to take a whole GPU beside a TP group: the shared pool always had
devices of its own. Now a pool may ride on a multi-device stage's replicas (`h100@llm`): one
copy of each of its stages on the first device of every replica, in the host's time (the
host's replicas must keep up with its own work and the riders'), in the memory the host
leaves. The model (MILP and brute force alike), place-devices, plan-memory, the report and
the simulator all read it the same way.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from omnigraph.cli.plan import plan_spec
from omnigraph.codegen.plan_emitter import emit_plan
from omnigraph.compiler import compile_path
from omnigraph.passes.planner import plan_milp
from omnigraph.passes.planner.cost_types import ParallelConfig, StageCost
from omnigraph.passes.planner.plan_exhaustive import exhaustive
from omnigraph.passes.planner.plan_milp import solve
from omnigraph.passes.planner.plan_problem import DevicePool, Option, PlanProblem, StageChoices, throughput_of
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.passes.sim.capacity import modelled_capacity
from omnigraph.target import load_target

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from plan_eval import judge  # noqa: E402

GIB = 1 << 30
HEADROOM = 0.9


def _opt(tp: int, rate: float, mem_gib: float) -> Option:
    cost = StageCost(config=ParallelConfig(tp=tp), devices=tp, mem_per_device=int(mem_gib * GIB),
                     weight_bytes_per_device=0, kv_bytes_per_device=0, activation_bytes=0,
                     latency_s=1.0, first_output_s=1.0, throughput=rate)
    return Option(cost, "h100")


def _problem(enc_gib: float, count: int = 8) -> PlanProblem:
    enc = StageChoices("enc", 1.0, (_opt(1, 200.0, enc_gib),))
    llm = StageChoices("llm", 1.0, (_opt(2, 10.0, 70.0),), (("enc", False),))
    return PlanProblem((enc, llm), (DevicePool("h100", count, 80 * GIB),))


def test_a_small_stage_rides_on_a_tp_group_and_every_device_goes_to_the_llm() -> None:
    sol = solve(_problem(enc_gib=1.0))
    assert sol is not None
    assert sol.stages["llm"].replicas == 4 and sol.stages["enc"].shared
    assert sol.stages["enc"].pool_key == "h100@llm"
    assert sol.shared_devices == {"h100@llm": 4} and sol.devices_used == 8
    # The host's four groups give the encoder its time: 4 / (1/10 + 1/200) requests/s.
    assert sol.throughput == pytest.approx(4 / (1 / 10 + 1 / 200))
    assert throughput_of(_problem(1.0), sol.stages, sol.shared_devices) == pytest.approx(sol.throughput)
    ref = exhaustive(_problem(1.0))
    assert ref is not None and ref.throughput == pytest.approx(sol.throughput)


def test_a_rider_that_does_not_fit_beside_the_host_takes_a_device() -> None:
    sol = solve(_problem(enc_gib=20.0))  # 70 + 20 GiB > 80: no room on the LLM's devices
    assert sol is not None
    assert sol.stages["llm"].replicas == 3 and _own_devices(sol) == 1
    assert sol.throughput == pytest.approx(30.0)


def _own_devices(sol) -> int:  # noqa: ANN001
    """Devices the encoder has to itself (dedicated, or a pool of one), riding nowhere."""
    assert "h100@llm" not in sol.shared_devices
    return sol.stages["enc"].devices + sol.shared_devices.get("h100", 0)


def test_large_clusters_keep_pools_on_their_own_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_milp, "RIDE_MAX_DEVICES", 4)
    sol = solve(_problem(enc_gib=1.0))
    assert sol is not None and _own_devices(sol) == 1


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """vision_chat with a Llama-3-70B-shaped LLM (141 GB in bf16: it needs a TP group), once
    as the planner likes it, once with tp 8 pinned (the whole node in one group)."""
    folder = tmp_path_factory.mktemp("riding")
    doc = yaml.safe_load((ROOT / "examples/vision_chat.yaml").read_text())
    llm = doc["stages"]["llm"]
    llm["params"]["config"].update({"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                                    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256})
    doc["stages"]["projector"]["params"]["out_dim"] = 8192
    out = {"free": folder / "vc70.yaml", "tp8": folder / "vc70_tp8.yaml"}
    out["free"].write_text(yaml.safe_dump(doc, sort_keys=False))
    llm["parallel"] = {"tp": 8}
    out["tp8"].write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _rows(report: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in report["stages"]}


def test_the_encoder_rides_and_the_llm_gets_a_fourth_group(specs: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    riding = plan_spec(str(specs["free"]), "h100x8")
    rows = _rows(riding)
    assert rows["llm"]["config"].startswith("tp2") and rows["llm"]["replicas"] == 4
    for name in ("vision", "projector"):
        assert rows[name]["rides_on"] == "llm"
        assert rows[name]["devices"] == ["node0:gpu0", "node0:gpu2", "node0:gpu4", "node0:gpu6"]
    assert riding["devices_used"] == 8
    # The host's devices count the riders' memory: plan-memory gave the LLM's KV what both left.
    assert rows["vision"]["memory"]["weights"] > 0
    monkeypatch.setattr(plan_milp, "RIDE_MAX_DEVICES", 0)  # as before: the pool on a GPU of its own
    own = plan_spec(str(specs["free"]), "h100x8")
    assert _rows(own)["llm"]["replicas"] == 3 and _rows(own)["vision"]["rides_on"] is None
    assert riding["throughput_rps"] >= 1.3 * own["throughput_rps"]


def test_a_pinned_tp8_llm_leaves_room_for_the_encoder(specs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(plan_spec(str(specs["tp8"]), "h100x8"))
    assert rows["llm"]["config"].startswith("tp8") and rows["vision"]["devices"] == ["node0:gpu0"]
    monkeypatch.setattr(plan_milp, "RIDE_MAX_DEVICES", 0)
    from omnigraph.errors import OmnigraphError

    with pytest.raises(OmnigraphError, match="no plan fits"):  # it did not plan at all before
        plan_spec(str(specs["tp8"]), "h100x8")


def test_riders_follow_the_host_when_it_is_split(specs: dict[str, Path]) -> None:
    comp = compile_path(str(specs["free"]), target="h100x8", plan_options={"split-prefill-decode": {"split": "llm=1:3"}})
    plan = emit_plan(comp.module, comp.target.devices)
    by_name = {s.name: s for s in plan.stages()}
    decode = [i.devices[0] for i in by_name["llm"].instances]
    assert len(by_name["vision"].instances) == 3
    assert [i.devices[0] for i in by_name["vision"].instances] == decode


@pytest.mark.parametrize("which", ["free", "tp8"])
def test_model_and_simulator_agree_on_a_riding_plan(specs: dict[str, Path], which: str) -> None:
    comp = compile_path(str(specs[which]), target="h100x8")
    plan = emit_plan(comp.module, comp.target.devices)
    report = plan_spec(str(specs[which]), "h100x8")
    capacity = report["throughput_rps"] / HEADROOM
    target = load_target("h100x8")
    assert modelled_capacity(plan, target, parse_mix(None)) == pytest.approx(capacity, rel=0.05)
    served = judge(plan, target, rate=1.3 * capacity, requests=1500, seed=7, steady_only=True)["steady_rps"]
    assert served == pytest.approx(capacity, rel=0.10)
