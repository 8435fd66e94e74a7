"""The `omnigraph` command line, end to end (in process, through main())."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from omnigraph import __version__
from omnigraph.cli import main
from omnigraph.frontend import load_spec

from conftest import example_specs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_emits_typed_ir(capsys, speak_yaml: Path) -> None:
    code, out, err = run(capsys, "compile", str(speak_yaml))
    assert code == 0, err
    assert 'omni.pipeline @speak {' in out
    assert "!omni.stream<text, utf8, [?]>" in out  # infer-types ran by default


def test_compile_target_is_recorded(capsys, speak_yaml: Path) -> None:
    code, out, _ = run(capsys, "compile", str(speak_yaml), "--target", "cpu-local")
    assert code == 0 and 'omni.pipeline @speak target "cpu-local" {' in out


def test_unknown_target_is_a_user_error(capsys, speak_yaml: Path) -> None:
    code, _, err = run(capsys, "compile", str(speak_yaml), "--target", "cpu-locl")
    assert code == 2 and "unknown target 'cpu-locl'" in err and "did you mean 'cpu-local'" in err


def test_emit_spec_round_trips(capsys, speak_yaml: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "again.yaml"
    code, _, _ = run(capsys, "compile", str(speak_yaml), "--emit", "spec", "-o", str(out_file))
    assert code == 0
    assert load_spec(out_file).spec == load_spec(speak_yaml).spec


def test_print_ir_after_all(capsys, speak_yaml: Path) -> None:
    code, out, err = run(capsys, "compile", str(speak_yaml), "--print-ir-after-all")
    assert code == 0
    dumps = [line for line in err.splitlines() if line.startswith("// -----// IR Dump After")]
    assert dumps == ["// -----// IR Dump After verify //----- //",
                     "// -----// IR Dump After infer-types //----- //"]


def test_pass_pipeline_selects_passes(capsys, speak_yaml: Path) -> None:
    code, out, _ = run(capsys, "compile", str(speak_yaml), "--pass-pipeline=verify")
    assert code == 0 and "!omni.tensor<text>" in out and "utf8" not in out
    code, _, err = run(capsys, "compile", str(speak_yaml), "--pass-pipeline=verify,fuse-everything")
    assert code == 2 and "fuse-everything" in err


def test_generic_form(capsys, speak_yaml: Path) -> None:
    code, out, _ = run(capsys, "compile", str(speak_yaml), "--generic")
    assert code == 0 and '"omni.stage"' in out


@pytest.mark.parametrize("fmt, marker", [("mermaid", "flowchart LR"), ("dot", 'digraph "speak"')])
def test_viz(capsys, speak_yaml: Path, fmt: str, marker: str) -> None:
    code, out, _ = run(capsys, "viz", str(speak_yaml), "--format", fmt)
    assert code == 0 and marker in out
    assert ("-.->" if fmt == "mermaid" else "style=dashed") in out  # the stream edge


@pytest.mark.parametrize("path", example_specs(), ids=lambda p: p.name)
def test_every_example_checks_and_draws(capsys, path: Path) -> None:
    assert run(capsys, "check", str(path))[0] == 0
    assert run(capsys, "viz", str(path), "--format", "dot")[0] == 0


def test_schema_validates_every_yaml_example(capsys) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    examples = [p for p in example_specs() if p.suffix == ".yaml"]
    assert examples
    for path in examples:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pipeline": "x", "stages": {}, "outputs": {}, "colour": 1}, schema)


def test_kinds_and_version(capsys) -> None:
    code, out, _ = run(capsys, "kinds")
    assert code == 0 and "ar_llm" in out and "diffusion" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_missing_file_and_no_command(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 2
    assert run(capsys)[0] == 2


def test_console_script_runs_as_module(speak_yaml: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "omnigraph", "check", str(speak_yaml)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_emit_plan(capsys, speak_yaml: Path) -> None:
    from omnigraph.runtime.plan import PLAN_VERSION, RuntimePlan

    code, out, _ = run(capsys, "compile", str(speak_yaml), "--emit", "plan", "--target", "cpu-local")
    assert code == 0
    plan = RuntimePlan.from_json(out)
    assert plan.version == PLAN_VERSION and plan.target == "cpu-local"
    assert RuntimePlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="not supported"):
        RuntimePlan.from_json(out.replace(f'"version": {PLAN_VERSION}', '"version": 99', 1))
    talker = next(s for s in plan.stages() if s.name == "talker")
    assert talker.inputs[0].stream and talker.instances[0].devices == ["node0:cpu0"]
    assert plan.output_types["speech"].stream  # audio reaches the caller as it is made
