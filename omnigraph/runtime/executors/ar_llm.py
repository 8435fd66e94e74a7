"""`ar_llm`: an autoregressive LLM with continuous batching.

Each `step` prefills the work items that just arrived, together in left-padded forward
passes (their first token comes from the prefill), and then runs one batched decode step
for every running request whose output streams have room. Requests join and leave the
running batch at any step.

The KV cache is one pool of blocks (kv_pool.py), sized by the plan's KV budget: a request
takes blocks as it grows and gives them back when it ends. When the pool is full, new
requests wait (they are not failed); a running request that cannot grow is preempted (the
latest admitted first), its blocks freed, and recomputed later from its prompt and the
tokens it already wrote (vLLM's recompute preemption), so its text goes on where it was.
Prompts that start with cached blocks (a shared system prompt) reuse them (prefix caching).

The forward passes run through the stage's fused prefill and decode-step graphs when the
plan carries kernels for both and they apply here (a GPU, or the Triton interpreter asked
for; see runtime/fused_stage.py), else through the module's own forward (llm_calls.py).

Ports: `prompt` (text, formatted with the chat template unless chat is false, or
tokens used as is) and optional `context` embeddings [seq, hidden], prepended to the
prompt's token embeddings. Outputs: `text`, `tokens` (generated ids, EOS excluded)
and `hidden` (for each generated token, the last layer's state that predicted it:
[n_tokens, hidden]). A streamed port gets a chunk per step (text: per
`stream_chunk`); any other is emitted whole at the end.

Split stages (`phase`, set by the planner's split-prefill-decode): a `prefill` instance
prefills and hands each request on whole through its `kv` port (kv_handoff.py); a `decode`
instance takes those into its pool and generates from the first token on. A running request
can also leave for another instance of the stage (`export` / migration, LocalBackend.migrate).

Sampling (temperature > 0) draws from a generator per request. With `seed` set it is
seeded from the seed and the prompt, so a request samples the same text whatever
ran before it or beside it; without one, from the request id.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from collections import deque
from typing import Any

import torch

from omnigraph.kinds import ArLlmParams
from omnigraph.runtime.executor import Executor, WorkItem
from omnigraph.runtime.executors.cpu_linear import optimize_linears
from omnigraph.runtime.executors.kv_handoff import model_fingerprint
from omnigraph.runtime.executors.kv_pool import KvPool, Seq
from omnigraph.runtime.executors.llm_moves import KvMoves
from omnigraph.runtime.executors.llm_request import MOVED, STATE, LlmRequest
from omnigraph.runtime.executors.llm_inputs import (context_embeddings, device_memory, eos_ids, gather_streams,
                                                     prompt_tokens)
from omnigraph.runtime.executors.llm_batch import choose_token, forward_rows
from omnigraph.runtime.executors.llm_calls import FusedCalls, LlmCalls, ModuleCalls
from omnigraph.runtime.executors.llm_loading import load_causal_lm
from omnigraph.runtime.executors.llm_text import TextStream
from omnigraph.runtime.fused_stage import fused_entry

UNPLANNED_POOL_SHARE = 0.25  # of the device's memory, for a KV pool the plan did not size


class ArLlmExecutor(KvMoves, Executor):

    def load(self) -> None:
        params = {k: v for k, v in self.params.items() if k != "tokenizer"}  # see llm_loading
        self.settings = ArLlmParams.model_validate(params)
        self.model, self.tokenizer = load_causal_lm(self.node, self.ctx.device, self.ctx.seed)
        frame = self.node.program.facts.get("chat_frame") if self.node.program else None
        self.frame: tuple[str, str] | None = (str(frame[0]), str(frame[1])) if frame else None
        self.device = self.model.device
        self.embed = self.model.get_input_embeddings()
        self.eos = eos_ids(self.model, self.tokenizer)
        self.takes_embeds = "inputs_embeds" in inspect.signature(self.model.forward).parameters
        self.max_positions: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.modality = {b.port: b.modality for b in self.node.inputs}
        self.calls: LlmCalls = self._fused_calls() or ModuleCalls(self.model)
        self.fingerprint = model_fingerprint(self.model)
        self.pool = self._pool()
        self._waiting: deque[LlmRequest] = deque()  # admitted, not (or no longer) in the pool
        self._running: list[LlmRequest] = []  # their KV in the pool
        self._admitted = 0
        self._packed = False

    def _pool(self) -> KvPool:
        """The KV pool: the plan's budget for this instance, never more than the batch can
        fill (max_batch sequences of max_position_embeddings); without a plan, a share of
        the device's memory."""
        config = self.model.config.get_text_config()
        layers = int(config.num_hidden_layers)
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        ranks = max(1, self.node.instances[0].tp)
        heads = max(1, heads // ranks) if heads % ranks == 0 else heads  # a tp rank holds its heads
        token_bytes = 2 * layers * heads * dim * self.model.dtype.itemsize
        bt = self.node.resources.kv_block_tokens
        budget = self.node.resources.kv_bytes
        if budget is None:
            budget = int(device_memory(self.device) * UNPLANNED_POOL_SHARE)
        most = self.settings.max_batch * (self.max_positions or 32_768)
        blocks = min(budget // (token_bytes * bt), math.ceil(most / bt))
        if blocks < 1:
            raise ValueError(f"the KV budget ({budget} bytes) holds no block of {bt} tokens "
                             f"({token_bytes * bt} bytes)")
        return KvPool(layers, bt, int(blocks), self.model.dtype, self.device, token_bytes)

    def _fused_calls(self) -> FusedCalls | None:
        """The fused prefill and decode-step graphs, when the plan has kernels for both
        and they apply here (see fused_stage.fused_entry); else None."""
        prefill_graph = fused_entry(self.node, "prefill", self.model, self.ctx.device)
        decode_graph = fused_entry(self.node, "decode_step", self.model, self.ctx.device)
        if prefill_graph is None or decode_graph is None:
            return None
        return FusedCalls(prefill_graph, decode_graph, self.embed, ModuleCalls(self.model))

    def unfuse(self) -> None:
        """Back to the module's own forward (its weights are about to change: sharding)."""
        self.calls = ModuleCalls(self.model)

    def stats(self) -> dict[str, Any]:
        st = self.pool.stats
        return {"kv_blocks": st.blocks, "kv_block_tokens": st.block_tokens, "kv_pool_bytes": st.bytes,
                "kv_peak_bytes": st.peak_blocks * st.block_tokens * self.pool.token_bytes,
                "kv_blocks_in_use": self.pool.in_use, "prefix_query_tokens": st.prefix_queries,
                "prefix_hit_tokens": st.prefix_hits, "preemptions": st.preemptions}

    # -- the step ----------------------------------------------------------------------
    def step(self, items: list[WorkItem]) -> bool:
        with torch.no_grad():  # not inference_mode: outputs reach users, who may edit them in place
            self._pack_once()
            self._drop_ended()
            live = [i for i in items if not i.dead]
            arrived = self._arrive([i for i in live if STATE not in i.state])
            admitted = self._admit()
            writable = [r for r in self._running if not r.item.done and all(r.item.writable(p) for p in r.item.streams)]
            if writable:
                self._decode(writable)
            self._drop_ended()
            return bool(arrived or admitted or writable)

    def _pack_once(self) -> None:
        """On a CPU, q/k/v and gate/up merged and the linear layers' weights repacked for oneDNN
        (cpu_linear.py) before the first forward: after any sharding, never for the compiler's
        own loads."""
        if not self._packed and self.ctx.optimize and not isinstance(self.calls, FusedCalls):  # pp ranks too
            optimize_linears(self.model)
        self._packed = True

    def _drop_ended(self) -> None:
        """Requests that ended (finished, failed, cancelled) give their blocks back."""
        for req in [r for r in self._running if r.item.done or not r.alive]:
            self.pool.release(req.seq)
            self._running.remove(req)
        for req in [r for r in self._waiting if r.item.done or not r.alive]:
            self.pool.release(req.seq)
            self._waiting.remove(req)

    def _arrive(self, items: list[WorkItem]) -> bool:
        """New requests whose inputs are all in join the queue (those whose inputs still
        stream in wait, gathered without blocking the batch). True when any arrived or failed."""
        moved = False
        for item in items:
            came = item.state.pop(MOVED, None)
            if isinstance(came, LlmRequest):  # migrated here from another instance
                item.state[STATE] = came
                self._adopt(came)
                moved = True
                continue
            try:
                if not gather_streams(item, self.modality):
                    continue
                req = self._request(item)
            except Exception as exc:  # this request's input failed, not the batch
                item.fail(exc)
                moved = True
                continue
            item.state[STATE] = req
            self._waiting.append(req)
            moved = True
        return moved

    def _request(self, item: WorkItem) -> LlmRequest:
        # This request's own params (temperature, max_new_tokens, stop …, validated when it
        # was submitted) over the stage's: requests with different settings share the batch.
        settings = self.settings.model_copy(update=item.settings) if item.settings else self.settings
        if self.settings.phase == "decode":
            return self._handed_over(item, settings)
        ids = prompt_tokens(item.inputs["prompt"], self.tokenizer, settings, self.frame)
        embeds = context_embeddings(item.inputs.get("context"), self.embed, self.model.dtype, self.takes_embeds,
                                    type(self.model).__name__)
        prompt = torch.tensor(ids, device=self.device)
        if embeds is not None:
            prompt = torch.cat([embeds, self.embed(prompt)])
        if self.max_positions is not None and len(prompt) > self.max_positions:
            raise ValueError(f"the prompt has {len(prompt)} positions; the model takes {self.max_positions}")
        self._admitted += 1
        return LlmRequest(item, prompt, ids if embeds is None else None, settings, self._text_stream(settings),
                        self._generator(item, ids, settings), self._admitted,
                        Seq(tokens=[] if embeds is None else None))

    def _admit(self) -> bool:
        """Move waiting requests into the pool, first come first served, while their blocks
        fit (a shared prefix first), and prefill them. True when any moved (or failed)."""
        ready: list[LlmRequest] = []
        moved = False
        while self._waiting and len(self._running) + len(ready) < self.settings.max_batch:
            req = self._waiting[0]
            if req.handoff is not None:
                if not self._take_handoff(req):
                    break
                continue
            if req.ids is not None and req.seq.length == 0:
                self.pool.share_prefix(req.seq, req.ids + req.tokens)
            todo = len(req.todo(self.embed))
            if self.pool.blocks_needed(Seq(length=0), req.seq.length + todo) > self.pool.stats.blocks:
                self._waiting.popleft()
                self.pool.release(req.seq)
                req.item.fail(ValueError(
                    f"the request needs {req.seq.length + todo} positions of KV cache; the pool holds "
                    f"{self.pool.stats.blocks * self.pool.block_tokens} (the plan's KV budget)"))
                moved = True
                continue
            if not self.pool.grow(req.seq, todo):
                self.pool.release(req.seq)  # its shared prefix waits unpinned, like everything else
                break
            ready.append(self._waiting.popleft())
        if ready:
            self._prefill(ready)
        return moved or bool(ready)

    def _prefill(self, reqs: list[LlmRequest]) -> None:
        """Prefill in groups that can share a forward: ids or embeddings, and one cached length."""
        groups: dict[tuple[bool, int], list[LlmRequest]] = {}
        for req in reqs:
            groups.setdefault((req.ids is None, req.seq.length), []).append(req)
        for group in groups.values():
            self._prefill_group(group)

    def _prefill_group(self, group: list[LlmRequest]) -> None:
        inputs = [r.todo(self.embed) for r in group]
        lengths = [r.seq.length for r in group]
        want_hidden = (self.settings.prefill_hidden if self.settings.phase == "prefill"
                       else any(r.item.wants("hidden") for r in group))
        try:
            fwd = forward_rows(self.calls, self.pool, [r.seq for r in group], inputs, want_hidden)
        except Exception as exc:
            for req, length in zip(group, lengths):
                req.seq.length = length
            if len(group) > 1:  # find the request that fails: each alone
                for req in group:
                    self._prefill_group([req])
            else:
                self.pool.release(group[0].seq)
                group[0].item.fail(exc)
            return
        for row, req in enumerate(group):
            if req.seq.tokens is not None:
                req.seq.tokens = (req.ids or []) + req.tokens
                self.pool.publish(req.seq)
            if self.settings.phase == "prefill":
                self._hand_on(req, fwd.logits[row], None if fwd.hidden is None else fwd.hidden[row])
                continue
            self._running.append(req)
            try:
                self._accept(req, fwd.logits[row], None if fwd.hidden is None else fwd.hidden[row])
            except Exception as exc:
                req.item.fail(exc)

    def _decode(self, reqs: list[LlmRequest]) -> None:
        rows = self._make_room(reqs)
        if not rows:
            return
        try:
            fwd = forward_rows(self.calls, self.pool, [r.seq for r in rows],
                               [torch.tensor([r.tokens[-1]], device=self.device) for r in rows],
                               any(r.item.wants("hidden") for r in rows))
        except Exception:
            for req in rows:  # their caches are in an unknown state: recompute them later
                self._preempt(req, count=False)
            raise  # a batched forward cannot be pinned on one request: the worker fails them all
        for row, req in enumerate(rows):
            if req.seq.tokens is not None:
                req.seq.tokens.append(req.tokens[-1])
                self.pool.publish(req.seq)
            try:
                self._accept(req, fwd.logits[row], None if fwd.hidden is None else fwd.hidden[row])
            except Exception as exc:
                req.item.fail(exc)

    def _make_room(self, reqs: list[LlmRequest]) -> list[LlmRequest]:
        """The requests that get a slot for their next token; when the pool is full, the
        latest admitted running requests are preempted until the rest fit."""
        rows = sorted(reqs, key=lambda r: r.order)
        out = []
        for req in rows:
            while req in self._running and not self.pool.grow(req.seq, 1):
                victim = max(self._running, key=lambda r: r.order)
                self._preempt(victim)
                if victim in out:
                    out.remove(victim)
            if req in self._running:
                out.append(req)
        return out

    def _preempt(self, req: LlmRequest, count: bool = True) -> None:
        """Free a running request's blocks; it waits at the front to be recomputed."""
        self.pool.release(req.seq)
        if req.seq.tokens is not None:
            req.seq.tokens = []
        if req in self._running:
            self._running.remove(req)
        if req.alive and not req.item.done:
            self._waiting.appendleft(req)
        if count:
            self.pool.stats.preemptions += 1

    # -- tokens out ----------------------------------------------------------------------
    def _accept(self, req: LlmRequest, logits: torch.Tensor, hidden: torch.Tensor | None) -> None:
        s = req.settings
        token = choose_token(logits, s.temperature, s.top_k, s.top_p, req.generator)
        if token in self.eos:
            self._publish(req, final=True)
            return
        req.tokens.append(token)
        if hidden is not None and req.item.wants("hidden"):
            req.hidden.append(hidden)
        req.text.push(token)
        full = self.max_positions is not None and req.seq.length >= self.max_positions  # no room to feed it
        self._publish(req, final=req.text.stopped or len(req.tokens) >= s.max_new_tokens or full,
                      token=token, hidden=hidden)

    def _publish(self, req: LlmRequest, final: bool, token: int | None = None,
                 hidden: torch.Tensor | None = None) -> None:
        """Chunks for the streamed ports; at the end, the whole values of the others."""
        item = req.item
        if final:
            req.text.close()
        pieces = {"text": req.text.take(final) or None,
                  "tokens": None if token is None else torch.tensor([token]),
                  "hidden": None if hidden is None else hidden[None]}
        for port, piece in pieces.items():
            if piece is not None and port in item.streams:
                item.chunk(port, piece)
        if not final:
            return
        item.report_usage(prompt_tokens=len(req.prompt), completion_tokens=len(req.tokens))
        whole = {"text": req.text.text, "tokens": torch.tensor(req.tokens, dtype=torch.long),
                 "hidden": torch.stack(req.hidden) if req.hidden
                 else torch.zeros(0, self.embed.embedding_dim, dtype=self.model.dtype)}
        for port, value in whole.items():
            if port not in item.streams:
                item.emit(port, value)
            elif not item.streams[port].chunks():  # an empty stream still joins to a typed value
                item.chunk(port, value)
        self.pool.release(req.seq)  # before it ends: whoever sees it done sees its blocks back
        if req in self._running:
            self._running.remove(req)
        item.finish()

    def _text_stream(self, settings: ArLlmParams) -> TextStream:
        return TextStream(self.tokenizer, settings.stop, settings.stream_chunk)

    def _generator(self, item: WorkItem, ids: list[int], settings: ArLlmParams) -> torch.Generator | None:
        if settings.temperature == 0:
            return None
        if settings.seed is None:
            seed = self.ctx.seed * 1_000_003 + item.request_id
        else:
            digest = hashlib.sha256(f"{settings.seed}:{ids}".encode()).digest()
            seed = int.from_bytes(digest[:8], "little") >> 1
        return torch.Generator(device=self.device).manual_seed(seed)

