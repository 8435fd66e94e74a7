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


def test_a_pinned_pipeline_split_is_kept() -> None:
    pass


@pytest.mark.parametrize(("parallel", "message"), [("dp: 2", "copies of a stage are `replicas`"),
                                                   ("pp: 3", "more pipeline stages than its 2 layers")])
def test_pins_the_runtime_cannot_run_are_refused_where_they_are(tmp_path: Path, parallel: str, message: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(spec(tmp_path, parallel))]) == 2
    err = capsys.readouterr().err
    assert message in err and "pins.yaml:11:20: error" in err
