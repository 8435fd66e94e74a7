"""Conversions between runtime values (see values.py) and model tensors, shared by executors.

Images leave models as pixels in [-1, 1]; text without a tokenizer enters as UTF-8 byte ids.
How images and audio enter an encoder is its processors' job (processors.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """A uint8 [3, H, W] image from [C, H, W] with C in 1 (grey), 3 or 4 (alpha dropped)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image [3, H, W], got shape {list(image.shape)}")
    return image[:3] if image.shape[0] != 1 else image.expand(3, -1, -1)


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
    """Mono samples at `rate` → float32 at `target`, band-limited (soxr: no aliasing of what
    lies above the new Nyquist); linear interpolation where soxr is not installed."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if rate == target or x.size == 0:
        return torch.from_numpy(x.copy())
    try:
        import soxr
    except ImportError:
        n = max(1, round(x.size * target / rate))
        t = torch.from_numpy(x.copy()).view(1, 1, -1)
        return F.interpolate(t, size=n, mode="linear", align_corners=False).view(-1)
    return torch.from_numpy(np.ascontiguousarray(soxr.resample(x, rate, target, quality="HQ"), dtype=np.float32))


def byte_ids(text: str, vocab_size: int | None = None) -> torch.Tensor:
    """UTF-8 bytes as token ids [L] (folded into the vocabulary when it is smaller)."""
    ids = torch.tensor(list(text.encode("utf-8")) or [0], dtype=torch.long)
    return ids % vocab_size if vocab_size else ids
