"""What one request asks of each stage: WORK_RULES, a table keyed by stage kind.

A rule gets the stage's parameters (kind defaults filled in), its ArchProfile, the request
shape, the StageWork of the stages feeding it, and the modalities of the pipeline inputs
wired straight into it (`feeds`), and returns the stage's StageWork: tokens per forward,
repeats, decode steps and what it hands on. Sizes flow along the graph: a projector passes
on what its encoders produced, a talker writes speech tokens for what the thinker wrote.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from omnigraph.kinds import KINDS
from omnigraph.passes.planner.cost_types import ArchProfile, RequestShape, StageWork

AUDIO_FRAMES_PER_S = 25  # encoder frames per second of audio (100 mel frames/s, /4 by conv + pool)
VIDEO_TEMPORAL_DOWNSAMPLE = 4  # video VAEs (Wan, HunyuanVideo) fold 4 frames into one latent frame
TOKEN_ID_BYTES = 8  # an i64 token id (text travels as ids or a few UTF-8 bytes: same order)
LATENT_BYTES = 4  # latents travel as f32
AUDIO_SAMPLE_BYTES = 4  # f32 samples
PIXEL_BYTES = 3  # u8 RGB


@dataclass(frozen=True)
class WorkInput:
    kind: str
    params: Mapping[str, Any]
    profile: ArchProfile
    shape: RequestShape
    inputs: Sequence[StageWork]
    feeds: Sequence[str]

    def param(self, key: str) -> Any:
        """The stage's parameter, or its kind's default when the spec left it out."""
        if self.params.get(key) is not None:
            return self.params[key]
        field = KINDS[self.kind].params.model_fields.get(key) if self.kind in KINDS else None
        return field.default if field is not None else None

    @property
    def upstream_tokens(self) -> int:
        return sum(w.out_tokens for w in self.inputs)

    def feed_tokens(self, modalities: Sequence[str] | None = None) -> int:
        return sum(feed_tokens(m, self.shape) for m in (self.feeds if modalities is None else modalities))

    def emb_bytes(self, tokens: int, width: int | None = None) -> int:
        return tokens * (width or self.profile.hidden or 1) * self.profile.dtype_bytes


WorkRule = Callable[[WorkInput], StageWork]


def feed_tokens(modality: str, shape: RequestShape) -> int:
    """Tokens a pipeline input of `modality` brings: prompt tokens for text, image tokens for
    an image (a video's frames together: see workload.py), 25 frames per second of audio."""
    if modality in ("text", "tokens"):
        return shape.prompt_tokens
    if modality in ("image", "video"):
        return shape.image_tokens
    if modality == "audio":
        return round(AUDIO_FRAMES_PER_S * shape.audio_seconds)
    return 1 if modality == "scalar" else 0


def _encoder(w: WorkInput) -> StageWork:
    """Encoder: the tokens of its inputs (image tokens, audio frames, prompt tokens), merged
    by its spatial merge (2x2 in Qwen vision towers) into what it hands on, at most max_tokens.
    A fixed-resolution vision tower (SigLIP, CLIP) sees (image_size / patch)² tokens per image
    whatever the image: its own geometry, not the request shape's image tokens."""
    feeds = list(w.feeds) if w.inputs or w.feeds else [_guess_modality(w)]
    fixed = _fixed_image_tokens(w)
    tokens = w.upstream_tokens + sum(fixed if m == "image" and fixed else feed_tokens(m, w.shape) for m in feeds)
    out = math.ceil(tokens / max(1, w.profile.merge))
    cap = w.param("max_tokens")
    out = min(out, int(cap)) if cap else out
    return StageWork(tokens=tokens, out_tokens=out, out_bytes=w.emb_bytes(out, w.param("hidden_size")))


def _fixed_image_tokens(w: WorkInput) -> int | None:
    """Tokens per image of a tower that resizes to one resolution, from its profile or config."""
    config = w.params.get("config") or {}
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), Mapping) else {}
    size = w.profile.image_size or config.get("image_size") or vision.get("image_size")
    if len(w.profile.patch_size) >= 2:
        ph, pw = w.profile.patch_size[-2:]
    else:
        ph = pw = config.get("patch_size") or vision.get("patch_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, ph, pw)):
        return None
    return max(1, size // ph) * max(1, size // pw)


def _guess_modality(w: WorkInput) -> str:
    """An encoder's input when the caller did not say: audio for audio towers, image for
    patch-based ones, text for those with a token embedding table (T5, CLIP text)."""
    text = f"{w.profile.arch} {sorted((w.params.get('config') or {}))}".lower()
    if any(k in text for k in ("audio", "whisper", "mel", "speech", "wav")):
        return "audio"
    if w.profile.patch_size or any(k in text for k in ("vision", "vit", "siglip", "image", "patch")):
        return "image"
    return "text" if w.profile.embedding_params else "image"


def _projector(w: WorkInput) -> StageWork:
    """Projector: the sum of its inputs' tokens, mapped one to one."""
    tokens = w.upstream_tokens + w.feed_tokens()
    return StageWork(tokens=tokens, out_tokens=tokens, out_bytes=w.emb_bytes(tokens, w.param("out_dim")))


def _ar_llm(w: WorkInput) -> StageWork:
    """AR LLM: prefill = prompt + context tokens; it writes min(max_new_tokens, reply_tokens)
    for the user's prompt, or min(max_new_tokens, upstream tokens x speech_tokens_per_text_token)
    when another AR stage feeds it (a talker). The prefill writes the first token. The decode
    half of a split stage does the work its prefill half was given (it reads the KV edge)."""
    if w.params.get("phase") == "decode" and w.inputs:
        return w.inputs[0]
    ar_up = [u for u in w.inputs if u.decode_steps > 0]
    context = sum(u.out_tokens for u in w.inputs if u.decode_steps == 0)
    context += w.feed_tokens([m for m in w.feeds if m not in ("text", "tokens")])
    max_new = int(w.param("max_new_tokens"))
    if ar_up:  # a talker: speech codes for the text the upstream writes
        written = min(max_new, math.ceil(sum(u.out_tokens for u in ar_up) * w.shape.speech_tokens_per_text_token))
        prompt = w.feed_tokens([m for m in w.feeds if m in ("text", "tokens")])
    else:
        written = min(max_new, w.shape.reply_tokens)
        prompt = w.shape.prompt_tokens
    written = max(1, written)
    return StageWork(tokens=max(1, prompt + context), decode_steps=written - 1, out_tokens=written,
                     out_bytes=written * TOKEN_ID_BYTES + w.emb_bytes(written))


def _diffusion(w: WorkInput) -> StageWork:
    """Diffusion: latent tokens = (height, width) / downsample / patch (x latent frames for a
    video head, whose patch is (t, h, w)), run steps x CFG branches times (guidance > 1: two)."""
    down = int(w.param("downsample"))
    lh, lw = max(1, int(w.param("height")) // down), max(1, int(w.param("width")) // down)
    patch = w.profile.patch_size
    if len(patch) == 3:
        frames = (max(1, w.shape.video_frames) - 1) // VIDEO_TEMPORAL_DOWNSAMPLE + 1
        pt, ph, pw = patch
    else:
        frames, pt = 1, 1
        ph, pw = patch[-2:] if len(patch) >= 2 else (1, 1)
    cells = frames * lh * lw
    tokens = math.ceil(frames / pt) * math.ceil(lh / ph) * math.ceil(lw / pw)
    branches = max(int(w.param("cfg_branches")), 2 if float(w.param("guidance_scale")) > 1.0 else 1)
    return StageWork(tokens=tokens, repeats=int(w.param("steps")) * branches, out_tokens=cells,
                     out_bytes=cells * int(w.param("latent_channels")) * LATENT_BYTES)


def _decoder(w: WorkInput) -> StageWork:
    """Decoder: its latent cells in; pixels (upsample² per cell, x4 frames per latent frame
    for video) or audio samples (upsample per cell) out."""
    cells = w.upstream_tokens or w.feed_tokens() or 1
    up = int(w.param("upsample"))
    modality = w.param("modality")
    if modality == "audio":
        samples = cells * up
        return StageWork(tokens=cells, out_tokens=samples, out_bytes=samples * AUDIO_SAMPLE_BYTES)
    pixels = cells * up * up * (VIDEO_TEMPORAL_DOWNSAMPLE if modality == "video" else 1)
    return StageWork(tokens=cells, out_tokens=pixels, out_bytes=pixels * PIXEL_BYTES)


def _vocoder(w: WorkInput) -> StageWork:
    """Vocoder: codec tokens in; speech of (speech seconds per text token / codec tokens per
    text token) seconds per code out, at its sample rate."""
    codes = w.upstream_tokens or w.feed_tokens() or 1
    seconds = codes * w.shape.speech_seconds_per_text_token / max(1e-9, w.shape.speech_tokens_per_text_token)
    samples = round(seconds * int(w.param("sample_rate")))
    return StageWork(tokens=codes, out_tokens=samples, out_bytes=samples * AUDIO_SAMPLE_BYTES)


def _tts(w: WorkInput) -> StageWork:
    """TTS: the text tokens it is given; speech_seconds_per_text_token seconds of audio each."""
    tokens = w.upstream_tokens or w.feed_tokens() or 1
    samples = round(tokens * w.shape.speech_seconds_per_text_token * int(w.param("sample_rate")))
    return StageWork(tokens=tokens, out_tokens=samples, out_bytes=samples * AUDIO_SAMPLE_BYTES)


def _passthrough(w: WorkInput) -> StageWork:
    """MoE block, custom module: the tokens of its inputs, handed on one to one."""
    tokens = w.upstream_tokens + w.feed_tokens()
    return StageWork(tokens=tokens, out_tokens=tokens, out_bytes=w.emb_bytes(tokens, w.param("hidden_size")))


WORK_RULES: dict[str, WorkRule] = {
    "encoder": _encoder,
    "projector": _projector,
    "ar_llm": _ar_llm,
    "diffusion": _diffusion,
    "decoder": _decoder,
    "moe": _passthrough,
    "vocoder": _vocoder,
    "tts": _tts,
    "custom": _passthrough,
}


def stage_work(kind: str, params: Mapping[str, Any], profile: ArchProfile, shape: RequestShape,
               inputs: Sequence[StageWork], feeds: Sequence[str] = ()) -> StageWork:
    """One request's work for a stage of `kind`.

    `inputs`: the StageWork of the stages feeding it; `feeds`: the modalities of pipeline
    inputs wired straight into it. A stage given neither is taken to read the request's own
    input of its usual modality (an AR LLM the prompt, an encoder an image or audio).
    """
    rule = WORK_RULES.get(kind, _passthrough)
    return rule(WorkInput(kind, params, profile, shape, tuple(inputs), tuple(feeds)))


# Tokens per streamed chunk for an AR stage's stream_chunk setting (a sentence: ~20 tokens).
STREAM_CHUNK_TOKENS: dict[str, int] = {"token": 1, "word": 2, "sentence": 20}


def chunk_tokens(producer_params: Mapping[str, Any]) -> int:
    """Tokens per streamed chunk of an AR stage, from its stream_chunk setting."""
    return STREAM_CHUNK_TOKENS[KINDS["ar_llm"].settings(dict(producer_params)).stream_chunk]


def stream_chunks(producer_params: Mapping[str, Any], producer: StageWork) -> int:
    """How many chunks an AR producer streams for one request (one per chunk of tokens)."""
    return max(1, -(-(producer.decode_steps + 1) // chunk_tokens(producer_params)))


def chunked(work: StageWork, chunks: int) -> StageWork:
    """A stream-fed stage's work as the runtime runs it: one forward per chunk that arrives,
    each over its share of the tokens (batched with other requests' chunks)."""
    if chunks <= 1:
        return work
    return replace(work, tokens=max(1, -(-work.tokens // chunks)), repeats=work.repeats * chunks)
