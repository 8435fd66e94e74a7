"""One forward pass over the paged KV pool: what each row reads and where its new keys go.

A `PagedStep` lays a batch out as the model sees it: row r's cached positions, gathered from
the pool through its block table and left-padded to the widest row (the padding slot, hidden
by the mask), then the new positions the forward computes (left-padded too in a prefill
group). Attention goes through transformers' own attention code with a cache whose layers
(`PagedLayer`) write each new key and value into its slot of the pool and hand attention the
row's keys and values gathered from the pool, one layer at a time: the pool is the only
copy of the cache, and the gathered keys of one layer are the only transient memory.

`gather()` gives all layers at once, for the fused graphs (they take the cache as tensors).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from omnigraph.runtime.executors.kv_pool import KvPool, Seq


class PagedStep:
    """The gather and write indices of one forward for rows `seqs`, each adding `new[r]`
    positions (already allocated in its blocks) after its `seq.length` cached ones."""

    def __init__(self, pool: KvPool, seqs: list[Seq], new: list[int]) -> None:
        self.pool = pool
        self.seqs, self.new = seqs, new  # kept for `rows` (micro-batches of a pipeline-parallel stage)
        device = pool.device
        self.width = max(s.length for s in seqs)  # cached positions, left-padded
        self.new_width = max(new)
        read, write, mask_rows = [], [], []
        for seq, n in zip(seqs, new):
            pad = self.width - seq.length
            read.append([pool.pad] * pad + pool.slots(seq, 0, seq.length))
            write.append([pool.pad] * (self.new_width - n) + pool.slots(seq, seq.length, seq.length + n))
            mask_rows.append([0] * pad + [1] * seq.length + [0] * (self.new_width - n) + [1] * n)
        self.read = torch.tensor(read, dtype=torch.long, device=device).reshape(len(seqs), self.width)
        # What attention reads once the new keys are stored: the cached slots, then the new ones
        # (padding: the zero slot, masked), one gather a layer instead of a gather and a concat.
        self.attend = torch.tensor([r + w for r, w in zip(read, write)], dtype=torch.long,
                                   device=device).reshape(len(seqs), self.width + self.new_width)
        flat_write = [slot for row in write for slot in row]
        real = [i for i, slot in enumerate(flat_write) if slot != pool.pad]  # new positions not padding
        # None when every new position is real (a decode step): no selection a layer.
        self.real = None if len(real) == len(flat_write) else torch.tensor(real, dtype=torch.long, device=device)
        self.write = torch.tensor([flat_write[i] for i in real], dtype=torch.long, device=device)
        self.mask = torch.tensor(mask_rows, dtype=torch.long, device=device)
        # Each row's positions: its own, whatever the padding around it.
        self.positions = torch.tensor([[max(0, s.length + i - (self.new_width - n)) for i in range(self.new_width)]
                                       for s, n in zip(seqs, new)], dtype=torch.long, device=device)

    def rows(self, lo: int, hi: int) -> PagedStep:
        """The same forward for rows lo..hi-1 alone (before any of it has run)."""
        return PagedStep(self.pool, self.seqs[lo:hi], self.new[lo:hi])

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write the new positions' keys and values [rows, heads, new, dim] into their slots."""
        heads, dim = keys.shape[1], keys.shape[-1]
        pool_k, pool_v = self.pool.layer(layer, heads, dim)
        k = keys.transpose(1, 2).reshape(-1, heads, dim)
        v = values.transpose(1, 2).reshape(-1, heads, values.shape[-1])
        if self.real is not None:
            k, v = k.index_select(0, self.real), v.index_select(0, self.real)
        pool_k.index_copy_(0, self.write, k if k.dtype == pool_k.dtype else k.to(pool_k.dtype))
        pool_v.index_copy_(0, self.write, v if v.dtype == pool_v.dtype else v.to(pool_v.dtype))

    def cached(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' cached keys and values [rows, heads, width, dim], gathered from the pool."""
        pool_k, pool_v = self.pool.keys[layer], self.pool.values[layer]
        assert pool_k is not None and pool_v is not None, "a layer read before it was written"
        return pool_k[self.read].transpose(1, 2), pool_v[self.read].transpose(1, 2)

    def attended(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """After `store`: the rows' cached and new keys and values [rows, heads, width + new, dim]."""
        pool_k, pool_v = self.pool.keys[layer], self.pool.values[layer]
        assert pool_k is not None and pool_v is not None, "a layer read before it was written"
        return pool_k[self.attend].transpose(1, 2), pool_v[self.attend].transpose(1, 2)

    def gather(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.cached(layer) for layer in range(len(self.pool.keys))]

    def cache(self) -> Cache:
        """A transformers cache over the pool for this forward."""
        return Cache(layers=[PagedLayer(self, i) for i in range(len(self.pool.keys))])


class PagedLayer(CacheLayerMixin):
    """One layer of the pool as transformers' attention sees it during one forward."""

    is_sliding = False
    is_compileable = False

    def __init__(self, step: PagedStep, layer: int) -> None:
        super().__init__()
        self.step, self.layer = step, layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.step.store(self.layer, key_states, value_states)
        if self.step.width == 0:
            return key_states, value_states
        if key_states.dtype == value_states.dtype == self.step.pool.dtype:  # the pool holds them exactly
            return self.step.attended(self.layer)
        k, v = self.step.cached(self.layer)
        return torch.cat([k.to(key_states.dtype), key_states], dim=2), torch.cat([v.to(value_states.dtype),
                                                                                 value_states], dim=2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.step.width + query_length, 0

    def get_seq_length(self) -> int:
        return self.step.width

    def get_max_length(self) -> int:
        return -1
