"""Wide graphs: a fan-in of many small encoders into one LLM plans when the encoders' copies
do not all fit one device (they split into several shared pools, or take turns on one), and a
target too small for them is an explained error, never an IR the verifier rejects."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omnigraph.api import compile_plan
from omnigraph.errors import OmnigraphError

TARGET = """
target: small4
nodes:
  - name: node0
    devices:
{devices}
    intra_node_gb_s: 100
inter_node_gb_s: 0
"""


def fan_in(tmp_path: Path, encoders: int) -> Path:
    vit = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "image_size": 224, "patch_size": 16}
    doc = {"pipeline": f"fanin{encoders}",
           "inputs": {"prompt": "text", **{f"img{i}": {"modality": "image", "dtype": "u8", "shape": [3, "?", "?"]}
                                           for i in range(encoders)}},
           "outputs": {"reply": {"from": "llm.text", "modality": "text"}},
           "stages": {f"enc{i}": {"kind": "encoder", "model": "transformers:SiglipVisionModel", "inputs": [f"img{i}"],
                                  "params": {"weights": "random", "hidden_size": 768, "config": vit}}
                      for i in range(encoders)}}
    doc["stages"]["proj"] = {"kind": "projector", "model": "py:torch.nn:Identity",
                             "inputs": {"x": [f"enc{i}.embeds" for i in range(encoders)]},
                             "params": {"in_dim": 768, "out_dim": 768}}
    doc["stages"]["llm"] = {"kind": "ar_llm", "model": "transformers:LlamaForCausalLM",
                            "inputs": {"prompt": "prompt", "context": "proj.embeds"},
                            "params": {"weights": "random", "max_new_tokens": 32,
                                       "config": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8,
                                                  "num_attention_heads": 12, "num_key_value_heads": 4,
                                                  "vocab_size": 32000}}}
    path = tmp_path / f"fanin{encoders}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def target(tmp_path: Path, count: int, gib: float) -> str:
    devices = "\n".join(f"      - {{name: gpu{i}, type: g, memory_gib: {gib}, peak_tflops: 100, mem_bandwidth_gb_s: 1000}}"
                        for i in range(count))
    path = tmp_path / f"small{count}.yaml"
    path.write_text(TARGET.format(devices=devices))
    return str(path)


def test_many_small_encoders_split_into_pools(tmp_path: Path) -> None:
    plan = compile_plan(fan_in(tmp_path, 24), target(tmp_path, 6, 4))
    encoders = [n for n in plan.stages() if n.name.startswith("enc")]
    device_sets = {tuple(sorted(d for i in n.instances for d in i.devices)) for n in encoders}
    assert len(device_sets) >= 2  # more than one pool: no device holds all 24 copies
    flat = [d for s in device_sets for d in s]
    assert len(flat) == len(set(flat))  # the pools do not overlap
    assert all(len(n.instances) >= 1 for n in plan.stages())


def test_a_target_too_small_for_them_is_explained(tmp_path: Path) -> None:
    # One 4 GiB device: the 24 encoders' copies do not fit side by side, so they take turns
    # (weights swapped from host memory); the LLM, decoding continuously, stays resident.
    plan = compile_plan(fan_in(tmp_path, 24), target(tmp_path, 1, 4))
    assert {n.name for n in plan.stages() if not n.resources.swap} == {"llm"}
    with pytest.raises(OmnigraphError) as err:  # 0.6 GiB: not even taking turns
        compile_plan(fan_in(tmp_path, 24), target(tmp_path, 1, 0.6))
    assert "invalid IR" not in str(err.value) and err.value.hint
    assert "even with the stages taking turns" in str(err.value)  # what was tried, said
    assert "and 20 more" in str(err.value)  # a wide fan-in is not listed name by name
