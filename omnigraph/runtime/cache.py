"""omnigraph's on-disk cache: where it lives, what it holds, how it is keyed and cleared.

    $OMNIGRAPH_CACHE (default ~/.cache/omnigraph)
      gguf/<sha256>/     a GGUF model dequantized once into a safetensors checkpoint (the
                         slow step of loading one); about 4x the GGUF's size in bf16, 8x in f32
      profiles/<key>/    architecture profiles counted on meta (parameters, layers, KV bytes),
                         and each library's class table (which names are model classes), so a
                         second `plan` imports neither torch nor transformers; kilobytes each
      hashes.json        content hashes of files already hashed, by path, size and mtime

Entries are keyed by the full content hash of their source file, so a different file that
happens to share a name, a size or its first megabytes never loads another's weights.
Hashing a file takes a second per GB; it is done once and remembered until the file
changes (a new size or mtime hashes it again). `omnigraph cache ls|clear` lists and empties
it; clear removes only the folders listed above, never anything else under the root.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("gguf", "profiles")  # the folders omnigraph writes (and `clear` may remove)
_HASHES = "hashes.json"
_SOURCE = "source.json"  # in each entry: what it was made from
_lock = threading.Lock()  # hashes.json is read-modify-written by one thread at a time


def cache_root() -> Path:
    return Path(os.environ.get("OMNIGRAPH_CACHE") or Path.home() / ".cache" / "omnigraph")


def content_hash(path: Path) -> str:
    """The sha256 of the file's bytes, remembered by (real path, size, mtime)."""
    path = path.resolve()
    info = path.stat()
    key = f"{path}|{info.st_size}|{info.st_mtime_ns}"
    store = cache_root() / _HASHES
    with _lock:
        known = read_json(store)
        if isinstance(known.get(key), str):
            return known[key]
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        value = digest.hexdigest()
        known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}  # the file's older versions
        known[key] = value
        try:
            write_json(store, known)
        except OSError:  # a read-only cache: hash again next time
            pass
        return value


def entry_dir(section: str, key: str) -> Path:
    assert section in SECTIONS
    return cache_root() / section / key


def record_source(entry: Path, source: Path, **facts: object) -> None:
    """Write down what an entry was made from (shown by `omnigraph cache ls`)."""
    write_json(entry / _SOURCE, {"source": str(source), **facts})


@dataclass(frozen=True)
class Entry:
    section: str
    path: Path
    bytes: int
    source: str


def entries() -> list[Entry]:
    out = []
    for section in SECTIONS:
        folder = cache_root() / section
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and ".tmp-" not in p.name):
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
            source = read_json(path / _SOURCE).get("source", "")
            out.append(Entry(section, path, size, str(source)))
    return out


def clear() -> int:
    """Remove every cached entry and the hash memo; returns the bytes freed."""
    freed = sum(e.bytes for e in entries())
    for section in SECTIONS:
        shutil.rmtree(cache_root() / section, ignore_errors=True)
    (cache_root() / _HASHES).unlink(missing_ok=True)
    return freed


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)
