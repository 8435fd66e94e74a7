"""Conversions between runtime values (see values.py) and model tensors, shared by executors.

Images enter models as float [N, 3, H, W] normalized per channel and leave them as
pixels in [-1, 1]; audio enters as Whisper-style log-mel features; text without a
tokenizer enters as UTF-8 byte ids (no hub, so no vocabulary files to read).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from omnigraph.runtime.values import Audio

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]

# Per model family (config.model_type); the rest use 0.5/0.5, which SigLIP and ViT do.
_CLIP: MeanStd = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGE_NORM: dict[str, MeanStd] = {"clip": _CLIP, "clip_vision_model": _CLIP}
DEFAULT_NORM: MeanStd = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# The Whisper front end, which most audio encoders (Whisper, Qwen2-Audio, AuT) share.
MEL_RATE = 16_000
MEL_FFT = 400
MEL_HOP = 160


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """A uint8 [3, H, W] image from [C, H, W] with C in 1 (grey), 3 or 4 (alpha dropped)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image [3, H, W], got shape {list(image.shape)}")
    return image[:3] if image.shape[0] != 1 else image.expand(3, -1, -1)


def image_pixels(images: torch.Tensor, size: tuple[int, int] | None, norm: MeanStd = DEFAULT_NORM) -> torch.Tensor:
    """uint8 [N, 3, H, W] → normalized float32 [N, 3, *size] (size None: keep H, W)."""
    x = images.float() / 255.0
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    return (x - mean) / std


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (any layout) → uint8 in [0, 255], on the CPU."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def image_size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    """A config's image_size (an int or [h, w]) as (h, w)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def resample(samples: np.ndarray, rate: int, target: int) -> torch.Tensor:
    """Mono samples at `rate` → float32 at `target` (linear; enough for features)."""
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).flatten()
    if rate == target or x.numel() == 0:
        return x
    n = max(1, round(x.numel() * target / rate))
    return F.interpolate(x.view(1, 1, -1), size=n, mode="linear", align_corners=False).view(-1)


_MEL_FILTERS: dict[int, torch.Tensor] = {}


def _mel_filters(n_mels: int) -> torch.Tensor:
    if n_mels not in _MEL_FILTERS:
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(num_frequency_bins=MEL_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=MEL_RATE / 2, sampling_rate=MEL_RATE, norm="slaney",
                               mel_scale="slaney")
        _MEL_FILTERS[n_mels] = torch.from_numpy(bank).float().T  # [n_mels, freqs]
    return _MEL_FILTERS[n_mels]


def log_mel(audio: Audio, n_mels: int, frames: int | None = None) -> torch.Tensor:
    """Whisper-style log-mel features [n_mels, frames] at 16 kHz, 10 ms hop.

    `frames` fixes the window (encoders with a fixed input length): longer audio is
    cut, shorter is zero-padded, as Whisper's feature extractor does.
    """
    x = resample(audio.samples, audio.sample_rate, MEL_RATE)
    if frames is not None:
        x = F.pad(x, (0, max(0, frames * MEL_HOP - x.numel())))[: frames * MEL_HOP]
    if x.numel() < MEL_FFT:
        x = F.pad(x, (0, MEL_FFT - x.numel()))
    spec = torch.stft(x, MEL_FFT, MEL_HOP, window=torch.hann_window(MEL_FFT), return_complex=True)
    power = spec[:, :-1].abs() ** 2  # Whisper drops the last frame
    mel = torch.clamp(_mel_filters(n_mels) @ power, min=1e-10).log10()
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0


def byte_ids(text: str, vocab_size: int | None = None) -> torch.Tensor:
    """UTF-8 bytes as token ids [L] (folded into the vocabulary when it is smaller)."""
    ids = torch.tensor(list(text.encode("utf-8")) or [0], dtype=torch.long)
    return ids % vocab_size if vocab_size else ids
