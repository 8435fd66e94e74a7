"""The stage-kind registry: each kind's ports, parameters and traits, declared once.

Every phase asks a kind what it is (`KINDS[k].traits.kv_cache`, `.shardable_tp`, …) instead
of keeping its own list of kind names. Per-phase behaviour stays in per-phase rule tables
keyed by kind (type rules in passes/infer_types.py; cost, lowering, export and execution
rules in later phases). Adding a kind adds one entry here and one in each of those tables.
This module imports nothing from the compiler: the runtime reads it too.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from omnigraph.names import NAME_PATTERN

ANY_MODALITY = ("text", "tokens", "image", "audio", "video", "latent", "embedding", "scalar")
# Sentinel modality of a port whose type follows another port (route cases).
SAME_AS_INPUT = "<same>"


@dataclass(frozen=True)
class Port:
    name: str
    modalities: tuple[str, ...]
    optional: bool = False
    variadic: bool = False  # accepts several edges (fusion of several encoders)

    @property
    def modality(self) -> str:
        """The modality an output port produces."""
        return self.modalities[0]


class Params(BaseModel):
    """Parameters every kind accepts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dtype: Literal["f32", "f16", "bf16", "fp8"] | None = None
    seed: int | None = None
    # Weights-only models (safetensors:, pth:): the module they load into, built from `config`.
    arch: str | None = None
    # Architecture config passed to the model class (hidden_size, num_attention_heads,
    # num_experts, ...); read by type inference, cost rules and parallelism checks.
    config: dict[str, Any] = Field(default_factory=dict)
    # Run the stage through its fused Triton kernels where it has them (a debugging switch:
    # false runs the module's own ops, and fuse-ops leaves the stage alone).
    fusion: bool = True
    # A transformers:/diffusers: class with no checkpoint gets seeded random weights only when
    # the spec says so: for tiny test pipelines and for planning real sizes from a config.
    weights: Literal["random"] | None = None
    # Load a checkpoint's pickled .bin weights when it has no safetensors (pickles can run code).
    allow_pickle: bool = False
    # Placement pins, as vLLM-Omni's stage configs give them (`devices`, `gpu_memory_utilization`):
    # the planner puts the stage on exactly these target devices (`node0:gpu1`; several stages
    # may pin one device and share it), and gives it at most this share of each one's memory
    # (weights, activations and its KV pool). The planner plans everything else around them.
    devices: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+:[A-Za-z0-9_]+$")]] | None = \
        Field(None, min_length=1)
    memory_share: float | None = Field(None, gt=0, le=1)


class EncoderParams(Params):
    hidden_size: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    # Embeddings kept by the content of their input (an image seen again is not encoded
    # again), in MiB; 0 turns the cache off.
    cache_mb: float = Field(64, ge=0)


class ProjectorParams(Params):
    in_dim: int | None = Field(None, ge=1)
    out_dim: int | None = Field(None, ge=1)


