"""The KV cache of an `ar_llm` stage: one pool of fixed-size blocks, allocated once.

The pool holds, per layer, keys and values for `blocks x block_tokens` token slots
([slots, kv_heads, head_dim]); a request owns a block table (the blocks its positions live
in, in order) and takes a block whenever its last one is full, so memory follows the tokens
actually cached, never more than the plan's budget. One extra slot at the end is padding:
rows of a batch are left-padded by gathering it (their mask hides it).

Prefix caching: a full block is named by a hash of its tokens and of every token before it
(a chain), and is kept, read-only, after its request ends; a new prompt that starts with the
same tokens (a system prompt, a chat history) shares those blocks and skips their prefill.
Blocks nobody uses stay cached until the pool needs them (least recently used first).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch

_ROOT = b"omnigraph-kv"


def chain_hash(parent: bytes, tokens: list[int]) -> bytes:
    """The name of a full block: its tokens and, through `parent`, every token before them."""
    return hashlib.blake2b(parent + b"|" + ",".join(map(str, tokens)).encode(), digest_size=16).digest()


@dataclass
class Seq:
    """A request's place in the pool: its blocks in order and the positions they hold."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0  # positions cached
    tokens: list[int] | None = field(default_factory=list)  # ids of those positions (None: embeddings)
    hashes: list[bytes] = field(default_factory=list)  # chain hashes of its full blocks, published


@dataclass
class PoolStats:
    blocks: int
    block_tokens: int
    bytes: int
    peak_blocks: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, tokens whose KV was reused
    preemptions: int = 0


class KvPool:
    """`blocks` blocks of `block_tokens` slots for `layers` layers. A layer's tensors are made
    when its first keys arrive (their heads and width are the model's as it runs, sharded or
    not), with torch.empty: pages of blocks never used are never touched, nor resident."""

    def __init__(self, layers: int, block_tokens: int, blocks: int, dtype: torch.dtype,
                 device: torch.device | str, token_bytes: int) -> None:
        if blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.block_tokens = block_tokens
        self.pad = blocks * block_tokens  # the padding slot
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self._free: deque[int] = deque(range(blocks))
        self._refs = [0] * blocks
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, oldest first
        self.token_bytes = token_bytes
        self.stats = PoolStats(blocks, block_tokens, blocks * block_tokens * token_bytes)

    def layer(self, i: int, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values [slots + 1, heads, dim], made on first use."""
        keys, values = self.keys[i], self.values[i]
        if keys is None or values is None:
            keys = torch.empty(self.pad + 1, heads, dim, dtype=self.dtype, device=self.device)
            values = torch.empty_like(keys)
            keys[self.pad].zero_()
            values[self.pad].zero_()
            self.keys[i], self.values[i] = keys, values
        return keys, values

    # -- blocks ----------------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Blocks that can be taken now (free, or cached and idle)."""
        return len(self._free) + len(self._idle)

    @property
    def in_use(self) -> int:
        return self.stats.blocks - self.available

    def blocks_needed(self, seq: Seq, tokens: int) -> int:
        """New blocks `seq` needs to hold `tokens` more positions."""
        have = len(seq.blocks) * self.block_tokens
        return max(0, math.ceil((seq.length + tokens - have) / self.block_tokens))

    def grow(self, seq: Seq, tokens: int) -> bool:
        """Give `seq` room for `tokens` more positions; False (and nothing taken) if the pool
        cannot."""
        need = self.blocks_needed(seq, tokens)
        if need > self.available:
            return False
        for _ in range(need):
            seq.blocks.append(self._take())
        self.stats.peak_blocks = max(self.stats.peak_blocks, self.in_use)
        return True

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:  # reuse the least recently used cached block
            block, _ = self._idle.popitem(last=False)
            del self._by_hash[self._hash_of.pop(block)]
        self._refs[block] = 1
        return block

    def release(self, seq: Seq) -> None:
        """`seq` gives its blocks back; published ones stay cached for the next prompt."""
        for block in seq.blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._idle[block] = None
                else:
                    self._free.append(block)
        seq.blocks, seq.length, seq.hashes = [], 0, []

    # -- prefix cache ----------------------------------------------------------------------
    def share_prefix(self, seq: Seq, prompt: list[int]) -> int:
        """Give an empty `seq` the cached blocks `prompt` starts with (never its last token:
        the prefill must compute at least one position); returns the tokens reused."""
        bt = self.block_tokens
        parent = _ROOT
        reusable = (len(prompt) - 1) // bt
        self.stats.prefix_queries += len(prompt)
        for i in range(reusable):
            h = chain_hash(parent, prompt[i * bt:(i + 1) * bt])
            block = self._by_hash.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._idle[block]
            self._refs[block] += 1
            seq.blocks.append(block)
            seq.hashes.append(h)
            parent = h
        seq.length = len(seq.blocks) * bt
        seq.tokens = list(prompt[:seq.length])
        self.stats.prefix_hits += seq.length
        self.stats.peak_blocks = max(self.stats.peak_blocks, self.in_use)
        return seq.length

    def publish(self, seq: Seq) -> None:
        """Name `seq`'s newly filled blocks so later prompts can share them."""
        if seq.tokens is None:
            return
        bt = self.block_tokens
        while len(seq.hashes) < seq.length // bt:
            i = len(seq.hashes)
            h = chain_hash(seq.hashes[-1] if seq.hashes else _ROOT, seq.tokens[i * bt:(i + 1) * bt])
            block = seq.blocks[i]
            if h not in self._by_hash and block not in self._hash_of:
                self._by_hash[h] = block
                self._hash_of[block] = h
            seq.hashes.append(h)

    # -- slots -----------------------------------------------------------------------------
    def slots(self, seq: Seq, start: int, stop: int) -> list[int]:
        """Pool slots of positions start..stop-1 of `seq`."""
        bt = self.block_tokens
        return [seq.blocks[p // bt] * bt + p % bt for p in range(start, stop)]

    # -- hand-over (prefill → decode, migration) ----------------------------------------------
    def read(self, seq: Seq) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of `seq`'s cached keys and values, per layer [length, heads, dim]: what
        another instance's pool takes back with `write` (kv_handoff.py)."""
        slots = torch.tensor(self.slots(seq, 0, seq.length), dtype=torch.long, device=self.device)
        keys, values = [], []
        for k, v in zip(self.keys, self.values):
            if k is None or v is None:
                raise RuntimeError("a KV layer was never written: nothing to hand over")
            keys.append(k[slots].clone())
            values.append(v[slots].clone())
        return keys, values

    def write(self, seq: Seq, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Put positions 0..n-1 of an empty `seq` (whose blocks already hold room for them:
        grow) from another pool's `read`."""
        if len(keys) != len(self.keys):
            raise ValueError(f"the handed-over KV has {len(keys)} layers; this model has {len(self.keys)}")
        n = keys[0].shape[0]
        slots = torch.tensor(self.slots(seq, 0, n), dtype=torch.long, device=self.device)
        for i, (k, v) in enumerate(zip(keys, values)):
            pool_k, pool_v = self.layer(i, k.shape[1], k.shape[2])
            if pool_k.shape[1:] != k.shape[1:]:
                raise ValueError(f"the handed-over KV has {tuple(k.shape[1:])} heads x dim per layer; "
                                 f"this pool holds {tuple(pool_k.shape[1:])}")
            pool_k.index_copy_(0, slots, k.to(self.device, pool_k.dtype))
            pool_v.index_copy_(0, slots, v.to(self.device, pool_v.dtype))
        seq.length = n
