"""Runs the FileCheck-style IR tests in tests/ir/: each file's `RUN:` line is a shell
pipeline (`%s` = the file); `not CMD` inverts CMD's exit status, as in LLVM's lit."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

IR_DIR = Path(__file__).parent / "ir"
CASES = sorted(p for p in IR_DIR.iterdir() if p.suffix in (".mlir", ".og", ".yaml"))


def run_line(path: Path) -> str:
    match = re.search(r"RUN:\s*(.+)", path.read_text())
    assert match, f"{path} has no RUN: line"
    return match.group(1).replace("%s", str(path))


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_filecheck(path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    script = 'set -o pipefail; not() { ! "$@"; }; ' + run_line(path)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"{run_line(path)}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
