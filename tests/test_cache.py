"""The on-disk cache: keyed by full content hashes (remembered by path, size and mtime), listed
and cleared by `omnigraph cache`, and never clearing anything it did not write."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omnigraph.cli import main
from omnigraph.runtime import cache


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMNIGRAPH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_files_that_share_their_head_and_size_get_different_keys(root: Path, tmp_path: Path) -> None:
    head = b"GGUF" + bytes(2 << 20)  # 2 MiB alike: what a header-only key would see
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(head + b"weights of model A")
    b.write_bytes(head + b"weights of model B")
    assert a.stat().st_size == b.stat().st_size
    pytest.importorskip("torch")
    from omnigraph.runtime.executors.llm_loading import gguf_cache_dir

    assert gguf_cache_dir(a) != gguf_cache_dir(b)


def test_a_hash_is_remembered_until_the_file_changes(root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(b"one")
    first = cache.content_hash(f)
    memo = json.loads((root / "hashes.json").read_text())
    assert list(memo.values()) == [first]
    opened: list[Path] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    assert cache.content_hash(f) == first and f.resolve() not in opened  # not read again
    f.write_bytes(b"two")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    opened.clear()
    second = cache.content_hash(f)
    assert second != first and opened.count(f.resolve()) == 1
    assert list(json.loads((root / "hashes.json").read_text()).values()) == [second]  # the old one is dropped


def test_cache_ls_and_clear(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = cache.entry_dir("gguf", "ab" * 32)
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(bytes(1000))
    cache.record_source(entry, Path("/models/m.gguf"), bytes=123)
    (root / "notes.txt").write_text("the user's own file, in a folder they pointed OMNIGRAPH_CACHE at")
    assert main(["cache", "ls", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["root"] == str(root)
    [listed] = doc["entries"]
    assert listed["section"] == "gguf" and listed["source"] == "/models/m.gguf" and listed["bytes"] >= 1000
    assert main(["cache", "ls"]) == 0
    assert "/models/m.gguf" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "freed" in capsys.readouterr().err
    assert not (root / "gguf").exists() and (root / "notes.txt").exists()
    assert cache.entries() == []
