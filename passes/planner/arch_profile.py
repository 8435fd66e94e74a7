"""A stage's ArchProfile: its module counted on the `meta` device, or estimated.

`transformers:Class` and `diffusers:Class` models (and weights-only `safetensors:`/`pth:`
stages through their `arch`) are built the way the runtime builds them, from the config class plus `params.config`, but on `meta`: no weights
are allocated or initialised, so a 30B model takes a second. Parameters are then counted as
torch counts them; routed experts, embeddings and modality towers are found structurally.
Only classes that omnigraph.model_ref accepts are built (a reference naming anything else
is an error); `py:` code is never imported here. Anything else, or a class that fails to
build, falls back to arch_estimate.py.

torch/transformers/diffusers are imported here lazily: the compiler core stays importable
without them (and then every stage is estimated from its config).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from omnigraph import model_ref
from omnigraph.kinds import KINDS
from omnigraph.passes.planner import profile_cache
from omnigraph.passes.planner.arch_estimate import estimate_profile
from omnigraph.passes.planner.cost_types import DTYPE_BYTES, ArchProfile

DEFAULT_DTYPE = "bf16"  # planning is for GPUs; a stage that says f32 gets f32
# Sub-configs of an omni/VLM model whose modules run once over their own inputs (audio,
# vision, VQ image towers), not once per generated token.
TOWER_CONFIGS = ("audio_config", "vision_config", "vq_config")

_LAYERS = ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers", "depth")
_HEADS = ("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")
_HIDDEN = ("hidden_size", "d_model", "n_embd", "dim")
_HEAD_DIM = ("head_dim", "attention_head_dim", "d_kv")
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts")
_TOP_K = ("num_experts_per_tok", "num_experts_per_token", "moe_topk")


def profile_stage(kind: str, model: str | None, params: Mapping[str, Any]) -> ArchProfile:
    """The stage's profile: counted on `meta` when its module can be built, else estimated."""
    if model_ref.location_of(model or "")[1] is not None:
        return _checkpoint_profile(kind, model or "", bool(params.get("allow_pickle")), params.get("dtype"))
    dtype_bytes = DTYPE_BYTES.get(params.get("dtype") or DEFAULT_DTYPE, DTYPE_BYTES[DEFAULT_DTYPE])
    config = dict(params.get("config") or {})
    ref = _buildable_ref(model, params, config)
    note = ""
    if ref is not None:
        counted = _meta_profile(ref, json.dumps(config, sort_keys=True, default=str))
        if isinstance(counted, ArchProfile):
            return _for_kind(kind, replace(counted, dtype_bytes=dtype_bytes))
        note = counted
    return _for_kind(kind, estimate_profile(kind, model, params, dtype_bytes, note))


@functools.lru_cache(maxsize=128)  # the planner asks once per candidate configuration
def _checkpoint_profile(kind: str, model: str, allow_pickle: bool, pinned: str | None) -> ArchProfile:
    """A checkpoint folder's profile: its structure counted on `meta` from its config.json, its
    parameter count and dtype from the safetensors headers (no tensor is read)."""
    from omnigraph.runtime.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model, KINDS[kind].traits.components, allow_pickle=allow_pickle)
    dtype_bytes = DTYPE_BYTES.get(pinned or ckpt.dtype or DEFAULT_DTYPE, DTYPE_BYTES[DEFAULT_DTYPE])
    config = {k: v for k, v in ckpt.config.items() if not k.startswith("_")}  # diffusers' bookkeeping
    counted = _meta_profile(f"{ckpt.library}:{ckpt.class_name}", json.dumps(config, sort_keys=True, default=str))
    if isinstance(counted, ArchProfile):
        profile = replace(counted, params=ckpt.params or counted.params, dtype_bytes=dtype_bytes, source="checkpoint")
    else:
        params = {"config": config, **({"dtype": pinned} if pinned else {})}
        profile = replace(estimate_profile(kind, model, params, dtype_bytes, counted),
                          params=ckpt.params, active_params=ckpt.params, source="checkpoint")
    return _for_kind(kind, profile)


def _buildable_ref(model: str | None, params: Mapping[str, Any], config: dict[str, Any]) -> str | None:
    """The library class the stage's module is built from, if it is one: the model itself, or
    the `arch` a weights file loads into. `py:` references are never imported while
    compiling (they are the user's code); their stages are estimated from the config."""
    scheme, _, _ = (model or "").partition(":")
    if scheme in model_ref.LIBRARIES:  # a class (a checkpoint is profiled by _checkpoint_profile)
        return model
    if scheme in ("safetensors", "pth"):
        arch = params.get("arch") or config.pop("arch", None)
        if isinstance(arch, str) and arch.partition(":")[0] in model_ref.LIBRARIES:
            return arch
    return None


def _for_kind(kind: str, profile: ArchProfile) -> ArchProfile:
    """Only kinds that decode step by step keep a KV cache."""
    return profile if KINDS[kind].traits.kv_cache or not profile.kv_heads else replace(profile, kv_heads=0)


