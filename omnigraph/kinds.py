"""The stage-kind registry: each kind's ports and parameters (the frontend's table).

Other phases key their own tables by the same kind names: type rules in
``passes/infer_types.py``; cost, lowering and execution rules in later phases.
Adding a kind adds one entry here and one in each of those tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from omnigraph.spec import NAME_PATTERN

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

    model_config = ConfigDict(extra="forbid")
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


class EncoderParams(Params):
    hidden_size: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)


class ProjectorParams(Params):
    in_dim: int | None = Field(None, ge=1)
    out_dim: int | None = Field(None, ge=1)


class ArLlmParams(Params):
    max_new_tokens: int = Field(64, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    system: str | None = None
    chat: bool = True  # apply the model's chat template
    max_batch: int = Field(32, ge=1)
    tokenizer: str | None = None  # a directory or gguf:… when the model ships none
    hidden_size: int | None = Field(None, ge=1)
    stream_chunk: Literal["token", "word", "sentence"] = "sentence"


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
    top_k: int = Field(2, ge=1)
    shared_experts: int = Field(0, ge=0)
    routing: Literal["top_k", "top_p"] = "top_k"
    top_p: float = Field(0.4, gt=0.0, le=1.0)  # routing="top_p": experts until this mass
    null_experts: int = Field(0, ge=0)
    hidden_size: int | None = Field(None, ge=1)


class AudioOutParams(Params):
    sample_rate: int = Field(22050, ge=1000)
    speaker: int | str | None = None
    length_scale: float = Field(1.0, gt=0.0)


class RouteParams(Params):
    cases: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(min_length=2)  # port names
    default: str | None = None


class CustomParams(Params):
    model_config = ConfigDict(extra="allow")  # forwarded to the user's module


@dataclass(frozen=True)
class StageKind:
    name: str
    summary: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    params: type[Params]
    needs_model: bool = True
    free_ports: bool = False  # custom: ports are whatever the spec declares

    def input_port(self, name: str) -> Port | None:
        if self.free_ports:
            return Port(name, ANY_MODALITY, variadic=True)
        return next((p for p in self.inputs if p.name == name), None)

    def output_ports(self, params: dict[str, Any], declared: dict[str, str] | None) -> tuple[Port, ...]:
        """Output ports, which for some kinds depend on parameters or declarations."""
        if self.name == "route":
            return tuple(Port(case, (SAME_AS_INPUT,)) for case in params.get("cases", []))
        if self.name == "decoder":
            modality = params.get("modality", "image")
            return (Port(modality, (modality,)),)
        if self.free_ports:
            return tuple(Port(n, (m,)) for n, m in (declared or {}).items())
        return self.outputs


_EMB = ("embedding",)
KINDS: dict[str, StageKind] = {
    k.name: k
    for k in (
        StageKind(
            "encoder", "image/audio/video/text encoder producing embeddings",
            (Port("x", ("image", "audio", "video", "text", "tokens")),),
            (Port("embeds", _EMB),), EncoderParams,
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
        ),
        StageKind(
            "diffusion", "denoising loop over a scheduler",
            (Port("cond", ("embedding", "text")), Port("latents", ("latent",), optional=True)),
            (Port("latents", ("latent",)),), DiffusionParams,
        ),
        StageKind(
            "decoder", "VAE / codec decoder from latents to pixels or samples",
            (Port("latents", ("latent",)),), (), DecoderParams,
        ),
        StageKind(
            "moe", "mixture-of-experts block: router + experts",
            (Port("x", _EMB),), (Port("y", _EMB),), MoeParams,
        ),
        StageKind(
            "vocoder", "codec tokens or features to a waveform",
            (Port("codes", ("tokens", "latent", "embedding")),), (Port("audio", ("audio",)),),
            AudioOutParams,
        ),
        StageKind(
            "tts", "text to speech", (Port("text", ("text",)),), (Port("audio", ("audio",)),),
            AudioOutParams,
        ),
        StageKind(
            "route", "data-dependent dispatch: one output per case, only the chosen fires",
            (Port("data", ANY_MODALITY), Port("key", ("text", "scalar", "tokens"))),
            (), RouteParams, needs_model=False,
        ),
        StageKind(
            "custom", "any torch module; ports declared by the spec",
            (), (), CustomParams, free_ports=True,
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
