"""Outputs of a stage kept by the content of their input: an image (or clip, or text) seen
again is not encoded again. Keys are a hash of the prepared model input (its bytes, shape and
dtype), so two requests sending the same picture share one forward whatever the request. The
cache is bounded by bytes and evicts the least recently used; hits and misses are counted."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch


def content_key(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{tuple(t.shape)}|{t.dtype}|".encode(), digest_size=20)
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.digest()


def _nbytes(outputs: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in outputs.values() if isinstance(v, torch.Tensor))


class OutputCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> dict[str, Any] | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in found.items()}  # callers may edit

    def put(self, key: bytes, outputs: dict[str, Any]) -> None:
        size = _nbytes(outputs)
        if size > self.max_bytes or key in self.entries:
            return
        self.entries[key] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _nbytes(old)

    def stats(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_bytes": self.bytes,
                "cache_entries": len(self.entries)}
