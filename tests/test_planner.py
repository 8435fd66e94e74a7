"""The planning passes end to end: real architectures on the shipped targets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omnigraph.api import compile_plan
from omnigraph.cli import main
from omnigraph.errors import IRError
from omnigraph.cli.plan import plan_spec
from omnigraph.target import load_target

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GIB = 1 << 30


def usable(target: str) -> dict[str, float]:
    t = load_target(target)
    return {f"{n.name}:{d.name}": d.memory_gib * GIB * 0.92 for n in t.nodes for d in n.devices}


@pytest.mark.parametrize("example,target", [
    ("qwen3_omni_moe", "h100x8"), ("qwen2_5_omni", "h100-2x8"), ("janus_image", "h200x8"),
    ("wan_video", "h100x8"), ("qwen3_omni_moe", "mixed"), ("omni_moe", "h100x1"),
])
def test_plans_fit_and_respect_the_model(example: str, target: str) -> None:
    report = plan_spec(str(EXAMPLES / f"{example}.yaml"), target)
    assert report["throughput_rps"] > 0
    capacity = usable(target)
    per_device: dict[str, float] = {}
    for row in report["stages"]:
        m = row["memory"]
        group = row["tp"] * row["pp"] * max(1, row["ep"] // row["tp"])
        assert len(row["devices"]) == row["replicas"] * group, row
        for dev in set(row["devices"]):
            per_device[dev] = per_device.get(dev, 0) + m["weights"] + m["kv"] + m["arena"] + m["buffers"]
        if not row["shared"]:  # a TP group never spans two nodes
            for i in range(row["replicas"]):
                nodes = {d.split(":")[0] for d in row["devices"][i * group:(i + 1) * group]}
                assert len(nodes) == 1, row
    for dev, used in per_device.items():
        assert used <= capacity[dev] * 1.0001, (dev, used / GIB)
    # Dedicated groups never overlap: each device belongs to one group, or to the shared pool.
    owners: dict[str, set[str]] = {}
    for row in report["stages"]:
        for dev in row["devices"]:
            owners.setdefault(dev, set()).add("pool" if row["shared"] else row["stage"])
    assert all(len(o) == 1 for o in owners.values()), owners


def test_tp_divides_heads_and_ep_divides_experts() -> None:
    from omnigraph.compiler import compile_path
    from omnigraph.dialect.values import from_attr
    from omnigraph.passes.stage_graph import stage_graph

    comp = compile_path(EXAMPLES / "qwen3_omni_moe.yaml", target="h100x8")
    for st in stage_graph(comp.module):
        cost, par = from_attr(st.op.cost), st.op.parallel.as_dict()
        if cost["heads"] and par["tp"] > 1:
            assert cost["heads"] % par["tp"] == 0
        if par["ep"] > 1:
            assert cost["experts"] and cost["experts"] % par["ep"] == 0


def test_runtime_plan_has_one_instance_per_replica() -> None:
    plan = compile_plan(ROOT / "tests" / "ir" / "plan_llama70b_h100x8.yaml", "h100x8")
    writer = next(n for n in plan.stages() if n.name == "writer")
    assert len(writer.instances) >= 1
    assert all(i.tp == len(i.devices) and i.tp >= 2 for i in writer.instances)
    devices = [d for i in writer.instances for d in i.devices]
    assert len(devices) == len(set(devices))
    assert writer.batching.max_batch in (1, 2, 4, 8, 16, 32)


def test_a_model_too_big_for_the_device_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(EXAMPLES / "qwen2_5_omni.yaml"), "--target", "cpu-local"]) == 2
    err = capsys.readouterr().err
    assert "stage 'thinker' needs" in err and "GiB per device" in err and "on cpu-local" in err
    assert "smallest fix:" in err and "Traceback" not in err


def test_stages_that_do_not_fit_together_name_what_is_left(tmp_path: Path) -> None:
    # Two Llama-3-8B-shaped LLMs (16 GB of bf16 weights each) on one 24 GiB device: each fits
    # alone, not both.
    spec = tmp_path / "two.yaml"
    llm = {"kind": "ar_llm", "model": "py:m:Llama",
           "params": {"max_new_tokens": 64, "max_batch": 1,
                      "config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}}}
    spec.write_text(yaml.safe_dump({
        "pipeline": "two", "inputs": {"prompt": "text"}, "outputs": {"out": "second.text"},
        "stages": {"first": {**llm, "inputs": ["prompt"]}, "second": {**llm, "inputs": ["first.text"]}},
    }))
    target = tmp_path / "l4.yaml"
    target.write_text(yaml.safe_dump({
        "target": "one_l4", "inter_node_gb_s": 0,
        "nodes": [{"name": "node0", "intra_node_gb_s": 0, "devices": [
            {"name": "gpu0", "type": "l4", "memory_gib": 24, "peak_tflops": 121, "mem_bandwidth_gb_s": 300}]}],
    }))
    with pytest.raises(IRError) as err:
        plan_spec(str(spec), str(target))
    text = err.value.render()
    assert "stage 'second' needs" in text and "left after 'first'" in text
    assert "a second device" in text


def test_latency_target_is_met_or_explained() -> None:
    spec = str(EXAMPLES / "qwen2_5_omni.yaml")
    loose = plan_spec(spec, "h100x8")
    tight_target = max(r["latency_s"] for r in loose["stages"]) * 0.8
    tight = plan_spec(spec, "h100x8", slo=tight_target * 3)
    assert tight["throughput_rps"] <= loose["throughput_rps"] * 1.0001
    with pytest.raises(IRError, match="no plan meets the latency target of 0.001 s"):
        plan_spec(spec, "h100x8", slo=0.001)


def test_a_moe_too_big_for_hbm_offloads_cold_experts(tmp_path: Path) -> None:
    # The Qwen3-Omni thinker (59 GiB of bf16 weights, 90% of them routed experts) on one
    # 48 GB L40S: it only fits with most experts in host memory.
    target = tmp_path / "l40s.yaml"
    target.write_text(yaml.safe_dump({
        "target": "one_l40s", "inter_node_gb_s": 0,
        "nodes": [{"name": "node0", "intra_node_gb_s": 0, "devices": [
            {"name": "gpu0", "type": "l40s", "memory_gib": 48, "peak_tflops": 362, "mem_bandwidth_gb_s": 864}]}],
    }))
    spec = tmp_path / "thinker.yaml"
    doc = yaml.safe_load((EXAMPLES / "qwen3_omni_moe.yaml").read_text())
    thinker = doc["stages"]["thinker"]
    thinker["inputs"] = {"prompt": "prompt"}
    spec.write_text(yaml.safe_dump({"pipeline": "thinker_only", "inputs": {"prompt": "text"},
                                    "outputs": {"reply": "thinker.text"}, "stages": {"thinker": thinker}}))
    report = plan_spec(str(spec), str(target))
    row = report["stages"][0]
    assert row["memory"]["offload"] > 10 * GIB
    assert row["memory"]["weights"] + row["memory"]["kv"] + row["memory"]["arena"] <= 48 * GIB * 0.92


def test_plan_cli_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(EXAMPLES / "qwen3_omni_moe.yaml")
    assert main(["plan", spec, "--target", "h200x8"]) == 0
    out = capsys.readouterr().out
    assert "qwen3_omni_moe on h200x8" in out and "thinker" in out and "bottleneck" in out
    assert main(["plan", spec, "--target", "h200x8", "--json", "--mix", "chat:0.5,long:0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mix"] == "chat:0.5,long:0.5"
    assert {r["stage"] for r in report["stages"]} >= {"thinker", "talker", "code2wav"}
    assert report["bottleneck"] in {r["stage"] for r in report["stages"]}


def test_plan_cli_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(EXAMPLES / "speak.yaml")
    assert main(["plan", spec, "--target", "h100x9"]) == 2
    assert "unknown target 'h100x9'" in capsys.readouterr().err
    assert main(["plan", spec, "--target", "h100x8", "--mix", "chitchat"]) == 2
    assert "chitchat" in capsys.readouterr().err


def test_planning_a_thousand_devices(tmp_path: Path) -> None:
    nodes = [{"name": f"node{i}", "intra_node_gb_s": 450,
              "devices": [{"name": f"gpu{j}", "type": "h100", "memory_gib": 80, "peak_tflops": 989,
                           "mem_bandwidth_gb_s": 3350} for j in range(8)]} for i in range(128)]
    target = tmp_path / "h100x1024.yaml"
    target.write_text(yaml.safe_dump({"target": "h100x1024", "inter_node_gb_s": 400, "nodes": nodes}))
    report = plan_spec(str(EXAMPLES / "qwen3_omni_moe.yaml"), str(target))
    small = plan_spec(str(EXAMPLES / "qwen3_omni_moe.yaml"), "h100x8")
    assert report["devices_used"] > 1000
    assert report["throughput_rps"] >= 100 * small["throughput_rps"]


@pytest.mark.parametrize("example", ["qwen3_omni_moe", "qwen2_5_omni", "wan_video"])
def test_a_strictly_larger_target_never_plans_worse(example: str) -> None:
    # h100-2x8 holds h100x8 twice over; h200x8 is h100x8 with more memory and bandwidth per
    # device. Whatever the smaller target can run, the larger can too, so its plan is no worse.
    rps = {t: plan_spec(str(EXAMPLES / f"{example}.yaml"), t)["throughput_rps"] for t in ("h100x8", "h200x8", "h100-2x8")}
    assert rps["h200x8"] >= rps["h100x8"] * (1 - 1e-6), rps
    assert rps["h100-2x8"] >= rps["h100x8"] * (1 - 1e-6), rps


def test_solve_time_is_a_flag_with_checked_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(EXAMPLES / "qwen2_5_omni.yaml")
    with pytest.raises(SystemExit) as bad:
        main(["plan", spec, "--target", "h100x8", "--solve-time", "-1"])
    assert bad.value.code == 2 and "seconds" in capsys.readouterr().err
    assert main(["plan", spec, "--target", "h100x8", "--json", "--solve-time", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["optimality_gap"] == 0.0  # six stages: proven best well within the time
