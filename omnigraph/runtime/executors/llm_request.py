"""One request inside an `ar_llm` instance: its prompt, its place in the KV pool, what it wrote."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from omnigraph.kinds import ArLlmParams
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.kv_handoff import KvHandoff
from omnigraph.runtime.executors.kv_pool import Seq
from omnigraph.runtime.executors.llm_text import TextStream

STATE = "ar_llm"  # key of a request's LlmRequest in WorkItem.state
MOVED = "ar_llm.moved"  # the same, while it travels to another instance (migration)


@dataclass
class LlmRequest:
    item: WorkItem
    prompt: torch.Tensor  # token ids [len], or embeddings [len, hidden] with the context
    ids: list[int] | None  # the prompt's token ids when it is only tokens (prefix caching)
    settings: ArLlmParams  # the stage's params with this request's own over them
    text: TextStream
    generator: torch.Generator | None
    order: int  # admission order: the latest is preempted first
    seq: Seq = field(default_factory=Seq)
    tokens: list[int] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)
    handoff: KvHandoff | None = None  # KV computed elsewhere, to take into the pool on admission

    @property
    def alive(self) -> bool:
        return not self.item.dead

    def todo(self, embed: Any) -> torch.Tensor:
        """The positions still to compute: its prompt and the tokens it wrote (after a
        preemption), minus those the pool already holds."""
        if self.ids is not None:
            ids = self.ids + self.tokens
            return torch.tensor(ids[self.seq.length:], device=self.prompt.device)
        whole = self.prompt
        if self.tokens:
            whole = torch.cat([whole, embed(torch.tensor(self.tokens, device=whole.device)).to(whole.dtype)])
        return whole[self.seq.length:]
