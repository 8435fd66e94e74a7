"""Writing into a user's folders without ever destroying what omnigraph did not write.

Two rules, shared by every command that writes files:
- a folder or file omnigraph builds (a bundle, a kernel dump) is built in a private sibling
  and moved into place whole; an existing one is replaced only when it is something
  omnigraph wrote (`owned`) and the user said `--force`, and never anything else;
- a file named after something in a pipeline (an output, a stage) is a plain name inside
  the folder it is written to, checked before anything is written.

Imports nothing from the compiler: `run` writes outputs with it too.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omnigraph.errors import OmnigraphError
from omnigraph.names import is_name


def child(directory: Path, name: str, suffix: str = "") -> Path:
    """`directory/name+suffix`, refusing a name that is not a plain pipeline name (it could
    climb out of `directory`: `../x`, `/etc/x`)."""
    if not is_name(name):
        raise OmnigraphError(f"refusing to write '{name!s:.80}' as a file: not a plain name "
                             f"(letters, digits and _)")
    path = directory / f"{name}{suffix}"
    if path.resolve().parent != directory.resolve():
        raise OmnigraphError(f"refusing to write {path}: it is not inside {directory}")
    return path


@contextmanager
def staging_beside(out: Path, what: str) -> Iterator[Path]:
    """A private empty folder next to `out` (same file system, so the final move is a rename),
    removed afterwards whatever happens."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmnigraphError(f"cannot write {what} to {out}: cannot create {parent}: {exc.strerror}") from None
    tmp = tempfile.mkdtemp(prefix=".omnigraph-", dir=parent)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_unowned(out: Path, owned: Callable[[Path], bool], what: str, force: bool) -> None:
    """Fail before any work when `out` holds something that may not be replaced."""
    if out.is_symlink():
        raise OmnigraphError(f"{out} is a symbolic link; nothing was written",
                             hint=f"name a new path for the {what}")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not owned(out):
        kind = "a directory" if out.is_dir() else "a file"
        raise OmnigraphError(f"{out} is {kind} that is not an omnigraph {what}; nothing was written",
                             hint=f"name a new or empty directory for the {what}" if out.is_dir()
                             else f"name a new path for the {what}")
    if not force:
        raise OmnigraphError(f"{out} already holds an omnigraph {what}; nothing was written",
                             hint="pass --force to replace it, or name a new path")


def put_in_place(built: Path, out: Path, owned: Callable[[Path], bool], what: str, force: bool) -> None:
    """Move the finished `built` (a file or folder) to `out`, replacing only an owned one."""
    refuse_unowned(out, owned, what, force)  # again: something may have appeared meanwhile
    out = Path(os.path.abspath(out))
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(built, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=".omnigraph-old-", dir=out.parent)) / out.name
    os.replace(out, aside)  # the old one stays whole until the new one is in place
    try:
        os.replace(built, out)
    except OSError:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside.parent, ignore_errors=True)