@functools.lru_cache(maxsize=128)
def _meta_profile(ref: str, config_json: str) -> ArchProfile | str:
    """The counted profile (dtype_bytes left at its default), or why it could not be built.
    A count made before (same class, config and library versions) is read from the disk cache:
    no torch or transformers import at all."""
    known = profile_cache.load(ref, config_json)
    if known is not None:
        return known
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed: estimated from the config"
    cls = model_ref.library_class(*model_ref.split(ref))  # refused references raise: never estimated
    try:
        module, config = _build_on_meta(cls, json.loads(config_json))
    except Exception as exc:  # any failure in library code: estimate instead, say why
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"could not build {ref} on meta ({type(exc).__name__}: {first[:160]}): estimated from the config"
    counted = _count(module, config, ref)
    profile_cache.save(ref, config_json, counted)
    return counted


def _build_on_meta(cls: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    """An instance on `meta`, built as the runtime builds it: transformers classes from their
    config class, anything else (diffusers) from keyword arguments."""
    import torch

    config_class = getattr(cls, "config_class", None)
    # `meta` alone: transformers skips initialisation there but still ties shared weights
    # (its no_init_weights context would skip the tying too, and count tied tensors twice).
    with _quiet(), torch.device("meta"):
        if config_class is not None:
            cfg = config_class(**config)
            return cls(cfg), cfg
        module = cls(**config)
    return module, getattr(module, "config", config)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' construction-time advice (token ids past a talker's vocab…)."""
    loggers = [logging.getLogger(n) for n in ("transformers", "diffusers")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _count(module: Any, config: Any, ref: str) -> ArchProfile:
    from torch import nn

    text = _text_config(config)
    sources = [text, config, *_sub_configs(config)]
    experts = _int(sources, _EXPERTS)
    top_k = _int(sources, _TOP_K) if experts else 0

    params = sum(p.numel() for p in module.parameters())  # shared (tied) tensors once, as torch does
    embedding: dict[int, int] = {}
    expert: dict[int, int] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding):
            embedding[id(sub.weight)] = sub.weight.numel()
        if experts:
            for p in _expert_tensors(name, sub, experts):
                expert[id(p)] = p.numel()
    expert_params = sum(expert.values())
    active = params - expert_params + (expert_params * top_k // experts if experts else 0)

    heads = _int(sources, _HEADS)
    head_dim = _int(sources, _HEAD_DIM)
    hidden = _int(sources, _HIDDEN) or heads * head_dim
    if not head_dim and heads and hidden:
        head_dim = hidden // heads
    return ArchProfile(
        params=params, expert_params=expert_params, active_params=active,
        embedding_params=sum(embedding.values()), layers=_int(sources, _LAYERS), hidden=hidden,
        heads=heads, kv_heads=_int(sources, _KV_HEADS) or heads, head_dim=head_dim,
        experts=experts, experts_per_token=top_k, source="meta", arch=ref.rpartition(":")[2],
        encoder_params=_tower_params(module, config), patch_size=_patch(sources),
        merge=_int(sources, ("spatial_merge_size",)) ** 2 or 1, image_size=_int(sources, ("image_size",)),
    )


def _expert_tensors(name: str, sub: Any, experts: int) -> list[Any]:
    """Routed-expert weights held directly by `sub`: packed tensors whose leading dim is the
    expert count (`experts.gate_up_proj [E, 2I, H]`), or a ModuleList of E expert MLPs."""
    from torch import nn

    if isinstance(sub, nn.ModuleList):
        if len(sub) == experts and name.rsplit(".", 1)[-1].endswith("experts"):
            return list(sub.parameters())
        return []
    own = list(sub.parameters(recurse=False))
    if any(p.dim() >= 3 and p.shape[0] == experts for p in own):
        return [p for p in own if p.dim() >= 2 and p.shape[0] == experts]  # incl. packed biases
    return []


def _tower_params(module: Any, config: Any) -> int:
    """Parameters of the sub-models built from an audio/vision/VQ sub-config (outermost only)."""
    tower_types = tuple({type(c) for c in (getattr(config, n, None) for n in TOWER_CONFIGS)
                         if c is not None and not isinstance(c, (dict, int, str))})
    if not tower_types:
        return 0
    total, taken = 0, []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(getattr(sub, "config", None), tower_types):
            taken.append(name)
            total += sum(p.numel() for p in sub.parameters())
    return total


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    try:
        return getter() if callable(getter) else config
    except Exception:  # some composite configs refuse when they hold several text configs
        return config


def _sub_configs(config: Any) -> list[Any]:
    """Nested configs (a Token2Wav's dit_config…), in name order, for sizes the top lacks."""
    if isinstance(config, Mapping):
        return []
    names = sorted(n for n in vars(config) if n.endswith("_config"))
    return [c for c in (getattr(config, n, None) for n in names) if c is not None and not isinstance(c, (str, int))]


def _get(source: Any, key: str) -> Any:
    return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)


def _int(sources: list[Any], keys: tuple[str, ...]) -> int:
    """The first positive integer any source has under any of `keys` (sources in order)."""
    for source in sources:
        for key in keys:
            value = _get(source, key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


def _patch(sources: list[Any]) -> tuple[int, ...]:
    for source in sources:
        value = _get(source, "patch_size")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return (value, value)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            return tuple(value)
    return ()
