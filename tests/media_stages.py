"""Python stages for the media executor tests (referenced as `py:media_stages:NAME`)."""
from __future__ import annotations

import torch


class TextEmbedding:
    """Text → [len, width] embedding: a seeded table over UTF-8 bytes, standing in for an
    LLM's hidden states (the ar_llm stage is tested elsewhere)."""

    def __init__(self, width: int, seed: int = 0) -> None:
        self.table = torch.randn(256, width, generator=torch.Generator().manual_seed(seed))

    def __call__(self, in0: str) -> dict:
        return {"embeds": self.table[list(in0.encode("utf-8"))]}
