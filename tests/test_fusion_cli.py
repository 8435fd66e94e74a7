"""`omnigraph compile --emit kernels` and `--dump-kernels DIR`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnigraph.cli import main


SPEC = Path(__file__).parent / "ir" / "fuse_siglip_encoder.yaml"


def test_dump_kernels_writes_a_file_per_entry_and_an_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kernels"
    assert main(["compile", str(SPEC), "--dump-kernels", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [(e["stage"], e["entry"], e["file"], e["forward"]) for e in index] == [
        ("vision", "forward", "vision.forward.py", True)]
    source = (out / "vision.forward.py").read_text()
    assert source.count("@triton.jit") == len(index[0]["kernels"]) > 0
    compile(source, "vision.forward.py", "exec")  # plain Python
    assert "wrote" in capsys.readouterr().err


def test_emit_kernels_prints_them(capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", str(SPEC), "--emit", "kernels"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# ===== vision.forward.py:") and "@triton.jit" in text


def test_an_unwritable_kernel_dir_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["compile", str(SPEC), "--dump-kernels", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write kernels" in err and "Traceback" not in err
