"""`ar_llm`: an autoregressive LLM with continuous batching.

Each `step` prefills the work items that just arrived, together in one left-padded
forward pass (their first token comes from the prefill), and then runs one batched
decode step for every running request whose output streams have room. Requests join
and leave the running batch at any step; see llm_batch.py for how their KV caches of
different lengths decode together.

The forward passes run through the stage's fused prefill and decode-step graphs when the
plan carries kernels for both and they apply here (a GPU, or the Triton interpreter asked
for; see runtime/fused_stage.py), else through the module's own forward (llm_calls.py).

Ports: `prompt` (text, formatted with the chat template unless chat is false, or
tokens used as is) and optional `context` embeddings [seq, hidden], prepended to the
prompt's token embeddings. Outputs: `text`, `tokens` (generated ids, EOS excluded)
and `hidden` (for each generated token, the last layer's state that predicted it:
[n_tokens, hidden]). A streamed port gets a chunk per step (text: per
`stream_chunk`); any other is emitted whole at the end.

Sampling (temperature > 0) draws from a generator per request. With `seed` set it is
seeded from the seed and the prompt, so a request samples the same text whatever
ran before it or beside it; without one, from the request id.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from omnigraph.kinds import ArLlmParams
from omnigraph.runtime.channel import StreamReader
from omnigraph.runtime.executor import Executor, WorkItem
from omnigraph.runtime.executors.llm_batch import KV, DecodeBatch, choose_token, prefill
from omnigraph.runtime.executors.llm_calls import FusedCalls, LlmCalls, ModuleCalls
from omnigraph.runtime.executors.llm_loading import load_causal_lm
from omnigraph.runtime.executors.llm_text import TextStream, prompt_ids
from omnigraph.runtime.fused_stage import fused_entry
from omnigraph.runtime.values import join_chunks

_STATE = "ar_llm"  # key of a request's _Request in WorkItem.state


@dataclass
class _Request:
    item: WorkItem
    kv: KV | None  # its own KV cache; None while that lives in the running batch
    length: int  # positions in the KV cache
    text: TextStream
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return not self.item.dead


@dataclass
class _Prefill:
    item: WorkItem
    ids: list[int]
    prompt: torch.Tensor  # token ids [len], or embeddings [len, hidden] with the context


class ArLlmExecutor(Executor):

    def load(self) -> None:
        params = {k: v for k, v in self.params.items() if k != "tokenizer"}  # see llm_loading
        self.settings = ArLlmParams.model_validate(params)
        self.model, self.tokenizer = load_causal_lm(self.node, self.ctx.device, self.ctx.seed)
        frame = self.node.program.facts.get("chat_frame") if self.node.program else None
        self.frame: tuple[str, str] | None = (str(frame[0]), str(frame[1])) if frame else None
        self.device = self.model.device
        self.embed = self.model.get_input_embeddings()
        self.eos = _eos_ids(self.model, self.tokenizer)
        self.takes_embeds = "inputs_embeds" in inspect.signature(self.model.forward).parameters
        self.max_positions: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.modality = {b.port: b.modality for b in self.node.inputs}
        self.calls: LlmCalls = self._fused_calls() or ModuleCalls(self.model)
        self._batch: DecodeBatch | None = None
        self._members: list[_Request] = []  # the batch's rows, in order

    def _fused_calls(self) -> FusedCalls | None:
        """The fused prefill and decode-step graphs, when the plan has kernels for both
        and they apply here (see fused_stage.fused_entry); else None."""
        prefill_graph = fused_entry(self.node, "prefill", self.model, self.ctx.device)
        decode_graph = fused_entry(self.node, "decode_step", self.model, self.ctx.device)
        if prefill_graph is None or decode_graph is None:
            return None
        return FusedCalls(prefill_graph, decode_graph, self.embed)

    def unfuse(self) -> None:
        """Back to the module's own forward (its weights are about to change: sharding)."""
        self.calls = ModuleCalls(self.model)
        self._batch, self._members = None, []

    # -- the step ----------------------------------------------------------------------
    def step(self, items: list[WorkItem]) -> bool:
        with torch.no_grad():  # not inference_mode: outputs reach users, who may edit them in place
            live = [i for i in items if not i.dead]
            admitted = self._admit([i for i in live if _STATE not in i.state])
            running = [r for i in live if (r := i.state.get(_STATE)) is not None
                       and not i.done and all(i.writable(p) for p in i.streams)]  # backpressure
            if running:
                self._decode(running)
            if not any(r.alive for r in self._members):
                self._batch, self._members = None, []  # nothing left to decode: free the stack
            return bool(admitted or running)

    def _admit(self, items: list[WorkItem]) -> bool:
        """Prefill the new requests whose inputs are all in and take each one's first
        token; those whose inputs still stream in wait (gathered without blocking the
        batch). True when any request was admitted (or failed)."""
        ready: list[_Prefill] = []
        failed = False
        for item in items:
            try:
                if _gather_streams(item, self.modality):
                    ready.append(self._prefill_input(item))
            except Exception as exc:  # this request's input failed, not the batch
                item.fail(exc)
                failed = True
        for embedded in (False, True):  # token ids and embeddings cannot share a forward
            group = [p for p in ready if (p.prompt.dim() == 2) == embedded]
            if group:
                self._prefill(group)
        return bool(ready) or failed

    def _prefill_input(self, item: WorkItem) -> _Prefill:
        """The prompt to prefill: token ids [len], or with context embeddings [len, hidden]."""
        ids = self._prompt(item)
        embeds = self._context(item)
        prompt = torch.tensor(ids, device=self.device)
        if embeds is not None:
            prompt = torch.cat([embeds, self.embed(prompt)])
        if self.max_positions is not None and len(prompt) > self.max_positions:
            raise ValueError(f"the prompt has {len(prompt)} positions; the model takes {self.max_positions}")
        return _Prefill(item, ids, prompt)

    def _prefill(self, group: list[_Prefill]) -> None:
        try:
            fwd, caches = prefill(self.calls, any(p.item.wants("hidden") for p in group), [p.prompt for p in group])
        except Exception as exc:
            if len(group) > 1:  # find the request that fails: each alone
                for p in group:
                    self._prefill([p])
            else:
                group[0].item.fail(exc)
            return
        for row, (p, kv) in enumerate(zip(group, caches)):
            try:
                req = _Request(p.item, kv, len(p.prompt), self._text_stream(), self._generator(p.item, p.ids))
                p.item.state[_STATE] = req
                self._accept(req, fwd.logits[row], None if fwd.hidden is None else fwd.hidden[row])
            except Exception as exc:
                p.item.fail(exc)

    def _decode(self, reqs: list[_Request]) -> None:
        batch = self._batch_for(reqs)
        try:
            fwd = batch.step([r.tokens[-1] for r in reqs], any(r.item.wants("hidden") for r in reqs))
        except Exception:
            self._batch, self._members = None, []  # the caches are in an unknown state
            raise  # a batched forward cannot be pinned on one request: the worker fails them all
        for row, req in enumerate(reqs):
            req.length += 1
            try:
                self._accept(req, fwd.logits[row], None if fwd.hidden is None else fwd.hidden[row])
            except Exception as exc:
                req.item.fail(exc)

    def _batch_for(self, reqs: list[_Request]) -> DecodeBatch:
        """The running batch for exactly `reqs`: the last one while its rows are the
        same, else a new one built from the requests' own caches."""
        if len(reqs) == len(self._members) and all(a is b for a, b in zip(reqs, self._members)):
            assert self._batch is not None
            return self._batch
        if self._batch is not None:
            for req, kv in zip(self._members, self._batch.split()):
                req.kv = kv
        self._batch = DecodeBatch(self.calls, [r.kv for r in reqs])  # type: ignore[misc]  # each has one by now
        for req in reqs:
            req.kv = None
        for req in self._members:
            if req.kv is not None:  # left out: an ended request's cache goes, a waiting one's is
                # copied out so that the old stack is freed
                req.kv = [(k.clone(), v.clone()) for k, v in req.kv] if req.alive else None
        self._members = reqs
        return self._batch

    # -- tokens out ----------------------------------------------------------------------
    def _accept(self, req: _Request, logits: torch.Tensor, hidden: torch.Tensor | None) -> None:
        s = self.settings
        token = choose_token(logits, s.temperature, s.top_k, s.top_p, req.generator)
        if token in self.eos:
            self._publish(req, final=True)
            return
        req.tokens.append(token)
        if hidden is not None and req.item.wants("hidden"):
            req.hidden.append(hidden)
        req.text.push(token)
        full = self.max_positions is not None and req.length >= self.max_positions  # no room to feed it
        self._publish(req, final=req.text.stopped or len(req.tokens) >= s.max_new_tokens or full,
                      token=token, hidden=hidden)

    def _publish(self, req: _Request, final: bool, token: int | None = None,
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
        whole = {"text": req.text.text, "tokens": torch.tensor(req.tokens, dtype=torch.long),
                 "hidden": torch.stack(req.hidden) if req.hidden
                 else torch.zeros(0, self.embed.embedding_dim, dtype=self.model.dtype)}
        for port, value in whole.items():
            if port not in item.streams:
                item.emit(port, value)
            elif not item.streams[port].chunks():  # an empty stream still joins to a typed value
                item.chunk(port, value)
        item.finish()

    # -- inputs --------------------------------------------------------------------------
    def _prompt(self, item: WorkItem) -> list[int]:
        prompt = item.inputs["prompt"]
        if isinstance(prompt, str):
            return prompt_ids(self.tokenizer, prompt, self.settings.system, self.settings.chat, self.frame)
        ids = torch.as_tensor(prompt).reshape(-1).tolist()
        if not ids:
            raise ValueError("the prompt has no tokens")
        return ids

    def _context(self, item: WorkItem) -> torch.Tensor | None:
        """The context embeddings, all edges concatenated: [seq, hidden]."""
        value = item.inputs.get("context")
        if value is None:
            return None
        if not self.takes_embeds:
            raise ValueError(f"{type(self.model).__name__} takes no inputs_embeds: it cannot read context embeddings")
        parts = [torch.as_tensor(p) for p in (value if isinstance(value, list) else [value])]
        width = self.embed.embedding_dim
        wrong = sorted({p.shape[-1] for p in parts} - {width})
        if wrong:
            raise ValueError(f"context embeddings are {wrong[0]} wide; the model's embeddings are {width}")
        return torch.cat([p.reshape(-1, width) for p in parts]).to(self.device, self.model.dtype)

    def _text_stream(self) -> TextStream:
        return TextStream(self.tokenizer, self.settings.stop, self.settings.stream_chunk)

    def _generator(self, item: WorkItem, ids: list[int]) -> torch.Generator | None:
        if self.settings.temperature == 0:
            return None
        if self.settings.seed is None:
            seed = self.ctx.seed * 1_000_003 + item.request_id
        else:
            digest = hashlib.sha256(f"{self.settings.seed}:{ids}".encode()).digest()
            seed = int.from_bytes(digest[:8], "little") >> 1
        return torch.Generator(device=self.device).manual_seed(seed)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end generation: the model's generation config and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return frozenset(ids)


def _gather_streams(item: WorkItem, modality: dict[str, str]) -> bool:
    """Replace streamed inputs by their joined values once they have ended, reading
    what has arrived so far without waiting; True when no input is still streaming."""
    complete = True
    for port, value in item.inputs.items():
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not isinstance(v, StreamReader):
                continue
            buffer = item.state.setdefault(f"chunks:{port}:{i}", [])
            chunks, ended = v.poll()
            buffer.extend(chunks)
            if ended:
                values[i] = join_chunks(modality[port], buffer)
            else:
                complete = False
        item.inputs[port] = values if isinstance(value, list) else values[0]
    return complete
