"""Values that flow between stages, per modality, and how stream chunks join up.

text → str; tokens → 1-D int64 tensor; image → uint8 [3, H, W] tensor;
audio → `Audio` (float32 samples + rate); embedding → [seq, hidden] tensor;
latent → [C, H, W] tensor; scalar → float or bool; video → uint8 [T, 3, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class _Skipped:
    """The value of a route case not taken; stages reading it are skipped."""

    _instance: _Skipped | None = None

    def __new__(cls) -> _Skipped:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = _Skipped()


@dataclass
class Audio:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def join_chunks(modality: str, chunks: list[Any]) -> Any:
    """The whole value a stream carried."""
    if modality == "text":
        return "".join(chunks)
    if modality == "audio":
        if not chunks:
            return Audio(np.zeros(0, dtype=np.float32), 22050)
        return Audio(np.concatenate([c.samples for c in chunks]).astype(np.float32), chunks[0].sample_rate)
    if not chunks:
        return None
    import torch

    return torch.cat([torch.as_tensor(c) for c in chunks], dim=0)


def truthy(value: Any) -> bool:
    """A loop condition or a route decision read as a boolean."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "accept", "accepted", "ok")
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return bool(value.float().mean() > 0.5) if value.numel() else False
    except ImportError:  # pragma: no cover
        pass
    return bool(value)
