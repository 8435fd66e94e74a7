"""An ArchProfile from numbers, for stages not counted on `meta` (see arch_profile.py).

Sources, best first: a weights file's own header (GGUF tensor table, safetensors header:
exact counts), its size (ONNX: f32 bytes / 4), then the sizes in `params.config` and the
stage's parameters (hidden_size, num_hidden_layers, intermediate_size, heads, experts,
vocab_size) put through the standard transformer formulas. A stage with none of these gets
DEFAULT_PARAMS and a note saying what to set.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import struct
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from omnigraph.kinds import KINDS
from omnigraph.passes.planner.cost_types import ArchProfile

DEFAULT_PARAMS = 100_000_000  # a small model: what a stage with no sizes at all is assumed to be
GGUF_BITS_PER_WEIGHT = 4.5  # typical of Q4_K_M, when the gguf package cannot read the header
_FILE_SUFFIX = {"gguf": ".gguf", "onnx": ".onnx", "safetensors": ".safetensors"}

_KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"),
    "layers": ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers", "depth"),
    "heads": ("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "head_dim": ("head_dim", "attention_head_dim", "d_kv"),
    "intermediate": ("intermediate_size", "ffn_dim", "d_ff", "encoder_ffn_dim", "n_inner"),
    "moe_intermediate": ("moe_intermediate_size", "expert_intermediate_size"),
    "experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "top_k": ("num_experts_per_tok", "num_experts_per_token", "moe_topk"),
    "shared": ("n_shared_experts", "shared_experts"),
    "vocab": ("vocab_size",),
}


def estimate_profile(kind: str, model: str | None, params: Mapping[str, Any], dtype_bytes: int,
                     note: str = "") -> ArchProfile:
    scheme, _, target = (model or "").partition(":")
    config = params.get("config") or {}
    main, towers = _split_config(config)
    sizes = _sizes(kind, params, main)
    counted = _from_file(scheme, target) if scheme in _FILE_SUFFIX else None
    if counted is not None:  # ONNX files run as they are (f32) unless the stage names a dtype
        file_dtype = 4 if scheme == "onnx" and not params.get("dtype") else dtype_bytes
        return _with_sizes(counted, sizes, file_dtype, note)
    if scheme == "py" and target.rpartition(":")[2].rpartition(".")[2] == "Identity":
        return ArchProfile(params=0, dtype_bytes=dtype_bytes, arch=target, note=note, source="config")
    profile = _from_sizes(kind, sizes, dtype_bytes)
    if profile is not None:
        tower = sum(_tower_params(t) for t in towers)
        profile = replace(profile, params=profile.params + tower, active_params=profile.active_params + tower,
                          encoder_params=tower)
        return replace(profile, arch=target, note=note, source="config")
    reason = note or f"no sizes known for this {kind} stage"
    return ArchProfile(params=DEFAULT_PARAMS, active_params=DEFAULT_PARAMS, dtype_bytes=dtype_bytes,
                       arch=target, source="guess",
                       note=f"{reason}: GUESSED {DEFAULT_PARAMS // 10**6}M parameters "
                       f"(set params.config hidden_size and num_hidden_layers for a real estimate)")


# Where composite configs (omni, VLM, talker) keep their language model, outermost first.
_MAIN_CONFIGS = ("thinker_config", "text_config", "llm_config", "language_config")


def _split_config(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(the config of the part that runs per token, the configs of the other sub-models): an
    omni thinker's text_config and its audio/vision towers; a plain config is all main."""
    main: Mapping[str, Any] = config
    for _ in range(3):  # thinker_config.text_config
        inner = next((main[k] for k in _MAIN_CONFIGS if isinstance(main.get(k), Mapping)), None)
        if inner is None:
            break
        main = inner
    towers: list[Mapping[str, Any]] = []

    def collect(cfg: Mapping[str, Any]) -> None:
        for key, value in cfg.items():
            if key.endswith("_config") and isinstance(value, Mapping) and value is not main:
                if any(_positive(value.get(k)) for k in _KEYS["hidden"]):
                    towers.append(value)
                else:
                    collect(value)

    if main is not config:
        collect(config)
    return main, towers


