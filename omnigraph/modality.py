"""Modalities and element types that ports carry (shared by spec and dialect)."""
from __future__ import annotations

MODALITIES: tuple[str, ...] = (
    "text",  # UTF-8 strings
    "tokens",  # integer token ids
    "image",
    "audio",
    "video",
    "latent",  # diffusion / VAE latents
    "embedding",  # hidden states or encoder features, [seq, hidden]
    "scalar",  # a flag or score: loop conditions, verifier verdicts
)

DTYPES: tuple[str, ...] = (
    "utf8", "bool", "u8", "i32", "i64", "f16", "bf16", "f32", "f64", "fp8",
)

# What a port of each modality holds when a spec says no more than the modality.
DEFAULT_DTYPE: dict[str, str] = {
    "text": "utf8",
    "tokens": "i64",
    "image": "u8",
    "audio": "f32",
    "video": "u8",
    "latent": "f32",
    "embedding": "f32",
    "scalar": "f32",
}
DEFAULT_SHAPE: dict[str, tuple[int | None, ...]] = {
    "text": (None,),  # characters
    "tokens": (None,),
    "image": (3, None, None),  # CHW
    "audio": (None,),  # mono samples
    "video": (None, 3, None, None),  # TCHW
    "latent": (None, None, None),  # CHW
    "embedding": (None, None),  # [sequence, hidden]
    "scalar": (),
}
