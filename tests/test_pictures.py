"""Pictures and traces: each is rendered and its content checked (the elements a person looks
for are there), never its pixels."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from omnigraph.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytest.importorskip("matplotlib")


def svg_text(path: Path) -> str:
    return " ".join(re.findall(r">([^<>]+)</text>", path.read_text(encoding="utf-8")))


def test_plan_viz_draws_devices_stages_and_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.svg"
    assert main(["plan", str(EXAMPLES / "qwen3_omni_moe.yaml"), "--target", "h100x8", "--json", "--viz", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)  # the JSON stays clean: the note goes to stderr
    text = svg_text(out)
    for row in report["stages"]:
        assert row["stage"] in text
    assert all(f"node0:gpu{i}" in text for i in range(8))
    assert "weights" in text and "kv" in text and "free" in text and "GiB per device" in text
    assert any(e["stream"] for e in report["edges"]) and {"from", "to"} <= set(report["edges"][0])
    assert main(["plan", str(EXAMPLES / "speak.yaml"), "--target", "cpu-local", "--viz", str(tmp_path / "p.gif")]) == 2
    # The same picture from `viz --plan`.
    assert main(["viz", str(EXAMPLES / "speak.yaml"), "--plan", "--target", "cpu-local", "-o", str(tmp_path / "v.svg")]) == 0
    assert "thinker" in svg_text(tmp_path / "v.svg") and "node0:cpu0" in svg_text(tmp_path / "v.svg")
    assert main(["viz", str(EXAMPLES / "speak.yaml"), "--plan"]) == 2


def test_simulate_timeline_as_picture_and_chrome_trace(tmp_path: Path) -> None:
    spec = str(EXAMPLES / "tiny" / "moe_tiny.yaml")
    assert main(["simulate", spec, "--target", "cpu-local", "--rate", "20", "-n", "30", "--timeline",
                 str(tmp_path / "t.svg")]) == 0
    text = svg_text(tmp_path / "t.svg")
    assert "thinker #0" in text and "vision_encoder #0" in text and "requests in the system" in text
    assert main(["simulate", spec, "--target", "cpu-local", "--burst", "-n", "8", "--timeline",
                 str(tmp_path / "t.json")]) == 0
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    steps = [e for e in events if e["ph"] == "X"]
    assert "thinker #0" in tracks and steps
    assert {r for e in steps for r in e["args"]["requests"]} == set(range(8))  # every request appears
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in steps)


def test_run_trace_records_the_measured_steps(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "run.json"
    assert main(["run", str(EXAMPLES / "tiny" / "vision_chat_tiny.yaml"), "-i", "prompt=What is this?",
                 "-i", f"image=@{EXAMPLES / 'inputs' / 'picture.png'}", "--trace", str(out), "-q"]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    names = {e["cat"] for e in events if e["ph"] == "X"}
    from omnigraph.api import compile_plan

    assert names == {s.name for s in compile_plan(EXAMPLES / "tiny" / "vision_chat_tiny.yaml").stages()}
    assert main(["run", str(EXAMPLES / "tiny" / "vision_chat_tiny.yaml"), "-i", "prompt=x",
                 "-i", f"image=@{EXAMPLES / 'inputs' / 'picture.png'}", "--trace", str(tmp_path / "run.svg"), "-q"]) == 0
    assert "requests in the system" in svg_text(tmp_path / "run.svg")


def test_spec_pictures_name_route_cases_and_output_ports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["viz", str(EXAMPLES / "tiny" / "bagel_route_tiny.yaml"), "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert "case understand → prompt" in dot and "case generate → prompt" in dot
    assert main(["viz", str(EXAMPLES / "tiny" / "refine_loop_tiny.yaml"), "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert "feedback → " in mermaid  # the custom stage's declared output, named on its edge
