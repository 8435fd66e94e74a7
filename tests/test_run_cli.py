"""`omnigraph run` end to end: the real speak demo, and the tiny examples writing real files."""
from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnigraph.cli import main

pytest.importorskip("torch")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_speak_demo_says_paris(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's demo: real SmolLM2 weights answer, the real Piper voice speaks."""
    code = main(["run", str(EXAMPLES / "speak.yaml"), "--input", "prompt=The capital of France is",
                 "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "Paris" in out
    assert "Paris" in (tmp_path / "reply.txt").read_text()
    with wave.open(str(tmp_path / "speech.wav")) as w:
        assert w.getframerate() == 22050 and w.getnchannels() == 1
        seconds = w.getnframes() / w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert 0.5 < seconds < 15 and np.abs(samples).mean() > 100  # speech, not silence


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def _clip(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    t = np.arange(16000) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
    return path


def test_text_to_image_tiny_writes_a_png(tmp_path: Path, capsys) -> None:
    code = main(["run", str(EXAMPLES / "tiny" / "text_to_image_tiny.og"), "-i", "prompt=a red fox",
                 "-o", str(tmp_path / "out"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    image = Image.open(doc["outputs"]["image"])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_vision_chat_and_moe_tiny_answer(tmp_path: Path, picture: Path, capsys) -> None:
    code = main(["run", str(EXAMPLES / "tiny" / "vision_chat_tiny.yaml"), "-i", "prompt=What is this?",
                 "-i", f"image=@{picture}", "--json"])
    assert code == 0 and isinstance(json.loads(capsys.readouterr().out)["outputs"]["answer"], str)
    code = main(["run", str(EXAMPLES / "tiny" / "moe_tiny.og"), "-i", "prompt=Hi", "-i", f"image=@{picture}",
                 "-i", f"audio=@{_clip(tmp_path)}", "--json", "--stats"])
    assert code == 0 and "reply" in json.loads(capsys.readouterr().out)["outputs"]


def test_run_input_errors_are_user_errors(tmp_path: Path, capsys) -> None:
    spec = str(EXAMPLES / "tiny" / "vision_chat_tiny.yaml")
    assert main(["run", spec, "-i", "prompt=x"]) == 2
    assert "missing --input for image" in capsys.readouterr().err
    assert main(["run", spec, "-i", "prompt=x", "-i", "image=@/nonexistent.png"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", spec, "-i", "prompt=x", "-i", "imagee=@x.png"]) == 2
    assert "has no input 'imagee'" in capsys.readouterr().err


def test_unloadable_model_is_a_user_error(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "p.og"
    spec.write_text('pipeline p(x: text) -> (y: audio) {\n  v = tts(x) { model: "onnx:no_such_voice_pkg" }\n'
                    "  return y = v.audio\n}\n")
    assert main(["run", str(spec), "-i", "x=hello"]) == 2
    err = capsys.readouterr().err
    assert "stage 'v': cannot load model 'onnx:no_such_voice_pkg'" in err and "internal error" not in err
