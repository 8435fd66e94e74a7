"""The tiny bagel_route and refine_loop examples: YAML == DSL, `omnigraph run` end to end, the critic."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnigraph.cli import main
from omnigraph.frontend import load_spec

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"


@pytest.mark.parametrize("name", ["bagel_route_tiny", "refine_loop_tiny"])
def test_yaml_and_dsl_are_the_same_spec(name: str) -> None:
    assert load_spec(TINY / f"{name}.yaml").spec == load_spec(TINY / f"{name}.og").spec
    assert main(["check", str(TINY / f"{name}.og")]) == 0
    assert main(["check", str(TINY / f"{name}.yaml")]) == 0


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_bagel_route_tiny_understands_or_generates(tmp_path: Path, picture: Path, capsys) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    spec = str(TINY / "bagel_route_tiny.og")
    code = main(["run", spec, "-i", "prompt=What is this?", "-i", f"image=@{picture}", "-i", "mode=understand",
                 "-o", str(tmp_path / "understand"), "--json"])
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert code == 0 and "answer" in outputs and "picture" not in outputs
    assert isinstance(Path(outputs["answer"]).read_text(), str)

    code = main(["run", str(TINY / "bagel_route_tiny.yaml"), "-i", "prompt=a red fox", "-i", f"image=@{picture}",
                 "-i", "mode=generate", "-o", str(tmp_path / "generate"), "--json"])
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert code == 0 and "picture" in outputs and "answer" not in outputs
    assert outputs["picture"].endswith(".png")
    image = Image.open(outputs["picture"])
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"


def test_refine_loop_tiny_writes_an_answer(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    code = main(["run", str(TINY / "refine_loop_tiny.og"), "-i", "prompt=Say hello.",
                 "-o", str(tmp_path / "out"), "--json"])
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert code == 0 and set(outputs) == {"answer"}
    assert isinstance(Path(outputs["answer"]).read_text(encoding="utf-8", errors="replace"), str)


@pytest.fixture(scope="module")
def critics():
    spec = importlib.util.spec_from_file_location("tiny_critics_under_test", TINY / "critics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rubric_critic(critics) -> None:
    critic = critics.RubricCritic(threshold=1.0, max_words=5)
    good = critic("Hello there, world.")
    assert good["accept"] == 1.0 and isinstance(good["accept"], float)
    assert "unchanged" in good["feedback"] and "Hello there, world." in good["feedback"]

    no_stop = critic("Hello there")
    assert no_stop["accept"] == 0.0
    assert "full stop" in no_stop["feedback"] and "Hello there" in no_stop["feedback"]
    assert "shorten" not in no_stop["feedback"]

    too_long = critic("one two three four five six.")
    assert too_long["accept"] == 0.0 and "at most 5 words" in too_long["feedback"]

    empty = critic("   ")
    assert empty["accept"] == 0.0 and "non-empty" in empty["feedback"]
    assert critic.score("   ")[0] == pytest.approx(1 / 3)  # only `concise` passes

    # deterministic, and the threshold is a fraction of the rubric
    assert critic("Hello there") == critic("Hello there")
    lenient = critics.RubricCritic(threshold=0.6, max_words=5)
    assert lenient("Hello there")["accept"] == 1.0  # 2 of 3 checks pass
    assert critics.RubricCritic(rubric=["concise"], max_words=2)("a b c")["accept"] == 0.0
    with pytest.raises(ValueError):
        critics.RubricCritic(rubric=["correct"])
    with pytest.raises(ValueError):
        critics.RubricCritic(threshold=1.5)
