"""A stage's torch module from its model reference, shared by the model-backed executors.

    transformers:./ckpt / Class@./ckpt     a checkpoint folder (or a Hub id in the local cache),
    diffusers:./pipeline                   loaded with the library's from_pretrained, offline
    transformers:Class / diffusers:Class   built from params.config, seeded random weights
                                           (only with `weights: random`: the spec asks for them)
    py:module:attr                         a module class (or factory) called with params.config
                                           plus the stage's sizes under the names it takes
    safetensors:PATH / pth:PATH            weights loaded (weights_only) into the module named
                                           by params.arch, or config.arch, built as above
A stage from a bundle loads its `program` instead: a torch.export program, or its class
rebuilt from params.config with the bundled weights loaded strictly (see programs.py).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnigraph.kinds import KINDS
from omnigraph.model_ref import location_of
from omnigraph.runtime.loaders import (
    build_from_config, import_attr, load_pretrained, load_state_dict, resolve_file, split_ref,
)
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.programs import load_exported, load_weights, module_class

DTYPES: dict[str, torch.dtype] = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_WEIGHT_SCHEMES = {"safetensors": ".safetensors", "pth": ".pth"}


def dtype_name(node: StageNode) -> str:
    """The dtype a stage computes in: the planner's (resources.dtype), else what its params
    pin, else f32."""
    return node.resources.dtype or node.params.get("dtype") or "f32"


def stage_dtype(node: StageNode) -> torch.dtype:
    name = dtype_name(node)
    if name not in DTYPES:
        raise ValueError(f"dtype {name} is not supported by this executor (use one of {', '.join(DTYPES)})")
    return DTYPES[name]


def stage_seed(params: Mapping[str, Any], default: int = 0) -> int:
    seed = params.get("seed")
    return default if seed is None else int(seed)


def load_module(node: StageNode, device: str, sizes: Mapping[str, Any] | None = None,
                default_seed: int = 0) -> nn.Module:
    """The stage's module, in eval mode, on `device`, in the stage's dtype.

    `sizes` are keyword arguments a `py:` class receives when its constructor names them
    (e.g. in_features for nn.Linear); `params.config` always wins over them.
    """
    params = node.params
    config = dict(params.get("config") or {})
    seed = stage_seed(params, default_seed)
    scheme, target = split_ref(node.model or "")
    program = node.program
    if program is not None and program.form == "pt2":  # from a bundle: the exported program
        return load_exported(Path(program.files["program"]), program.facts, device)
    if program is not None and program.form == "weights":  # from a bundle: class + state dict
        config.pop("arch", None)
        module_class(program.ref or "")  # before anything is built from it
        module = _build(program.ref or "", config, seed, sizes or {})
        load_weights(module, Path(program.files["weights"]))
    elif location_of(node.model or "")[1] is not None:  # a checkpoint folder or a Hub id
        module = load_pretrained(node.model or "", KINDS[node.kind].traits.components, stage_dtype(node),
                                 bool(params.get("allow_pickle")))
    elif scheme in _WEIGHT_SCHEMES:
        arch = params.get("arch") or config.pop("arch", None)
        if not arch:
            raise ValueError(f"'{node.model}' holds weights only: name the module to load them into "
                             f"with config.arch (e.g. transformers:SiglipVisionModel)")
        module = _build(arch, config, seed, sizes or {})
        state = load_state_dict(resolve_file(target, _WEIGHT_SCHEMES[scheme]))
        module.load_state_dict(state)  # strict: a wrong arch fails here, not with garbage out
    else:
        module = _build(node.model or "", config, seed, sizes or {})
    dtype = stage_dtype(node)
    if any(p.dtype != dtype for p in module.parameters()):
        # nn.Module.to: diffusers' override warns about from_pretrained, which we do not use.
        module = nn.Module.to(module, dtype=dtype)
    return module.to(device=device).eval()


def checkpoint_folder(node: StageNode) -> Path | None:
    """The checkpoint folder an LLM stage loads from (its tokenizer lives there), if any."""
    from omnigraph.model_ref import location_of
    from omnigraph.runtime.checkpoint import resolve

    _, location = location_of(node.model or "")
    return resolve(location) if location is not None else None


def _build(ref: str, config: dict[str, Any], seed: int, sizes: Mapping[str, Any]) -> nn.Module:
    scheme, target = split_ref(ref)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        if scheme in ("transformers", "diffusers"):
            return build_from_config(scheme, target, config, seed)
        if scheme == "py":
            torch.manual_seed(seed)
            return instantiate(import_attr(target), config, sizes)
    raise ValueError(f"model '{ref}': this stage kind runs transformers:, diffusers:, py:, "
                     f"safetensors: or pth: models")


def instantiate(obj: Any, config: dict[str, Any], sizes: Mapping[str, Any]) -> nn.Module:
    """A module from a `py:` target: an instance as is, a transformers class from its config
    class, anything else called with `config` and the `sizes` its signature names."""
    if isinstance(obj, nn.Module):
        return obj
    config_class = getattr(obj, "config_class", None)
    if inspect.isclass(obj) and config_class is not None:  # e.g. a transformers class not exported at top level
        return obj(config_class(**config))
    try:
        named = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        named = {}
    kwargs = {k: v for k, v in sizes.items() if k in named and v is not None}
    kwargs.update(config)
    module = obj(**kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{getattr(obj, '__name__', obj)} did not build a torch module")
    return module


def main_output(out: Any) -> torch.Tensor:
    """The tensor a model call produced: itself, last_hidden_state/sample, or the first item."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "sample"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}, not a tensor")


def call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Calls a model on its main input: by name for transformers models, positionally otherwise."""
    name = getattr(model, "main_input_name", None)
    return main_output(model(**{name: x}) if name else model(x))


def config_value(model: nn.Module, *keys: str) -> Any:
    """The first of `keys` set in the model's config (transformers/diffusers) or, for a
    module without one, among its attributes."""
    config = getattr(model, "config", None)
    source = model if config is None else config
    for key in keys:
        value = getattr(source, key, None)
        if value is not None and not isinstance(value, (nn.Module, torch.Tensor)):
            return value
    return None
