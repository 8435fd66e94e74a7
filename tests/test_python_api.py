"""The Python API as a user meets it: a pipeline built in Python loads and runs as a spec file
does, `omnigraph.compile` gives what `omnigraph compile --emit` gives, `stats()` exists, and
the public names are typed and lazy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import omnigraph
from omnigraph.frontend.builder import Pipeline

pytest.importorskip("torch")
pytest.importorskip("transformers")

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300)


def built() -> Pipeline:
    with Pipeline("echo_llm") as p:
        prompt = p.input("prompt", "text")
        llm = p.ar_llm("llm", prompt, model="transformers:LlamaForCausalLM", weights="random",
                       max_new_tokens=6, chat=False, config=LLAMA)
        p.output("reply", llm.text, "text")
    return p


def test_a_built_pipeline_and_its_spec_run_like_a_file(tmp_path: Path) -> None:
    p = built()
    with omnigraph.load(p, target=None) as pipe:
        a = pipe.run({"prompt": "hi"})
        stats = pipe.stats()
    with omnigraph.load(p.spec, target=None) as pipe:
        b = pipe.run({"prompt": "hi"})
    assert a == b and isinstance(a["reply"], str)
    assert stats["in_flight"] == 0 and stats["stages"]["llm"]["busy_s"] > 0
    assert stats["stages"]["llm"]["instances"][0]["kv_blocks"] > 0
    with pytest.raises(TypeError, match="cannot compile a int"):
        omnigraph.load(3)  # type: ignore[arg-type]


def test_compile_gives_each_form(tmp_path: Path) -> None:
    p = built()
    assert omnigraph.compile(p, emit="spec") == p.spec
    assert "omni.stage @llm" in omnigraph.compile(p, emit="ir")
    plan = omnigraph.compile(p, emit="plan", target="cpu-local")
    assert plan.pipeline == "echo_llm" and plan.stages()[0].resources.dtype in ("bf16", "f32")
    path = omnigraph.compile(p, emit="bundle", output=tmp_path / "b")
    assert (path / "manifest.json").is_file()
    with pytest.raises(ValueError, match="emit must be"):
        omnigraph.compile(p, emit="pictures")


def test_public_names_are_listed_typed_and_lazy() -> None:
    assert {"load", "compile", "compile_plan", "Pipeline", "PipelineSpec", "RequestFailed"} <= set(omnigraph.__all__)
    assert (Path(omnigraph.__file__).parent / "py.typed").is_file()
    code = "import sys, omnigraph; assert 'torch' not in sys.modules and 'omnigraph.api' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    for name in omnigraph.__all__:
        assert getattr(omnigraph, name) is not None
