"""`capture-stages`: each stage's entry points as torch.export FX graphs.

Entry points are what the runtime calls, in the executor's own convention (the same
wrappers a bundle exports): an encoder's or projector's or MoE block's forward, a
decoder's decode, one denoising step (latents, timesteps, conditioning), and an LLM's
prefill and decode step (the decode step with its KV cache as explicit tensors).
Batch and sequence dims are dynamic (`Dim.AUTO`: dynamic where the module allows).

Modules are built the way their executor builds them: tiny configs for real, with
seeded weights; a module over `META_BYTES` on the `meta` device, so a 7B config
captures without allocating its weights. Stages with `params.fusion: false`, file
models other than a GGUF LLM (which loads as a transformers module) and kinds without
a torch module get a note instead.

The programs go in a side table keyed by the stage's kind, model and params (the IR
holds a summary in the stage's `graphs` attribute); fuse-ops reads them from there.
Not in the default pipeline: `--emit kernels` and `--dump-kernels` add it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xdsl.context import Context
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp
from xdsl.passes import ModulePass

from omnigraph.dialect.checks import params_of
from omnigraph.dialect.ops import StageOp
from omnigraph.dialect.values import to_attr

if TYPE_CHECKING:  # torch is imported only when the pass runs: compiling without it stays fast
    import torch

    from omnigraph.passes.capture_entries import Entry

META_BYTES = 512 << 20  # build bigger modules on `meta`: capture needs shapes, not weights
FILE_SCHEMES = ("gguf", "onnx")


@dataclass
class StageCapture:
    stage: str
    kind: str
    programs: dict[str, torch.export.ExportedProgram] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # entry (or "stage") -> why not captured
    meta: bool = False  # built on the meta device


CAPTURES: dict[str, StageCapture] = {}  # side table: stage_key -> capture


def stage_key(kind: str, model: str | None, params: dict[str, Any]) -> str:
    text = json.dumps([kind, model, params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def key_of(op: StageOp) -> str:
    return stage_key(op.kind.data, op.model.data if op.model else None, params_of(op))


# -- capture ------------------------------------------------------------------------------
def capture_stage(op: StageOp, plan: Any) -> StageCapture:
    """The stage's entry points, exported (cached by kind, model and params)."""
    key = key_of(op)
    if key not in CAPTURES:
        CAPTURES[key] = _capture(op, plan)
    return CAPTURES[key]


def _capture(op: StageOp, plan: Any) -> StageCapture:
    from omnigraph.passes.capture_entries import ENTRIES

    kind, model = op.kind.data, op.model.data if op.model else None
    params = params_of(op)
    capture = StageCapture(op.label, kind)
    if params.get("fusion") is False:
        capture.notes["stage"] = "fusion: false"
        return capture
    if kind not in ENTRIES:
        capture.notes["stage"] = f"{kind} stages have no torch entry point to capture"
        return capture
    scheme = (model or "").partition(":")[0]
    if scheme in FILE_SCHEMES and not (scheme == "gguf" and kind == "ar_llm"):  # a GGUF LLM loads as a torch module
        capture.notes["stage"] = f"a {scheme} file: its graph is not a torch module's"
        return capture
    node = next((s for s in plan.stages() if s.name == op.label), None)
    if node is None:
        capture.notes["stage"] = "not in the runtime plan"
        return capture
    capture.meta = _too_big(kind, model, params)
    try:
        executor = _load(node, capture.meta)
        entries = ENTRIES[kind](executor, plan)
    except Exception as exc:  # a module that does not build here: the stage is not fused
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


def _load(node: Any, meta: bool) -> Any:
    import torch

    from omnigraph.runtime.executor import ExecContext, executor_class

    executor = executor_class(node.kind)(node, ExecContext(device="meta" if meta else "cpu"))
    with (torch.device("meta") if meta else contextlib.nullcontext()):
        executor.load()
    return executor


def _too_big(kind: str, model: str | None, params: dict[str, Any]) -> bool:
    from omnigraph.passes.planner.arch_profile import profile_stage

    try:
        return profile_stage(kind, model, params).param_bytes > META_BYTES
    except Exception:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def graph_summary(capture: StageCapture) -> dict[str, Any]:
    """The `graphs` attribute: per entry, its op count and input signature; or why not."""
    out: dict[str, Any] = {}
    for name, program in capture.programs.items():
        from omnigraph.codegen.stage_export import _signature

        ops = sum(1 for n in program.graph.nodes if n.op == "call_function")
        out[name] = {"ops": ops, "inputs": _signature(program)}
    for name, why in capture.notes.items():
        out[name] = {"note": why}
    return out


@dataclass(frozen=True)
class CaptureStagesPass(ModulePass):
    name = "capture-stages"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        from omnigraph.codegen.plan_emitter import emit_plan

        plan = emit_plan(op)
        for stage in op.walk():
            if isinstance(stage, StageOp):
                summary = graph_summary(capture_stage(stage, plan))
                if summary:
                    stage.properties["graphs"] = DictionaryAttr({k: to_attr(v) for k, v in summary.items()})
