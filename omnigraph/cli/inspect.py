"""`omnigraph inspect BUNDLE`: a bundle's manifest, stages, plan summary and sizes.

The bundle is checked as `omnigraph run` checks it (every file against its sha256),
so inspecting is also how to verify one; what would stop it from running here (code
that needs --trust-code, .pt2 programs from another torch) is reported, not refused.
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from omnigraph.runtime.bundle import Bundle, code_stages, kernel_stages, open_bundle, torch_minor
from omnigraph.runtime.plan import LoopNode, RouteNode


def inspect_command(path: str, *, as_json: bool = False) -> int:
    with open_bundle(path) as bundle:
        if as_json:
            sys.stdout.write(bundle.manifest.model_dump_json(indent=2) + "\n")
            return 0
        from omnigraph.cli.common import console as make_console

        console = make_console()
        _header(console, bundle)
        console.print(_stage_table(bundle))
        _reasons(console, bundle)
        _plan_summary(console, bundle)
        _kernels(console, bundle)
        console.print(_file_table(bundle))
        _warnings(console, bundle)
    return 0


def _header(console: Console, bundle: Bundle) -> None:
    m, b = bundle.manifest, bundle.manifest.built_with
    console.print(f"[bold]{bundle.source}[/]: pipeline [bold]{m.pipeline}[/], bundle format {m.format_version}"
                  + (f", target {m.target}" if m.target else ""))
    libraries = ", ".join(f"{k} {v}" for k, v in sorted(b.libraries.items()))
    console.print(f"built with omnigraph {b.omnigraph}, torch {b.torch}, Python {b.python}"
                  + (f" on {b.platform}" if b.platform else "") + (f"; {libraries}" if libraries else ""))
    console.print(f"[green]verified[/]: {len(m.files)} files match their sha256 ({_size(m.total_size())} in all)")
    console.print(f"requires: {' '.join(m.requires)}")


def _stage_table(bundle: Bundle) -> Table:
    m = bundle.manifest
    nodes = {s.name: s for s in bundle.plan.stages()}
    table = Table(title="stages")
    for col in ("stage", "kind", "form", "size", "program inputs", "devices"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for s in m.stages:
        size = sum(m.files[f].size for f in s.files)
        devices = ", ".join(d for i in nodes[s.name].instances for d in i.devices)
        table.add_row(s.name, s.kind, s.form + (" (random weights)" if s.random_weights else ""),
                      _size(size) if s.files else "-",
                      "\n".join(s.signature) or "-", devices)
    return table


def _reasons(console: Console, bundle: Bundle) -> None:
    console.print("why each form:")
    for s in bundle.manifest.stages:
        console.print(f"  [bold]{s.name}[/] ({s.form}): {s.reason}")


def _plan_summary(console: Console, bundle: Bundle) -> None:
    plan = bundle.plan
    counts = Counter(type(n).__name__ for n in plan.nodes)
    inputs = ", ".join(f"{n}: {t.modality}" for n, t in plan.inputs.items())
    outputs = ", ".join(f"{n}: {t.modality}{' (stream)' if t.stream else ''}" for n, t in plan.output_types.items())
    console.print(f"plan v{plan.version}: inputs {inputs}; outputs {outputs}; {len(plan.stages())} stage(s), "
                  f"{counts[RouteNode.__name__]} route(s), {counts[LoopNode.__name__]} loop(s)")


def _kernels(console: Console, bundle: Bundle) -> None:
    if not bundle.manifest.kernels:
        return
    console.print(f"kernels ({len(bundle.manifest.kernels)} files, run only with --trust-code):")
    for node in bundle.plan.stages():
        if node.kernels is not None:
            for entry, rel in node.kernels.files.items():
                const = node.kernels.constants.get(entry)
                console.print(f"  [bold]{node.name}[/].{entry}: {rel}" + (f" (constants: {const})" if const else ""))


def _file_table(bundle: Bundle) -> Table:
    table = Table(title="files")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for rel, entry in sorted(bundle.manifest.files.items(), key=lambda kv: -kv[1].size):
        table.add_row(rel, _size(entry.size), entry.sha256[:16] + "…")
    return table


def _warnings(console: Console, bundle: Bundle) -> None:
    code = code_stages(bundle.plan)
    if code:
        console.print(f"[yellow]runs Python code[/]: {'; '.join(code)}"
                      + (f" (source: {', '.join(bundle.manifest.code)})" if bundle.manifest.code else "")
                      + "; `omnigraph run` needs --trust-code")
    fused = kernel_stages(bundle.plan)
    if fused:
        console.print(f"[yellow]carries Triton kernels[/] (Python code) for {', '.join(fused)}: they run only with "
                      f"--trust-code; without it those stages run unfused")
    if any(s.form == "pt2" for s in bundle.manifest.stages):
        import torch

        built = torch_minor(bundle.manifest.built_with.torch)
        ok = built == torch_minor(torch.__version__)
        console.print(f"its .pt2 programs need torch {built}.x; this is torch {torch.__version__}: "
                      + ("[green]ok[/]" if ok else "[red]they will not load here[/]"))


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a bundle: manifest, stages, plan, sizes (and check its files)")
    p.add_argument("bundle", help="a bundle directory or .ogb file")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd)



def _cmd(args: Any) -> int:
    return inspect_command(args.bundle, as_json=args.json)
