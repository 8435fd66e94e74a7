"""The command line's own edges: every user mistake is exit 2 with one located line, never a
traceback or "internal error" (exit 3)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnigraph.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEAK = str(EXAMPLES / "speak.yaml")


def _fails_cleanly(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert needle in err, err
    return err


@pytest.mark.parametrize("pipeline", ["builtin.module(verify)", "nosuch", "verify{x=1}", "plan-parallel{mix"])
def test_bad_pass_pipelines(capsys: pytest.CaptureFixture[str], pipeline: str) -> None:
    _fails_cleanly(capsys, ["compile", SPEAK, f"--pass-pipeline={pipeline}"], "bad --pass-pipeline")


@pytest.mark.parametrize("pass_name", ["plan-parallel", "place-devices", "plan-memory"])
def test_a_planning_pass_without_a_target_says_so(capsys: pytest.CaptureFixture[str], pass_name: str) -> None:
    _fails_cleanly(capsys, ["compile", SPEAK, f"--pass-pipeline=verify,{pass_name}"], "needs a target")


@pytest.mark.parametrize("value", ["many", "nan", "inf", "1e999", ""])
def test_a_scalar_input_that_is_not_a_number(capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str) -> None:
    pytest.importorskip("torch")
    spec = tmp_path / "s.og"
    spec.write_text('pipeline s(x: scalar, p: text) -> (out: text) {\n'
                    '  a = custom(p) { model: "py:runtime_stages:upper", outputs: {text: text} }\n'
                    '  return out = a.text\n}\n')
    _fails_cleanly(capsys, ["run", str(spec), "-i", f"x={value}", "-i", "p=hi"], "--input x=")


def test_json_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """`omnigraph kinds --json | head -1`-style use: the reader leaves early."""
    script = ("import sys\nfrom omnigraph.cli import main\n"
              "sys.exit(main(['schema']))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(16)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_ir_with_a_target_is_planned_for_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    ir = tmp_path / "speak.mlir"
    assert main(["compile", SPEAK, "-o", str(ir)]) == 0
    capsys.readouterr()
    assert main(["plan", str(ir), "--target", "h100x1", "--json"]) == 0
    assert '"thinker"' in capsys.readouterr().out
    planned = tmp_path / "planned.mlir"
    assert main(["compile", SPEAK, "--target", "h100x1", "-o", str(planned)]) == 0
    capsys.readouterr()
    _fails_cleanly(capsys, ["plan", str(planned), "--target", "h100x8"], "is for target 'h100x1'")
