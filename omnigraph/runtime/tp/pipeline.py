"""Pipeline parallelism of a transformers LLM: its layers in consecutive groups, one group
per stage of ranks, the hidden state handed from stage to stage.

Every rank keeps the model's frame (embeddings, rotary tables, final norm, LM head: small next
to the layers) and only its own stage's decoder layers; the others become pass-throughs, so
their weights are gone. Stage s > 0 takes its first layer's input from stage s-1 instead of
its own embeddings; stage s < last sends its last layer's output on. Each rank's KV pool
fills only its own layers' entries, with the block tables every rank computes alike (the
ranks step the same executor on the same requests: spmd.py).

A prefill's batch is cut into micro-batches: while stage 1 runs micro-batch 1, stage 0 runs
micro-batch 2 (sends do not wait for the receiver), so p stages idle only (p-1)/(m+p-1) of
the step, not (p-1)/p. A decode step runs whole: it is bound by reading the weights, which
every micro-batch would read again. At the end of the step the last stage's final hidden states (one per
row) go to every rank, and every rank computes the same logits from them: all ranks choose
the same tokens.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from omnigraph.runtime.executors.llm_calls import Forward, cache_kwarg
from omnigraph.runtime.executors.paged_cache import PagedStep
from omnigraph.runtime.pp_schedule import MICRO_BATCHES, micro_batches
from omnigraph.runtime.tp.comm import RankComm

MICRO_BATCHES_ENV = "OMNIGRAPH_PP_MICRO_BATCHES"  # a benchmark's knob (every rank reads the same environment)


class PipeComm:
    """One rank's place in the pipeline: its stage, and its peers in the stages around it
    (the rank with its tensor-parallel index there)."""

    def __init__(self, world: RankComm, stages: int, width: int) -> None:
        self.world, self.stages, self.width = world, stages, width
        self.stage, self.index = divmod(world.rank, width)
        self._sends: list[Any] = []

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def send_next(self, hidden: torch.Tensor) -> None:
        keep = hidden.detach().contiguous()
        self._sends.append((self.world.send(keep, self.world.rank + self.width), keep))

    def recv_prev(self, like: torch.Tensor) -> torch.Tensor:
        return self.world.recv(torch.empty_like(like).contiguous(), self.world.rank - self.width)

    def finish_sends(self) -> None:
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()

    def from_last(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.world.broadcast(tensor.contiguous(), (self.stages - 1) * self.width)


def layer_range(layers: int, stages: int, stage: int) -> range:
    """Stage `stage`'s layers: consecutive, as even as they divide (earlier stages one more)."""
    base, extra = divmod(layers, stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


class _Skip(nn.Module):
    """A layer another stage runs: its input passes through."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Receive(nn.Module):
    """A stage's first layer: it computes on the previous stage's output."""

    def __init__(self, layer: nn.Module, comm: PipeComm) -> None:
        super().__init__()
        self.layer, self.comm = layer, comm

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.layer(self.comm.recv_prev(hidden_states), *args, **kwargs)


class _Send(nn.Module):
    """A stage's last layer: its output goes on to the next stage."""

    def __init__(self, layer: nn.Module, comm: PipeComm) -> None:
        super().__init__()
        self.layer, self.comm = layer, comm

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.layer(*args, **kwargs)
        self.comm.send_next(out)
        return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers (`model.model.layers` in Llama/Qwen/Mistral)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(model).__name__} has no list of decoder layers to split into pipeline stages")
    return layers


def shard_pipeline(model: nn.Module, comm: PipeComm) -> range:
    """Keep this rank's stage's layers of `model` (in place); returns their indices."""
    layers = decoder_layers(model)
    if len(layers) < comm.stages:
        raise ValueError(f"pp={comm.stages} is more pipeline stages than the {len(layers)} layers of "
                         f"{type(model).__name__}")
    mine = layer_range(len(layers), comm.stages, comm.stage)
    for i in range(len(layers)):
        if i not in mine:
            layers[i] = _Skip()
    if not comm.first:
        layers[mine.start] = _Receive(layers[mine.start], comm)
    if not comm.last:
        layers[mine.stop - 1] = _Send(layers[mine.stop - 1], comm)
    return mine


class PipelineCalls:
    """LlmCalls (llm_calls.py) for a pipeline-parallel model: the batch in micro-batches
    through this rank's stage, then the last stage's hidden states to every rank."""

    def __init__(self, model: nn.Module, comm: PipeComm, micro_batches: int | None = None) -> None:
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings()
        self.comm = comm
        forced = micro_batches or int(os.environ.get(MICRO_BATCHES_ENV, 0))
        self.micro, self.forced = max(1, forced or MICRO_BATCHES), bool(forced)
        self._cache_kwarg = cache_kwarg(self.base)

    def forward(self, inputs: torch.Tensor, step: PagedStep, want_hidden: bool) -> Forward:
        rows = inputs.shape[0]
        parts = micro_batches(rows, inputs.shape[1], self.micro, self.forced)
        bounds = [rows * i // parts for i in range(parts + 1)]
        name = "input_ids" if inputs.dim() == 2 else "inputs_embeds"
        last = []
        try:
            for lo, hi in zip(bounds, bounds[1:]):
                sub = step.rows(lo, hi)
                x = inputs[lo:hi, inputs.shape[1] - sub.new_width:]  # rows are left-padded to the batch's width
                out = self.base(**{name: x}, attention_mask=sub.mask, position_ids=sub.positions,
                                **{self._cache_kwarg: sub.cache()}, use_cache=True)
                last.append(out.last_hidden_state[:, -1])
        finally:
            self.comm.finish_sends()
        hidden = self.comm.from_last(torch.cat(last))
        return Forward(self.head(hidden), hidden if want_hidden else None)