def _tower_params(config: Mapping[str, Any]) -> int:
    """A sub-model (audio/vision tower, code predictor) counted with the encoder formulas."""
    sizes = _sizes("encoder", {}, config)
    profile = _from_sizes("encoder", sizes, 2)
    return profile.params if profile is not None else 0


def _sizes(kind: str, params: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The positive integer sizes under the names above, from config then the stage's params."""
    config = params.get("config") or {} if config is None else config
    found: dict[str, int] = {}
    for name, keys in _KEYS.items():
        for source in (config, params):
            value = next((source[k] for k in keys if _positive(source.get(k))), None)
            if value is not None:
                found[name] = value
                break
    if kind == "moe":  # the block's own parameters name its routing (top_k is not sampling here)
        for name, key in (("experts", "num_experts"), ("top_k", "top_k"), ("shared", "shared_experts")):
            if _positive(params.get(key)):
                found[name] = params[key]
    for key, name in (("in_dim", "in_dim"), ("out_dim", "out_dim")):
        if _positive(params.get(key)):
            found[name] = params[key]
    if config.get("tie_word_embeddings") is True:
        found["tied"] = 1
    if _positive(config.get("joint_attention_dim")):
        found["joint"] = 1
    return found


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _from_sizes(kind: str, s: dict[str, int], dtype_bytes: int) -> ArchProfile | None:
    """Standard formulas: attention 2·H·(q + kv) per layer, MLP 2 or 3 matrices of H x I,
    experts E x 3·H·I_moe plus a router, embeddings V x H (and an untied LM head)."""
    if kind == "projector" and "in_dim" in s and "out_dim" in s:
        n = s["in_dim"] * s["out_dim"] + s["out_dim"]
        return ArchProfile(params=n, active_params=n, hidden=s["out_dim"], dtype_bytes=dtype_bytes)
    hidden = s.get("hidden") or s.get("heads", 0) * s.get("head_dim", 0)
    if not hidden:
        return None
    if s.get("heads") and not s.get("head_dim"):
        head_dim = max(1, hidden // s["heads"])
    else:  # unknown heads: 128-wide heads, as most LLMs have
        head_dim = s.get("head_dim") or (128 if hidden % 128 == 0 else 64)
    heads = s.get("heads") or max(1, hidden // head_dim)
    kv_heads = s.get("kv_heads") or heads
    inter = s.get("intermediate")
    mats = 3 if kind in KINDS and KINDS[kind].traits.gated_mlp else 2
    dense_mlp = mats * hidden * inter if inter else 8 * hidden * hidden
    experts, top_k = s.get("experts", 0), s.get("top_k", 0)
    expert_mlp = 3 * hidden * (s.get("moe_intermediate") or inter or 4 * hidden)
    if kind == "moe":  # one block: router + experts (+ shared experts), no attention
        layers, attn = 1, 0
    else:
        layers = s.get("layers", 0)
        if not layers:
            return None
        attn = 2 * hidden * head_dim * (heads + kv_heads)
    if experts:
        top_k = min(top_k or 2, experts)
        per_expert_layer = experts * expert_mlp
        mlp = per_expert_layer + hidden * experts + s.get("shared", 0) * expert_mlp
    else:
        per_expert_layer, mlp = 0, dense_mlp
    if kind == "diffusion" and s.get("joint"):  # SD3/Flux: two streams, each attention + MLP + adaLN
        attn, mlp = 2 * attn, 2 * (mlp + 6 * hidden * hidden)
    elif kind == "diffusion":  # a cross-attention DiT (Wan, PixArt): self- and cross-attention
        attn = 2 * attn
    vocab = s.get("vocab", 0)
    embedding = vocab * hidden
    traits = KINDS[kind].traits if kind in KINDS else None
    head = vocab * hidden if traits and traits.autoregressive and not s.get("tied") else 0  # an untied LM head
    total = layers * (attn + mlp + 2 * hidden) + embedding + head
    expert_params = layers * per_expert_layer
    active = total - expert_params + (expert_params * top_k // experts if experts else 0)
    return ArchProfile(
        params=total, dtype_bytes=dtype_bytes, expert_params=expert_params, active_params=active,
        embedding_params=embedding, layers=layers, hidden=hidden, heads=heads if attn else 0,
        kv_heads=kv_heads if traits and traits.kv_cache else 0, head_dim=head_dim if attn else 0,
        experts=experts, experts_per_token=top_k if experts else 0,
    )


def _from_file(scheme: str, target: str) -> ArchProfile | None:
    path = _find_file(target, _FILE_SUFFIX[scheme])
    if path is None:
        return None
    stat = path.stat()
    if scheme == "gguf":
        return _gguf(str(path), stat.st_size, stat.st_mtime_ns)
    if scheme == "safetensors":
        return _safetensors(str(path), stat.st_size, stat.st_mtime_ns)
    n = stat.st_size // 4  # ONNX: initialisers are f32 (ORT runs the file as it is)
    return ArchProfile(params=n, active_params=n, arch=path.name)


def _find_file(target: str, suffix: str) -> Path | None:
    """A file path, or the first `suffix` file an installed package carries (never imported)."""
    path = Path(target).expanduser()
    if path.is_file():
        return path
    if path.suffix == suffix or "/" in target:
        return None
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).rglob(f"*{suffix}"))
        if found:
            return found[0]
    return None


@functools.lru_cache(maxsize=32)
def _gguf(path: str, size: int, mtime_ns: int) -> ArchProfile:
    """Exact counts and sizes from the GGUF tensor table and metadata (memory-mapped)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
    except Exception:  # no gguf package, or a header it cannot read: size over typical bits/weight
        n = int(size * 8 / GGUF_BITS_PER_WEIGHT)
        return ArchProfile(params=n, active_params=n, arch=Path(path).name, source="file",
                           note=f"GGUF header unread: {GGUF_BITS_PER_WEIGHT} bits per weight assumed")

    def meta(key: str) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    arch = meta("general.architecture") or "llama"
    total = embedding = experts_n = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        total += n
        if t.name.startswith("token_embd"):
            embedding += n
        if "_exps" in t.name:
            experts_n += n
    heads = int(meta(f"{arch}.attention.head_count") or 0)
    hidden = int(meta(f"{arch}.embedding_length") or 0)
    experts = int(meta(f"{arch}.expert_count") or 0)
    top_k = int(meta(f"{arch}.expert_used_count") or 0)
    active = total - experts_n + (experts_n * top_k // experts if experts else 0)
    return ArchProfile(
        params=total, expert_params=experts_n, active_params=active, embedding_params=embedding,
        layers=int(meta(f"{arch}.block_count") or 0), hidden=hidden, heads=heads,
        kv_heads=int(meta(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(meta(f"{arch}.attention.key_length") or (hidden // heads if heads else 0)),
        experts=experts, experts_per_token=top_k, arch=f"gguf:{arch}", source="file",
    )


@functools.lru_cache(maxsize=32)
def _safetensors(path: str, size: int, mtime_ns: int) -> ArchProfile | None:
    """Exact counts from the safetensors header (8-byte length, then JSON), no tensor read."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(length, 100 << 20)))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            n = 1
            for d in entry.get("shape", []):
                n *= d
            total += n
    return ArchProfile(params=total, active_params=total, arch=Path(path).name, source="file")


def _with_sizes(counted: ArchProfile, sizes: dict[str, int], dtype_bytes: int, note: str) -> ArchProfile:
    """A file's count, with the layer/head sizes the config states where the file had none."""
    dims = _from_sizes("encoder", sizes, dtype_bytes) if sizes else None
    extra: dict[str, Any] = {}
    if dims is not None:
        for name in ("layers", "hidden", "heads", "head_dim"):
            if not getattr(counted, name):
                extra[name] = getattr(dims, name)
    return replace(counted, dtype_bytes=dtype_bytes, note=counted.note or note, **extra)
