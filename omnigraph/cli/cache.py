"""`omnigraph cache ls|clear`: the on-disk cache (omnigraph/runtime/cache.py)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from omnigraph.cli.common import console


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="list or clear the on-disk cache (dequantized GGUF models, profiles)")
    p.add_argument("action", choices=["ls", "clear"])
    p.add_argument("--json", action="store_true", help="ls: print JSON")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    from omnigraph.runtime import cache

    if args.action == "clear":
        freed = cache.clear()
        console(stderr=True).print(f"cleared {cache.cache_root()} ({freed / 1e6:.1f} MB freed)")
        return 0
    found = cache.entries()
    if args.json:
        sys.stdout.write(json.dumps({"root": str(cache.cache_root()), "entries": [
            {"section": e.section, "path": str(e.path), "bytes": e.bytes, "source": e.source} for e in found]},
            indent=2) + "\n")
        return 0
    from rich.table import Table

    table = Table(title=f"omnigraph cache: {cache.cache_root()}")
    for col in ("section", "entry", "size", "made from"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for e in found:
        table.add_row(e.section, e.path.name[:16], f"{e.bytes / 1e6:.1f} MB", e.source or "-")
    out = console()
    out.print(table)
    out.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {sum(e.bytes for e in found) / 1e6:.1f} MB")
    return 0


