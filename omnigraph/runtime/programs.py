"""Loading a bundled stage's module: a torch.export program, or a state dict for a rebuilt class.

Nothing here unpickles: a .pt2 is checked (pt2_audit) before and after
`torch.export.load`, and weights load through safetensors or
`torch.load(weights_only=True)`. The class a state dict is loaded into must be a
torch module class, so a bundle cannot name an arbitrary callable to build.
"""
from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnigraph.model_ref import LIBRARIES, library_class
from omnigraph.runtime.loaders import import_attr, split_ref
from omnigraph.runtime.pt2_audit import check_archive, check_graph, refusal



class ExportedStage(nn.Module):
    """A stage's exported program, called as the executor called the module it came from,
    with the facts (sizes, scales) the executor read off that module when it was exported."""

    def __init__(self, program: nn.Module, facts: Mapping[str, Any]) -> None:
        super().__init__()
        self.program = program
        self.facts = dict(facts)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.program(*args)

    def train(self, mode: bool = True) -> ExportedStage:
        # The graph was captured in eval mode; an exported GraphModule refuses train()/eval().
        self.training = mode
        return self


def recorded_facts(model: Any) -> dict[str, Any] | None:
    """The facts recorded with an exported program; None for a module built here."""
    return model.facts if isinstance(model, ExportedStage) else None


def shown(path: Path) -> str:
    """A bundle file as users know it (its folder and name, not the private unpack dir)."""
    return "/".join(path.parts[-2:])


def load_exported(path: Path, facts: Mapping[str, Any], device: str) -> ExportedStage:
    """A .pt2 program, checked before and after loading, on `device`."""
    data = path.read_bytes()  # one read: what is checked is what is loaded
    check_archive(data, shown(path))
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ValueError(f"{shown(path)}: torch.export.load failed: {type(exc).__name__}: {exc}") from None
    check_graph(program, shown(path))
    if device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return ExportedStage(program.module(), facts)


def module_class(ref: str) -> type[nn.Module]:
    """The torch module class a weights-form stage is rebuilt from; refuses anything else."""
    scheme, target = split_ref(ref)
    if scheme in LIBRARIES:
        obj = library_class(scheme, target)
    elif scheme == "py":
        obj = import_attr(target)
    else:
        raise ValueError(f"'{ref}' is not a module class (transformers:, diffusers: or py:)")
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ValueError(f"'{ref}' is not a torch module class; a bundle rebuilds only nn.Module classes")
    return obj


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a state dict into `module`, strictly: every tensor present, none left over."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_model

        try:
            load_model(module, str(path), strict=True)  # handles tied weights stored once
        except Exception as exc:
            raise ValueError(f"{shown(path)}: {str(exc).splitlines()[0]}") from None
        return
    if path.suffix not in (".pt", ".pth"):
        raise ValueError(f"{shown(path)}: weights are .safetensors, .pt or .pth, not {path.suffix or 'no suffix'}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{shown(path)}: refused to unpickle it: not a plain state dict ({refusal(exc)}); "
                         f"weights load only as tensors, never as code") from None
    except Exception as exc:
        raise ValueError(f"{shown(path)}: not a state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{shown(path)}: holds a {type(state).__name__}, not a state dict")
    module.load_state_dict(state, strict=True)
