"""torch.export of a loaded stage for a bundle: its entry point as a checked `.pt2` program.

The entry (runtime/entry_points.py: the module wrapped in the call its executor makes, with
example inputs) is exported with dynamic batch and sequence dims, and kept only if the
program gives bit-identical outputs to the module on the example and on differently shaped
variants (batch 1, other lengths); otherwise the stage ships as weights, with the reason.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch
from torch import nn

from omnigraph.passes.fusion.capture import program_signature
from omnigraph.runtime.entry_points import Args, Loaded, NoEntry, Stages, stage_entries


class ExportFailed(Exception):
    """This stage cannot be a .pt2 program; the message says why (it goes in the manifest)."""


@dataclass
class Exported:
    program: torch.export.ExportedProgram
    signature: list[str]  # each input as "name: dtype[dims]", "?" for a dynamic dim


def export_stage(executor: Loaded, stages: Stages) -> Exported:
    """The loaded stage as a checked torch.export program; ExportFailed says why not."""
    if executor.node.kind == "ar_llm":
        raise ExportFailed("ar_llm stages are not exported")
    try:
        [entry] = stage_entries(executor, stages)
    except NoEntry as exc:
        raise ExportFailed(str(exc)) from None
    noise = io.StringIO()  # a failed export prints its whole graph
    try:
        with torch.no_grad(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            program = torch.export.export(entry.module, entry.args, dynamic_shapes=entry.dynamic)
            _check_same(entry.module, program, [entry.args, *entry.checks])
    except ExportFailed:
        raise
    except Exception as exc:
        raise ExportFailed(f"torch.export failed: {_why(exc)}") from None
    return Exported(program, program_signature(program))


def _check_same(module: nn.Module, program: torch.export.ExportedProgram, all_args: list[Args]) -> None:
    exported = program.module()
    for args in all_args:
        shapes = ", ".join(str(list(a.shape)) for a in args)
        try:
            got = exported(*args)
        except Exception as exc:
            raise ExportFailed(f"the exported program does not run on inputs of shape {shapes}: {_why(exc)}") from None
        want = module(*args)
        if not torch.equal(got, want):
            diff = (got.float() - want.float()).abs().max().item() if got.shape == want.shape else float("nan")
            raise ExportFailed(f"the exported program's output differs from the module's on inputs of "
                               f"shape {shapes} (max |difference| {diff:.3g})")


def _why(exc: BaseException) -> str:
    """The first line of an export error, and where in the model it came from."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("Caused by:")), "")
    head = lines[0] if lines else ""
    return f"{type(exc).__name__}: {head[:200]}" + (f" ({where.removeprefix('Caused by:').strip(' ()')})" if where else "")
