"""Running a stage entry through its fused graph: the generated kernel file, loaded here.

A kernel file (written by the compiler's codegen, see codegen/kernel_module.py) is plain
Python + triton: Triton kernels, their launchers, and `forward(self, *params, *inputs)`,
the stage's graph calling them, with `SIGNATURE` naming each param (a weight or buffer
of the live module by its qualified name, a constant, or a user input). Nothing here
imports the compiler.

Where kernels run: on a GPU, always; on a CPU only under Triton's interpreter (slow: for
checking kernels, not for speed), asked for with OMNIGRAPH_TRITON_INTERPRET=1 or
`interpret=True`. Otherwise the stage runs its module unfused, exactly as without
kernels. A stage with `params.fusion: false` never runs kernels (a debugging switch).
"""
from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

INTERPRET_ENV = "OMNIGRAPH_TRITON_INTERPRET"


def interpreter_requested() -> bool:
    return os.environ.get(INTERPRET_ENV) == "1"


def kernels_apply(device: str | torch.device, params: Mapping[str, Any], interpret: bool | None = None) -> bool:
    """Whether a stage on `device` with these params runs its generated kernels."""
    if params.get("fusion") is False:
        return False
    if interpret is None:
        interpret = interpreter_requested()
    return torch.device(device).type == "cuda" or interpret


@contextlib.contextmanager
def interpreting(on: bool = True) -> Iterator[None]:
    """TRITON_INTERPRET=1 while kernels are defined and while they run: @triton.jit reads it
    as it decorates, and triton's own jitted helpers (tl.sum, …) as they are called."""
    before = os.environ.get("TRITON_INTERPRET")
    if not on:
        yield
        return
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.jit import JITFunction

    # triton.language's helpers (tl.sum, tl.zeros, …) were decorated when triton was first
    # imported — before this, often, by torch — so they are compiled-mode functions that
    # refuse calls outside a GPU kernel; here they run as the interpreter runs its own.
    call = JITFunction.__call__
    JITFunction.__call__ = _interpreted_call  # type: ignore[method-assign]
    try:
        yield
    finally:
        JITFunction.__call__ = call  # type: ignore[method-assign]
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


_INTERPRETED: dict[Any, Any] = {}


def _interpreted_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    from triton.runtime.interpreter import InterpretedFunction

    fn = _INTERPRETED.get(self.fn)
    if fn is None:
        fn = _INTERPRETED[self.fn] = InterpretedFunction(self.fn)
    return fn(*args, **kwargs)


def load_kernels(source: str, filename: str, interpret: bool = False) -> types.ModuleType:
    """A kernel file's source as a module (its kernels interpreted when `interpret`)."""
    module = types.ModuleType(Path(filename).stem.replace(".", "_"))
    module.__file__ = filename
    with interpreting(interpret):
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own generated code
    return module


class FusedProgram(nn.Module):
    """An entry's fused graph bound to a live module's weights: called like the entry."""

    def __init__(self, kernels: types.ModuleType, root: nn.Module, constants: Mapping[str, torch.Tensor],
                 device: str | torch.device, interpret: bool = False) -> None:
        super().__init__()
        self.interpret = interpret
        self.unfused: nn.Module | None = None  # the module this replaces, when bound by fused_entry
        sig = kernels.SIGNATURE
        if not sig.get("forward"):
            raise ValueError(f"{kernels.__file__}: the kernel file has no forward graph")
        self.kernels = kernels
        self.root = root
        kernels._device = torch.device(device)
        state = dict(root.named_parameters(remove_duplicate=False))
        state.update(root.named_buffers(remove_duplicate=False))
        self._params: list[torch.Tensor | None] = []
        self._inputs = 0
        for kind, name in sig["params"]:
            if kind == "input":
                self._params.append(None)
                self._inputs += 1
            elif kind == "state":
                if name not in state:
                    raise ValueError(f"{kernels.__file__}: the module has no weight or buffer '{name}'")
                _check_captured(kernels.__file__, name, state[name], sig.get("state", {}).get(name))
                self._params.append(state[name])
            elif kind == "constant":
                if name not in constants:
                    raise ValueError(f"{kernels.__file__}: constant '{name}' is missing")
                self._params.append(constants[name].to(device))
            else:
                raise ValueError(f"{kernels.__file__}: an input of kind {name} cannot be bound")

    def forward(self, *args: Any) -> Any:
        leaves = torch.utils._pytree.tree_leaves(args)
        if len(leaves) != self._inputs:
            raise ValueError(f"the fused graph takes {self._inputs} inputs, got {len(leaves)}")
        it = iter(leaves)
        flat = [next(it) if p is None else p for p in self._params]
        with interpreting(self.interpret):
            out = self.kernels.forward(self.kernels, *flat)
        return out[0] if len(out) == 1 else tuple(out)


def _check_captured(file: str, name: str, tensor: torch.Tensor, captured: list[Any] | None) -> None:
    """The kernels index weights as captured: another dtype or shape would be read wrongly."""
    if captured is None:
        return
    dtype, shape = captured
    have = (str(tensor.dtype).removeprefix("torch."), list(tensor.shape))
    if have != (dtype, list(shape)):
        raise ValueError(f"{file}: '{name}' is {have[0]} {have[1]}, but the kernels were generated for "
                         f"{dtype} {list(shape)}: compile the stage again for this model")


def load_constants(path: str | Path | None) -> dict[str, torch.Tensor]:
    if path is None:
        return {}
    from safetensors.torch import load_file

    return load_file(str(path))


def bind(path: str | Path, root: nn.Module, device: str | torch.device, constants: str | Path | None = None,
         interpret: bool | None = None) -> FusedProgram:
    """The kernel file at `path` bound to `root` (the module as its entry was captured)."""
    if interpret is None:
        interpret = interpreter_requested() and torch.device(device).type != "cuda"
    source = Path(path).read_text(encoding="utf-8")
    kernels = load_kernels(source, str(path), interpret)
    return FusedProgram(kernels, root, load_constants(constants), device, interpret)


def fused_entry(node: Any, entry: str, model: nn.Module, device: str | torch.device) -> FusedProgram | None:
    """The stage's fused graph for `entry`, bound to `model`, when the plan has kernels for
    it and they apply here (a GPU, or the interpreter asked for); else None: run unfused.

    Entries were captured with the model as the `model` attribute of the executor's call
    wrapper, so its weights are found under `model.`."""
    kernels = getattr(node, "kernels", None)
    if kernels is None or entry not in kernels.files or not kernels_apply(device, node.params):
        return None
    from omnigraph.runtime.programs import ExportedStage

    if isinstance(model, ExportedStage):
        holder = model.program  # a bundle's exported program: its weights are `model.…`, as captured
    else:
        holder = nn.Module()
        holder.model = model
    program = bind(kernels.files[entry], holder, device, kernels.constants.get(entry))
    object.__setattr__(program, "unfused", model)  # a plain reference, not a second submodule
    return program
