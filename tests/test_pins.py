"""What a spec pins about a stage's parallelism is kept or refused by name, never dropped."""
from __future__ import annotations

from pathlib import Path

import pytest

from omnigraph.api import compile_plan
from omnigraph.cli import main

SPEC = """
pipeline: pins
inputs: {{prompt: text}}
outputs:
  reply: {{from: llm.text, modality: text}}
stages:
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    parallel: {{{parallel}}}
    params: {{weights: random, max_new_tokens: 4, chat: false, config: {{hidden_size: 64, intermediate_size: 128,
              num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 512}}}}
"""


def spec(tmp_path: Path, parallel: str) -> Path:
    path = tmp_path / "pins.yaml"
    path.write_text(SPEC.format(parallel=parallel))
    return path


def test_pinned_replicas_are_kept(tmp_path: Path) -> None:
    plan = compile_plan(spec(tmp_path, "replicas: 3"), "h100x8")
    (node,) = plan.stages()
    assert len(node.instances) == 3 and all(len(i.devices) == 1 for i in node.instances)
    both = compile_plan(spec(tmp_path, "tp: 2, replicas: 2"), "h100x8").stages()[0]
    assert [(i.tp, len(i.devices)) for i in both.instances] == [(2, 2), (2, 2)]


@pytest.mark.parametrize(("parallel", "message"), [("dp: 2", "copies of a stage are `replicas`"),
                                                   ("pp: 3", "more pipeline stages than its 2 layers")])
def test_pins_the_runtime_cannot_run_are_refused_where_they_are(tmp_path: Path, parallel: str, message: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(spec(tmp_path, parallel))]) == 2
    err = capsys.readouterr().err
    assert message in err and "pins.yaml:11:20: error" in err


PINNED = """
pipeline: pinned
inputs: {{prompt: text}}
outputs: {{reply: {{from: talker.text, modality: text}}}}
stages:
  thinker:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    params: {{weights: random, dtype: bf16, devices: {thinker}, memory_share: {share},
             config: {{hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
                      num_key_value_heads: 8, vocab_size: 128256}}}}
  talker:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [thinker.text]
    params: {{weights: random, dtype: bf16, devices: ["node0:gpu1"], memory_share: 0.15,
             config: {{hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 16, num_attention_heads: 16,
                      num_key_value_heads: 4, vocab_size: 32000}}}}
"""


def pinned(tmp_path: Path, thinker: str = '["node0:gpu0", "node0:gpu1"]', share: float = 0.8) -> Path:
    path = tmp_path / "pinned.yaml"
    path.write_text(PINNED.format(thinker=thinker, share=share))
    return path


def test_pinned_devices_and_memory_shares_are_honoured(tmp_path: Path) -> None:
    from omnigraph.passes.planner.stage_options import device_types
    from omnigraph.target import load_target

    plan = {n.name: n for n in compile_plan(pinned(tmp_path), "h100x8").stages()}
    assert [i.devices for i in plan["thinker"].instances] == [["node0:gpu0"], ["node0:gpu1"]]
    assert [i.devices for i in plan["talker"].instances] == [["node0:gpu1"]]  # it shares gpu1, as pinned
    usable = device_types(load_target("h100x8"))[0].usable_bytes
    for name, share in (("thinker", 0.8), ("talker", 0.15)):
        r = plan[name].resources
        assert r.weights_bytes + r.kv_bytes + r.arena_bytes <= share * usable + 2 * 2**20  # buffers are tiny here
        assert r.kv_bytes > 0.5 * (share * usable - r.weights_bytes)  # the KV pool took the rest of its share


@pytest.mark.parametrize(("thinker", "share", "message"), [
    ('["node0:gpu9"]', 0.8, "'node0:gpu9' is not a device of h100x8"),
    ('["node0:gpu0", "node0:gpu0"]', 0.8, "lists a device twice"),
    ('["node0:gpu0"]', 0.1, "no configuration of it runs on its pinned devices node0:gpu0 within memory_share 0.1"),
    ('["node0:gpu1"]', 0.9, "the memory shares ('thinker' 0.9, 'talker' 0.15) leave the other stages"),
])
def test_pins_that_cannot_hold_are_explained(tmp_path: Path, thinker: str, share: float, message: str) -> None:
    from omnigraph.errors import OmnigraphError

    with pytest.raises(OmnigraphError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_plan(pinned(tmp_path, thinker, share), "h100x8")


def test_a_malformed_device_pin_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(pinned(tmp_path, '["gpu0"]'))]) == 2
    err = capsys.readouterr().err
    assert "pinned.yaml:" in err and "devices" in err
