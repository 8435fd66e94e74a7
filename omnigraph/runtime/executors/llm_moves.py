"""Requests that move between `ar_llm` instances with their KV cache (kv_handoff.py).

A mixin of ArLlmExecutor (it reads the executor's pool, queues and settings): the prefill
half of a split stage hands each prefilled request on (`_hand_on`); the decode half takes
it in (`_handed_over`, then `_take_handoff` on admission); any instance lets a running
request go (`export`) and another takes it back (`_adopt`), tokens unchanged.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import torch

from omnigraph.kinds import ArLlmParams
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.kv_handoff import KvHandoff
from omnigraph.runtime.executors.kv_pool import KvPool, Seq
from omnigraph.runtime.executors.llm_request import MOVED, STATE, LlmRequest


class KvMoves:
    pool: KvPool
    settings: ArLlmParams
    device: Any
    fingerprint: str
    _waiting: deque[LlmRequest]
    _running: list[LlmRequest]
    _admitted: int

    def _handed_over(self, item: WorkItem, settings: ArLlmParams) -> LlmRequest:
        """A request a prefill instance prefilled: its KV joins the pool on admission."""
        handoff = item.inputs["kv"]
        if not isinstance(handoff, KvHandoff):
            raise TypeError(f"the kv input is a {type(handoff).__name__}, not a prefill's hand-off")
        if handoff.model != self.fingerprint:
            raise ValueError(f"the KV was computed by {handoff.model}; this stage runs {self.fingerprint}")
        self._admitted += 1
        return LlmRequest(item, handoff.prompt.to(self.device), handoff.ids, settings, self._text_stream(settings),
                        self._generator(item, handoff.ids or [], settings), self._admitted,
                        Seq(tokens=[] if handoff.ids is not None else None), handoff=handoff)

    def _take_handoff(self, req: LlmRequest) -> bool:
        """Admit a request whose KV was computed elsewhere: into free blocks, then on as if
        this instance had prefilled it (a prefill's hand-off: its first token now). False
        when the pool has no room yet (it waits, first in line)."""
        handoff = req.handoff
        assert handoff is not None
        need = handoff.positions
        if self.pool.blocks_needed(Seq(length=0), need) > self.pool.stats.blocks:
            self._waiting.popleft()
            req.item.fail(ValueError(f"the request needs {need} positions of KV cache; the pool holds "
                                     f"{self.pool.stats.blocks * self.pool.block_tokens} (the plan's KV budget)"))
            return True
        if not self.pool.grow(req.seq, need):
            return False
        self._waiting.popleft()
        req.handoff = None
        self.pool.write(req.seq, handoff.keys, handoff.values)
        if req.seq.tokens is not None:
            req.seq.tokens = (req.ids or []) + req.tokens[:-1] if req.tokens else list(req.ids or [])
            self.pool.publish(req.seq)
        self._running.append(req)
        if handoff.logits is not None:
            try:
                self._accept(req, handoff.logits.to(self.device), None if handoff.hidden is None
                             else handoff.hidden.to(self.device))
            except Exception as exc:
                req.item.fail(exc)
        return True

    def _hand_on(self, req: LlmRequest, logits: torch.Tensor, hidden: torch.Tensor | None) -> None:
        """A prefill instance's end of a request: its KV and last logits out on `kv`."""
        try:
            keys, values = self.pool.read(req.seq)
            req.item.emit("kv", KvHandoff(req.prompt, req.ids, keys, values, logits.clone(),
                                          None if hidden is None else hidden.clone(), self.fingerprint))
        except Exception as exc:
            req.item.fail(exc)
        finally:
            self.pool.release(req.seq)
        req.item.finish()

    # -- migration ---------------------------------------------------------------------------
    def export(self, item: WorkItem) -> bool:
        """Take a request out of this instance so that another instance of the stage can go
        on with it (`adopt` there): its KV leaves with it; it keeps its tokens, text stream and
        sampler. False when it is not here, already ended, or mid-prefill (nothing to move)."""
        req = item.state.get(STATE)
        if not isinstance(req, LlmRequest) or item.dead or req not in self._running + list(self._waiting):
            return False
        if req in self._running:
            keys, values = self.pool.read(req.seq)
            req.handoff = KvHandoff(req.prompt, req.ids, keys, values, None, None, self.fingerprint)
            self._running.remove(req)
        else:  # waiting: it recomputes (or takes its hand-off) wherever it goes
            self._waiting.remove(req)
        self.pool.release(req.seq)
        item.state[MOVED] = item.state.pop(STATE)
        return True

    def _adopt(self, req: LlmRequest) -> None:
        self._admitted += 1
        req.order = self._admitted
        if req.handoff is None:  # it had no KV where it was: recomputed here from its prompt and tokens
            req.seq = Seq(tokens=[] if req.ids is not None else None)
        self._waiting.append(req)
