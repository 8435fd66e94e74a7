"""Capturing a stage: its entry points (runtime/entry_points.py) exported as FX graphs.

Modules are loaded as their executor loads them: tiny configs for real, with seeded
weights; a module over `META_BYTES` on the `meta` device, so a 7B config captures without
allocating its weights. Stages with `params.fusion: false`, file models other than a GGUF
LLM (which loads as a transformers module) and kinds without a torch module get a note
instead. Batch and sequence dims are dynamic (`Dim.AUTO`: dynamic where the module allows).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.runtime.plan import StageNode

if TYPE_CHECKING:  # torch is imported only when a stage is captured: compiling without it stays fast
    import torch

    from omnigraph.runtime.entry_points import Entry

META_BYTES = 512 << 20  # build bigger modules on `meta`: capture needs shapes, not weights
FILE_SCHEMES = ("gguf", "onnx")


@dataclass
class StageCapture:
    stage: str
    kind: str
    programs: dict[str, torch.export.ExportedProgram] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # entry (or "stage") -> why not captured
    meta: bool = False  # built on the meta device


def capture_stage(node: StageNode, stages: Mapping[str, StageNode]) -> StageCapture:
    """The stage's entry points, exported; or notes saying why not."""
    from omnigraph.runtime.entry_points import ENTRIES, NoEntry, load_stage, stage_entries

    capture = StageCapture(node.name, node.kind)
    if node.params.get("fusion") is False:
        capture.notes["stage"] = "fusion: false"
        return capture
    if node.kind not in ENTRIES:
        capture.notes["stage"] = f"{node.kind} stages have no torch entry point to capture"
        return capture
    scheme = (node.model or "").partition(":")[0]
    if scheme in FILE_SCHEMES and not (scheme == "gguf" and node.kind == "ar_llm"):  # a GGUF LLM loads as torch
        capture.notes["stage"] = f"a {scheme} file: its graph is not a torch module's"
        return capture
    capture.meta = _too_big(node)
    try:
        entries = stage_entries(load_stage(node, meta=capture.meta), stages)
    except (NoEntry, Exception) as exc:  # a module that does not build here: the stage is not fused
        capture.notes["stage"] = f"cannot build the module: {_first_line(exc)}"
        return capture
    for entry in entries:
        try:
            capture.programs[entry.name] = export_entry(entry, capture.meta)
        except Exception as exc:
            capture.notes[entry.name] = f"torch.export failed: {_first_line(exc)}"
    return capture


def export_entry(entry: Entry, meta: bool = False) -> torch.export.ExportedProgram:
    import torch

    args = entry.args
    if meta:
        args = torch.utils._pytree.tree_map(lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a, args)
    noise = io.StringIO()  # a failed export prints the whole graph
    with torch.no_grad(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
        return torch.export.export(entry.module, args, dynamic_shapes=entry.dynamic)


def _too_big(node: StageNode) -> bool:
    try:
        return profile_stage(node.kind, node.model, node.params).param_bytes > META_BYTES
    except Exception:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def program_signature(program: torch.export.ExportedProgram) -> list[str]:
    """Each user input of a program as "name: dtype[dims]", "?" for a dynamic dim."""
    import torch

    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    described = []
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        dims = ", ".join(str(d) if isinstance(d, int) else "?" for d in value.shape)
        described.append(f"{name}: {str(value.dtype).removeprefix('torch.')}[{dims}]")
    return described


def graph_summary(capture: StageCapture) -> dict[str, Any]:
    """The `graphs` attribute: per entry, its op count and input signature; or why not."""
    out: dict[str, Any] = {}
    for name, program in capture.programs.items():
        ops = sum(1 for n in program.graph.nodes if n.op == "call_function")
        out[name] = {"ops": ops, "inputs": program_signature(program)}
    for name, why in capture.notes.items():
        out[name] = {"note": why}
    return out
