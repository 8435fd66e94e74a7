"""The planner's shared vocabulary: what a stage is (ArchProfile), what one request asks of
it (StageWork), how it may be parallelised (ParallelConfig) and what that costs (StageCost).

The cost rules (passes/planner/cost_rules.py) produce these, the planner (plan-parallel,
place-devices, plan-memory) chooses among them, and the simulator (passes/sim/)
replays them request by request. Times are seconds, sizes bytes, rates per second.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DTYPE_BYTES: dict[str, int] = {"f32": 4, "f16": 2, "bf16": 2, "fp8": 1}


@dataclass(frozen=True)
class ArchProfile:
    """One stage's module, as the cost rules see it (from a `meta` instance or its config)."""

    params: int  # parameter count, as torch counts it (sum of numel over module.parameters())
    dtype_bytes: int = 2
    expert_params: int = 0  # of `params`, those in routed experts (ep shards them; idle ones offload)
    active_params: int = 0  # touched per token: all dense ones + top-k of the routed experts
    embedding_params: int = 0  # lookup tables: read a row per token, no FLOPs
    layers: int = 0  # transformer blocks (0: not a transformer)
    hidden: int = 0
    heads: int = 0  # attention query heads; tp must divide them
    kv_heads: int = 0  # 0 for stages with no KV cache
    head_dim: int = 0
    experts: int = 0  # routed experts; 0 = dense; ep must divide them
    experts_per_token: int = 0
    # How the count was made: "meta" (an instance, as torch counts), "checkpoint" (structure on
    # meta from a checkpoint's config, the count from its safetensors headers), "file" (a weights
    # file's header), "config" (formulas over the config's sizes), "guess" (nothing to go on).
    source: str = "config"
    arch: str = ""  # the class it was built from, for messages
    # Of `params`, those in audio/vision/VQ towers of an omni or VLM class: they run once over
    # their own inputs, never per generated token (an AR stage's decode does not read them).
    encoder_params: int = 0
    patch_size: tuple[int, ...] = ()  # DiT/ViT patch, (t, h, w) or (h, w): latent cells per token
    image_size: int = 0  # a fixed-resolution vision tower resizes every image to this (0: dynamic)
    merge: int = 1  # input tokens an encoder merges into one output token (2x2 spatial merge: 4)
    note: str = ""  # why this is an estimate (a class that failed to build, nothing to go on)

    @property
    def param_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for one token across all layers (0 when the stage keeps no KV cache)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class RequestShape:
    """The sizes of one kind of request; a mix is a weighted list of these."""

    name: str = "default"
    weight: float = 1.0
    prompt_tokens: int = 256  # text tokens in the user's prompt (incl. the chat template)
    reply_tokens: int = 128  # tokens the first AR LLM writes (capped by its max_new_tokens)
    image_tokens: int = 1024  # tokens an image encoder sees per input image (after patching)
    audio_seconds: float = 10.0  # input audio length
    speech_tokens_per_text_token: float = 4.0  # codec tokens a talker writes per reply token
    speech_seconds_per_text_token: float = 0.3  # output speech per reply token (TTS, vocoder)
    video_frames: int = 81  # frames a video head generates (Wan: 81 = 5 s at 16 fps)


@dataclass(frozen=True)
class StageWork:
    """What one request asks of one stage.

    A forward over `tokens` tokens, `repeats` times (diffusion: steps x CFG branches), then for
    AR stages `decode_steps` single-token steps whose KV context grows from `tokens`.
    """

    tokens: int = 0
    repeats: int = 1
    decode_steps: int = 0
    out_tokens: int = 0  # what it hands downstream (tokens, frames, patches)
    out_bytes: int = 0  # the size of that hand-off, for the link between stages


@dataclass(frozen=True, order=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    batch: int = 1  # the batch the stage runs at (AR: concurrent sequences in decode)

    @property
    def devices(self) -> int:
        """Devices one replica occupies (EP groups reuse the TP ranks when ep <= tp)."""
        return self.tp * self.pp * max(1, self.ep // self.tp)

    def label(self) -> str:
        parts = [f"tp{self.tp}"] + [f"{k}{v}" for k, v in (("pp", self.pp), ("ep", self.ep)) if v > 1]
        return "·".join(parts) + f" b{self.batch}"


@dataclass(frozen=True)
class StageCost:
    """One (stage, config) pair, scored for the average request of the mix."""

    config: ParallelConfig
    devices: int  # per replica
    mem_per_device: int  # bytes: weight shard + KV for `batch` sequences + activations
    weight_bytes_per_device: int
    kv_bytes_per_device: int
    activation_bytes: int
    latency_s: float  # one request, alone in a batch of `batch`, start to last output
    first_output_s: float  # start to first streamed chunk (TTFT for AR stages)
    throughput: float  # requests/s one replica sustains at this batch
    breakdown: dict[str, float] = field(default_factory=dict)  # compute/memory/comm/bubble seconds
