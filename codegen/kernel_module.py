"""A fused stage entry as one Python file: its kernels, and its graph calling them.

The graph is the lowered torch.export graph with each fused group replaced by one call
to its kernel's launcher (`self.k3(...)`, `self` being the file's own module), rendered
by FX as plain Python: ATen calls for the ops left eager, launcher calls for the rest.
`SIGNATURE` says what `forward` takes — the program's weights, buffers and constants
by name, then the user inputs — so the runtime can call it with a live module's tensors
(omnigraph/runtime/fused_stage.py). Shape asserts from export are dropped: the
launchers read every size off their arguments.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch
from torch import fx
from torch.export.graph_signature import InputKind, OutputKind

from omnigraph import __version__
from omnigraph.passes.compilation import Compilation
from omnigraph.passes.fusion.emitter import Kernel

aten = torch.ops.aten
_DROPPED = (aten._assert_tensor_metadata.default, aten._assert_scalar.default,
            aten.sym_constrain_range_for_size.default)
_VIEWS = (aten.view.default, aten._unsafe_view.default)
_ALLOWED_GLOBALS = {"torch", "device", "inf", "nan", "math"}
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


@dataclass
class KernelFile:
    stage: str
    entry: str
    source: str
    kernels: list[Kernel]
    signature: dict[str, Any]
    constants: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.stage}.{self.entry}.py"


def fused_graph(program: torch.export.ExportedProgram, kernels: list[Kernel]) -> fx.Graph:
    """The program's graph with each kernel's nodes replaced by one call to it."""
    old = program.graph
    owner = {n: k for k in kernels for n in k.nodes}
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in old.nodes:
        if node.op == "placeholder":
            env[node] = new.placeholder(node.name)
            env[node].meta = dict(node.meta)

    def inputs_of(node: fx.Node) -> list[fx.Node]:
        kernel = owner.get(node)
        if kernel is None:
            return node.all_input_nodes
        return list(kernel.inputs) + [src for _, src, _ in kernel.size_inputs]

    def place(node: fx.Node) -> None:
        kernel = owner.get(node)
        if kernel is None:
            env[node] = new.node_copy(node, lambda n: env[n])
            if node.op == "call_function" and node.target in _VIEWS:
                # Kernels write contiguous outputs where eager ops may have kept an input's
                # strides, so a view that was valid in the captured graph may not be here.
                env[node].target = aten.reshape.default
            return
        sizes = tuple(new.call_function(aten.sym_size.int, (env[src], dim)) for _, src, dim in kernel.size_inputs)
        call = new.call_module(kernel.name, tuple(env[i] for i in kernel.inputs) + sizes)
        for member in kernel.nodes:
            env[member] = None  # type: ignore[assignment]  # inside the kernel: nothing outside reads it
        for slot, out in enumerate(kernel.outputs):
            env[out] = new.call_function(operator.getitem, (call, slot))
            env[out].meta = dict(out.meta)

    output = next(n for n in old.nodes if n.op == "output")
    stack = [output]
    while stack:  # depth-first: each node after what it reads (no recursion limit on deep graphs)
        node = stack[-1]
        if node in env:
            stack.pop()
            continue
        pending = [d for d in inputs_of(node) if d not in env]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        if node.op == "call_function" and node.target in _DROPPED:
            continue
        place(node)
    return new


def forward_source(program: torch.export.ExportedProgram, kernels: list[Kernel]) -> str | None:
    """`def forward(self, ...)` for the fused graph, or None when FX needs globals we do not
    provide (then the file carries kernels only)."""
    graph = fused_graph(program, kernels)
    code = graph.python_code("self")
    used = {g for g in code.globals if re.search(rf"\b{re.escape(g)}\b", code.src)}
    if used - _ALLOWED_GLOBALS:
        return None
    return code.src.strip("\n")


def signature(program: torch.export.ExportedProgram) -> dict[str, Any]:
    sig = program.graph_signature
    params = []
    state: dict[str, list[Any]] = {}  # weight or buffer -> [dtype, shape], checked when bound
    for spec in sig.input_specs:
        if spec.kind is InputKind.USER_INPUT:
            params.append(["input", spec.arg.name])
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            params.append(["state", spec.target])
            value = program.state_dict.get(spec.target)
            if value is None:
                value = program.constants.get(spec.target)  # a non-persistent buffer
            if isinstance(value, torch.Tensor):
                state[spec.target] = [str(value.dtype).removeprefix("torch."), list(value.shape)]
        elif spec.kind is InputKind.CONSTANT_TENSOR:
            params.append(["constant", spec.target])
        else:
            params.append(["unsupported", str(spec.kind)])
    outputs = [s.kind is OutputKind.USER_OUTPUT for s in sig.output_specs]
    return {"params": params, "outputs": len(outputs), "pure": all(outputs), "state": state}


def assemble(stage: str, entry: str, program: torch.export.ExportedProgram, kernels: list[Kernel],
             compute_ops: int) -> KernelFile:
    sig = signature(program)
    forward = forward_source(program, kernels) if sig["pure"] else None
    sig["forward"] = forward is not None
    constants = {}
    for kind, target in sig["params"]:
        if kind == "constant":
            value = program.constants.get(target)
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                constants[target] = value.detach().clone().contiguous()
            else:
                sig["forward"], forward = False, None  # a weightless capture has no constant values
    fused = sum(len(k.nodes) for k in kernels)
    source = _ENV.get_template("kernel_file.py.jinja").render(
        version=__version__, title=f"stage '{stage}', entry '{entry}'", kernels=kernels, fused=fused,
        total=compute_ops, signature=repr(sig), forward=forward)
    return KernelFile(stage, entry, source, kernels, sig, constants)


def write(files: list[KernelFile], directory: Path) -> list[Path]:
    """Each file, its constants (safetensors) and an index.json; returns the paths written."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    written, index = [], []
    for f in files:
        path = directory / f.filename
        path.write_text(f.source, encoding="utf-8")
        written.append(path)
        entry: dict[str, Any] = {"stage": f.stage, "entry": f.entry, "file": f.filename,
                                 "kernels": [{"name": k.name, "kind": k.kind, "ops": k.summary} for k in f.kernels],
                                 "forward": f.signature["forward"]}
        if f.constants:
            from safetensors.torch import save_file

            const = directory / f"{f.stage}.{f.entry}.constants.safetensors"
            save_file(f.constants, str(const))
            written.append(const)
            entry["constants"] = const.name
        index.append(entry)
    (directory / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    written.append(directory / "index.json")
    return written


def kernel_files(comp: Compilation) -> tuple[list[KernelFile], list[str]]:
    """Every fused stage entry of a compilation (after fuse-ops) as a kernel file, and a
    line per stage or entry that has none, saying why."""
    from omnigraph.dialect.ops import StageOp

    files, notes = [], []
    for op in comp.module.walk():
        if not isinstance(op, StageOp):
            continue
        fusion = comp.artifacts.fusions.get(op.label)
        if fusion is None:
            notes.append(f"stage '{op.label}': not captured (run capture-stages and fuse-ops)")
            continue
        for entry, fused in fusion.entries.items():
            files.append(assemble(op.label, entry, fused.program, fused.kernels, fused.compute_ops))
        notes += [f"stage '{op.label}'{'' if name == 'stage' else f' entry {name!r}'}: {why}"
                  for name, why in fusion.notes.items()]
    return files, notes


def attach_kernels(plan: Any, files: list[KernelFile], directory: Path) -> None:
    """Write the kernel files into `directory` and point the plan's stages at them (entries
    whose graph has a runnable `forward` and at least one kernel)."""
    from omnigraph.runtime.plan import StageKernels

    write(files, directory)
    kernels: dict[str, StageKernels] = {}
    for f in files:
        if not f.signature["forward"] or not f.kernels:
            continue
        entry = kernels.setdefault(f.stage, StageKernels(files={}))
        entry.files[f.entry] = str((directory / f.filename).resolve())
        if f.constants:
            entry.constants[f.entry] = str((directory / f"{f.stage}.{f.entry}.constants.safetensors").resolve())
    for node in plan.stages():
        node.kernels = kernels.get(node.name)
