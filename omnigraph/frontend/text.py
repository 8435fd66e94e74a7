"""Reading a spec file as text: size limit, UTF-8 check, located errors."""
from __future__ import annotations

from pathlib import Path

from omnigraph.errors import Span, SpecError
from omnigraph.frontend.limits import MAX_SPEC_BYTES


def read_spec_text(path: str | Path) -> str:
    """The file's text, or a SpecError naming why it cannot be a spec."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SpecError(f"no such file: {name}") from None
    except OSError as exc:
        raise SpecError(f"cannot read {name}: {exc.strerror}") from None
    if path.is_dir():
        raise SpecError(f"{name} is a directory, not a spec file")
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"spec file is {size / 2**20:.1f} MiB; the limit is {MAX_SPEC_BYTES // 2**20} MiB",
            Span(name, 1, 1),
        )
    data = path.read_bytes()
    return decode_spec_bytes(data, name)


def decode_spec_bytes(data: bytes, name: str) -> str:
    shown = data.decode("utf-8", "replace")  # for the caret line of an error
    if b"\x00" in data:
        line, col = _line_col(data, data.index(b"\x00"))
        raise SpecError("binary data (NUL byte) in a spec file", Span(name, line, col), source=shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise SpecError(
            f"spec files must be UTF-8; invalid byte 0x{data[exc.start]:02x}", Span(name, line, col),
            source=shown,
        ) from None
    return text.removeprefix("\ufeff")


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of a byte offset, in the lines and characters the caret line shows."""
    lines = (data[:offset].decode("utf-8", "replace") + "x").splitlines()  # "x": keep a last empty line
    return len(lines), len(lines[-1])
