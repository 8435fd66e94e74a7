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


def input_problem(modality: str, value: Any) -> str | None:
    """Why `value` cannot be a pipeline input of `modality` (None: it can); checked before
    any stage runs, so a wrong type fails the request at once, naming the input."""
    if modality == "text":
        return None if isinstance(value, str) else f"text is a str, not {type(value).__name__}"
    if modality == "scalar":
        if isinstance(value, bool) or (isinstance(value, (int, float)) and np.isfinite(value)):
            return None
        return f"a scalar is a finite number or a bool, not {value!r:.40}"
    if modality == "audio":
        if isinstance(value, Audio):
            samples = np.asarray(value.samples)
            if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating) or value.sample_rate <= 0:
                return "audio is mono float samples with a positive sample rate"
            return None
        return f"audio is an omnigraph Audio (samples + sample_rate), not {type(value).__name__}"
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype"):
        if modality == "tokens" and isinstance(value, (list, tuple)) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in value):
            return None
        return f"{modality} is a tensor, not {type(value).__name__}"
    rank = {"image": (3,), "video": (4,), "tokens": (1,), "latent": (2, 3, 4, 5), "embedding": (1, 2, 3)}.get(modality)
    if rank is not None and len(shape) not in rank:
        want = " or ".join(str(r) for r in rank)
        return f"{modality} is a {want}-D tensor, got shape {tuple(shape)}"
    if any(int(d) == 0 for d in shape):
        return f"{modality} tensor has an empty dimension: shape {tuple(shape)}"
    return None