class ChatTurn(BaseModel):
    """An earlier turn of a conversation, before the prompt (a request's chat history)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class ArLlmParams(Params):
    max_new_tokens: int = Field(64, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    system: str | None = None
    history: list[ChatTurn] = Field(default_factory=list)  # turns before the prompt (chat template)
    chat: bool = True  # apply the model's chat template
    max_batch: int = Field(32, ge=1)
    tokenizer: str | None = None  # a directory or gguf:… when the model ships none
    hidden_size: int | None = Field(None, ge=1)
    stream_chunk: Literal["token", "word", "sentence"] = "sentence"
    # Set by the planner when it splits the stage (passes/split_prefill_decode.py), never by a
    # spec: "prefill" computes the prompt's KV and hands it on (port `kv`); "decode" takes it
    # and generates. `prefill_hidden`: the prefill hands on its last hidden state too.
    phase: Literal["whole", "prefill", "decode"] = "whole"
    prefill_hidden: bool = False


class DiffusionParams(Params):
    steps: int = Field(20, ge=1, le=10_000)
    guidance_scale: float = Field(1.0, ge=0.0)
    scheduler: str = "ddim"
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    latent_channels: int = Field(4, ge=1)
    downsample: int = Field(8, ge=1)
    cfg_branches: int = Field(1, ge=1)  # conditioning branches crossing the edge


class DecoderParams(Params):
    modality: Literal["image", "audio", "video"] = "image"
    upsample: int = Field(8, ge=1)
    sample_rate: int | None = Field(None, ge=1)


class MoeParams(Params):
    num_experts: int = Field(ge=1)
    null_experts: int = Field(0, ge=0)  # zero-computation experts the router may pick
    top_k: int = Field(2, ge=1)
    shared_experts: int = Field(0, ge=0)
    routing: Literal["top_k", "top_p"] = "top_k"
    top_p: float = Field(0.4, gt=0.0, le=1.0)  # routing="top_p": experts until this mass
    hidden_size: int | None = Field(None, ge=1)

    @field_validator("top_k")
    @classmethod
    def _top_k_within_experts(cls, top_k: int, info: ValidationInfo) -> int:
        experts = info.data.get("num_experts", top_k) + info.data.get("null_experts", 0)
        if top_k > experts:
            raise ValueError(f"top_k={top_k} is more than the {experts} experts it routes to")
        return top_k


class AudioOutParams(Params):
    sample_rate: int = Field(22050, ge=1000)
    speaker: int | str | None = None
    length_scale: float = Field(1.0, gt=0.0)
    # A VITS voice's sampling noise (None: the voice's own). onnxruntime draws it from a
    # generator that runs on across requests, so the same text sounds slightly different
    # each time; 0 for both makes the voice deterministic: the same text, the same samples.
    noise_scale: float | None = Field(None, ge=0.0)
    noise_w: float | None = Field(None, ge=0.0)


class RouteParams(Params):
    cases: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(min_length=2)  # port names
    default: str | None = None


class CustomParams(Params):
    model_config = ConfigDict(extra="allow")  # forwarded to the user's module


@dataclass(frozen=True)
class Traits:
    """What every phase may ask of a kind (instead of testing its name)."""

    autoregressive: bool = False  # generates step by step (prefill, then decode steps)
    kv_cache: bool = False  # keeps attention keys/values between steps
    streams: frozenset[str] = frozenset()  # output ports it can deliver in chunks
    continuous: bool = False  # requests join and leave a running batch at any step
    shardable_tp: bool = False  # the runtime shards its attention/MLPs over tp ranks
    shardable_ep: bool = False  # its experts (if its model has any) split over ep ranks
    shardable_pp: bool = False  # its layers split into consecutive groups over pp ranks
    gated_mlp: bool = False  # MLPs have 3 matrices (SwiGLU), for estimates from sizes
    batches: tuple[int, ...] | None = None  # batch sizes the planner tries (None: up to max_batch)
    default_batch: int = 8  # the runtime's batch when the kind has no max_batch parameter
    file_role: str | None = None  # the bundled role of a model kept as its file (gguf, onnx)
    bundle_forms: frozenset[str] = frozenset({"pt2", "weights", "checkpoint"})  # how a bundle may carry it
    requires: frozenset[str] = frozenset()  # pip packages its executor needs beyond torch
    components: tuple[str, ...] = ()  # what it loads from a diffusers pipeline folder, preferred first
    # Its torch models compute in a dtype the planner may choose (bf16 where the device is fast
    # at it); False for ONNX voices and user code, which run as they are.
    precision: bool = True
    # Params a request may set for itself (Pipeline.submit(settings=...), the server's
    # temperature/max_tokens/...): per request, validated against `params`, batched together.
    request_params: frozenset[str] = frozenset()


# How a kind's output ports are known: fixed, one per route case, the decoder's modality,
# or declared by the spec (custom stages).
OutputsFrom = Literal["fixed", "cases", "modality", "declared"]


@dataclass(frozen=True)
class StageKind:
    name: str
    summary: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    params: type[Params]
    traits: Traits = Traits()
    needs_model: bool = True
    outputs_from: OutputsFrom = "fixed"

    @property
    def free_ports(self) -> bool:
        """custom: ports are whatever the spec declares."""
        return self.outputs_from == "declared"

    def input_port(self, name: str) -> Port | None:
        if self.free_ports:
            return Port(name, ANY_MODALITY, variadic=True)
        return next((p for p in self.inputs if p.name == name), None)

    def output_ports(self, params: dict[str, Any], declared: dict[str, str] | None) -> tuple[Port, ...]:
        """Output ports, which for some kinds depend on parameters or declarations."""
        if self.outputs_from == "cases":
            return tuple(Port(case, (SAME_AS_INPUT,)) for case in params.get("cases", []))
        if self.outputs_from == "modality":
            modality = params.get("modality", "image")
            return (Port(modality, (modality,)),)
        if self.outputs_from == "declared":
            return tuple(Port(n, (m,)) for n, m in (declared or {}).items())
        return self.outputs

    def phase_ports(self, params: dict[str, Any]) -> tuple[tuple[Port, ...], tuple[Port, ...]] | None:
        """The ports of one phase of a stage the planner split (params.phase): the prefill
        reads the prompt and hands on a KV edge; the decode reads that and writes the
        outputs. None for a whole stage."""
        phase = params.get("phase", "whole")
        if phase == "prefill":
            return self.inputs, (Port("kv", (KV_MODALITY,)),)
        if phase == "decode":
            return (Port("kv", (KV_MODALITY,)),), self.outputs
        return None

    def parallel_problem(self, tp: int, ep: int, pp: int = 1) -> str | None:
        """Why this kind cannot run with these degrees (None: it can)."""
        if tp > 1 and not self.traits.shardable_tp:
            return f"tp={tp}: {self.name} stages are not tensor-parallel" + _shardable()
        if ep > 1 and not self.traits.shardable_ep:
            return f"ep={ep}: {self.name} stages have no experts to split" + _shardable()
        if pp > 1 and not self.traits.shardable_pp:
            return f"pp={pp}: {self.name} stages are not pipeline-parallel" + _shardable()
        return None

    def settings(self, params: dict[str, Any]) -> Params:
        """The stage's parameters validated, with the kind's defaults filled in: what every
        phase reads (never `params.get(name, default)` with a default of its own)."""
        return _settings(self.name, json.dumps(params, sort_keys=True, default=str))

    def max_batch(self, params: dict[str, Any]) -> int:
        """The batch the runtime runs at: the stage's max_batch, else the kind's default."""
        value = params.get("max_batch")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        field = self.params.model_fields.get("max_batch")
        return int(field.default) if field is not None else self.traits.default_batch


@functools.lru_cache(maxsize=1024)
def _settings(kind: str, params_json: str) -> Params:
    return KINDS[kind].params.model_validate(json.loads(params_json))


def settings(kind: str, params: dict[str, Any]) -> Any:
    """`KINDS[kind].settings(params)`, typed loosely for the phases that read one field."""
    return KINDS[kind].settings(params)


def _shardable() -> str:
    tp = [k.name for k in KINDS.values() if k.traits.shardable_tp]
    ep = [k.name for k in KINDS.values() if k.traits.shardable_ep]
    pp = [k.name for k in KINDS.values() if k.traits.shardable_pp]
    return f" (tp: {', '.join(tp) or 'none'}; ep: {', '.join(ep) or 'none'}; pp: {', '.join(pp) or 'none'})"

_EMB = ("embedding",)
KV_MODALITY = "kv"  # a split LLM's KV edge (dialect KvType); never a spec's port
KINDS: dict[str, StageKind] = {
    k.name: k
    for k in (
        StageKind(
            "encoder", "image/audio/video/text encoder producing embeddings",
            (Port("x", ("image", "audio", "video", "text", "tokens")),),
            (Port("embeds", _EMB),), EncoderParams,
            Traits(shardable_tp=True, requires=frozenset({"transformers"}), components=("text_encoder",)),
        ),
        StageKind(
            "projector", "maps (and fuses) embeddings into another model's space",
            (Port("x", _EMB, variadic=True),), (Port("embeds", _EMB),), ProjectorParams,
        ),
        StageKind(
            "ar_llm", "autoregressive LLM: prefill + decode with a KV cache",
            (Port("prompt", ("text", "tokens")), Port("context", _EMB, optional=True, variadic=True)),
            (Port("text", ("text",)), Port("tokens", ("tokens",)), Port("hidden", _EMB)),
            ArLlmParams,
            Traits(autoregressive=True, kv_cache=True, streams=frozenset({"text", "tokens"}), continuous=True,
                   shardable_tp=True, shardable_pp=True, gated_mlp=True, requires=frozenset({"transformers"}),
                   bundle_forms=frozenset({"file", "weights", "checkpoint"}), batches=(1, 2, 4, 8, 16, 32, 64), file_role="gguf",
                   request_params=frozenset({"max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed",
                                             "system", "history"})),
        ),
        StageKind(
            "diffusion", "denoising loop over a scheduler",
            (Port("cond", ("embedding", "text")), Port("latents", ("latent",), optional=True)),
            (Port("latents", ("latent",)),), DiffusionParams,
            Traits(requires=frozenset({"diffusers"}), components=("transformer", "unet")),
        ),
        StageKind(
            "decoder", "VAE / codec decoder from latents to pixels or samples",
            (Port("latents", ("latent",)),), (), DecoderParams, Traits(components=("vae",)), outputs_from="modality",
        ),
        StageKind(
            "moe", "mixture-of-experts block: router + experts",
            (Port("x", _EMB),), (Port("y", _EMB),), MoeParams, Traits(shardable_ep=True, gated_mlp=True),
        ),
        StageKind(
            "vocoder", "codec tokens or features to a waveform",
            (Port("codes", ("tokens", "latent", "embedding")),), (Port("audio", ("audio",)),),
            AudioOutParams, Traits(streams=frozenset({"audio"}), continuous=True, file_role="onnx",
                                   bundle_forms=frozenset({"file", "weights", "code", "checkpoint"})),
        ),
        StageKind(
            "tts", "text to speech", (Port("text", ("text",)),), (Port("audio", ("audio",)),),
            AudioOutParams, Traits(streams=frozenset({"audio"}), continuous=True, file_role="onnx",
                                   bundle_forms=frozenset({"file"}), requires=frozenset({"onnxruntime", "piper-tts"}),
                                   precision=False),
        ),
        StageKind(
            "route", "data-dependent dispatch: one output per case, only the chosen fires",
            (Port("data", ANY_MODALITY), Port("key", ("text", "scalar", "tokens"))),
            (), RouteParams, Traits(bundle_forms=frozenset(), precision=False), needs_model=False, outputs_from="cases",
        ),
        StageKind(
            "custom", "any torch module; ports declared by the spec",
            (), (), CustomParams, Traits(bundle_forms=frozenset({"code"}), precision=False), outputs_from="declared",
        ),
    )
}

MODEL_SCHEMES: dict[str, str] = {
    "transformers": "a transformers class, e.g. transformers:LlamaForCausalLM",
    "diffusers": "a diffusers class, e.g. diffusers:UNet2DConditionModel",
    "py": "a Python import path module:attr of a torch module or factory",
    "gguf": "a GGUF file, or an installed package carrying one",
    "onnx": "an ONNX file, or an installed package carrying one",
    "safetensors": "a safetensors file, or an installed package carrying one",
    "pth": "a torch .pth state dict (loaded weights_only)",
}
