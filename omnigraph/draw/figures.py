"""What every picture shares: matplotlib, imported on demand with a clear error, and saving
by the file's suffix (.svg, .png, .pdf)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigraph.errors import OmnigraphError

FORMATS = (".svg", ".png", ".pdf")
# Requests get colours from a qualitative palette, cycling (a picture shows tens of them).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise OmnigraphError("drawing needs matplotlib", hint="pip install 'omnigraph[viz]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG: searchable, selectable
    import matplotlib.pyplot as plt

    return plt


def check_output(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise OmnigraphError(f"{out}: a picture is written as {', '.join(FORMATS)} (by the file's suffix)")
    return out


def save(fig: Any, path: str | Path) -> Path:
    out = check_output(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", dpi=150 if out.suffix.lower() == ".png" else None)
    pyplot().close(fig)
    return out
