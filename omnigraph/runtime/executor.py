"""Stage executors: the runtime's rule table, keyed by stage kind.

An executor owns one stage instance's model and advances its active work items
one `step` at a time. Batch executors finish the items they run in one step;
continuous ones (an AR LLM decoding, a TTS reading a text stream) keep items
active across steps, so requests join and leave the running batch at any step.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnigraph.kinds import KINDS
from omnigraph.runtime.channel import StreamChannel, StreamReader
from omnigraph.runtime.devices import compute_dtype
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.values import join_chunks


class StageFailed(Exception):
    """A stage raised while working on a request; names the stage."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


USAGE_PORT = "__usage__"  # not a port: where WorkItem.report_usage sends its counts


@dataclass
class WorkItem:
    """One request's work at one stage: its inputs and where its outputs go."""

    request_id: int
    stage: str
    inputs: dict[str, Any]  # port -> value | list (variadic) | StreamReader (stream edge)
    wanted: frozenset[str]  # output ports somebody reads
    streams: dict[str, StreamChannel]  # output ports delivered in chunks
    stream_modality: dict[str, str]
    _deliver: Callable[[str, Any], None]
    _fail: Callable[[BaseException], None]
    _is_dead: Callable[[], bool]
    done: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # the executor's per-item scratch
    settings: dict[str, Any] = field(default_factory=dict)  # this request's params for the stage (validated)

    @property
    def dead(self) -> bool:
        """The request already ended (failed, cancelled, timed out): drop this work."""
        return self.done or self._is_dead()

    def wants(self, port: str) -> bool:
        return port in self.wanted

    def writable(self, port: str) -> bool:
        ch = self.streams.get(port)
        return ch is None or ch.writable()

    def chunk(self, port: str, value: Any) -> None:
        """Emit part of a streamed output (or nothing, if nobody reads `port`)."""
        ch = self.streams.get(port)
        if ch is not None:
            ch.put(value, timeout=600)

    def emit(self, port: str, value: Any) -> None:
        """Emit the whole value of a non-streamed output."""
        if port in self.streams:
            raise RuntimeError(f"port '{port}' is streamed; use chunk()")
        if port in self.wanted or port == USAGE_PORT:
            self._deliver(port, value)

    def report_usage(self, **counts: int) -> None:
        """What this request cost the stage (prompt_tokens, completion_tokens, …): summed per
        request (Request.usage), whatever its outputs; travels like an output (Ray, TP ranks)."""
        self.emit(USAGE_PORT, counts)

    def finish(self) -> None:
        """All outputs are out: close the streams and hand on their joined values."""
        if self.done:
            return
        self.done = True
        for port, ch in self.streams.items():
            ch.close()
            if port in self.wanted:
                self._deliver(port, join_chunks(self.stream_modality[port], ch.chunks()))

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        for ch in self.streams.values():
            ch.close(error)
        self._fail(error)


@dataclass
class ExecContext:
    device: str = "cpu"  # where its tensors go (the plan's device, after OMNIGRAPH_DEVICE_MAP)
    seed: int = 0
    planned: str | None = None  # the device the plan gave it (cuda:3), when one did
    plan_devices: list[str] | None = None  # the instance's devices as the plan names them (node0:gpu3)
    cores: list[int] | None = None  # the CPU cores the plan gave it (its intra-op threads)
    # Runtime-only speedups that change how weights are held (CPU-packed linears): off when
    # the compiler loads a stage to export, bundle or capture it.
    optimize: bool = True

    @property
    def threads(self) -> int | None:
        return len(self.cores) if self.cores else None


class Executor(ABC):
    def __init__(self, node: StageNode, ctx: ExecContext) -> None:
        self.node = node
        self.ctx = ctx
        self.params = node.params

    @property
    def continuous(self) -> bool:
        """Requests join and leave a running batch at any step (the kind's trait)."""
        return KINDS[self.node.kind].traits.continuous

    def load(self) -> None:
        """Load weights; called once, before the first step (with progress shown)."""

    def close(self) -> None:
        """Release what `load` started (a tensor-parallel instance's rank processes)."""

    def unfuse(self) -> None:
        """Run the module's own ops from now on, not its fused graph: the graph was bound to
        the weights as loaded, and sharding is about to replace them."""
        unfused = getattr(getattr(self, "model", None), "unfused", None)
        if unfused is not None:
            self.model = unfused

    def placement(self) -> dict[str, Any]:
        """Where and how this instance runs, as the plan asked (`run --stats` beside `plan`):
        its device (and where its tensors really are), dtype, CPU cores and KV budget."""
        return {"plan_devices": self.ctx.plan_devices, "device": self.ctx.planned or self.ctx.device,
                "runs_on": self.ctx.device, "dtype": compute_dtype(self.node),
                "cores": self.ctx.cores, "kv_budget": self.node.resources.kv_bytes, **self.stats()}

    def export(self, item: WorkItem) -> bool:
        """Let go of `item` so that another instance of the stage goes on with it (its state
        travels in item.state): True if it did. By default an item in progress stays (a batch
        stage finishes it within a step anyway); ar_llm moves a running request with its KV."""
        return False

    def stats(self) -> dict[str, Any]:
        """What the executor counts of its own work (a KV pool's blocks, prefix-cache hits)."""
        return {}

    def bundle_facts(self) -> dict[str, Any]:
        """What `load` read off the module that an exported program cannot tell it (sizes,
        scales); a bundle records these, and `load` takes them back from an ExportedStage."""
        return {}

    @abstractmethod
    def step(self, items: list[WorkItem]) -> bool:
        """Advance some of `items`; return whether anything moved."""


class BatchExecutor(Executor):
    """Runs up to `max_batch` items whose inputs are whole values, finishing each."""

    def step(self, items: list[WorkItem]) -> bool:
        batch = items[: self.node.batching.max_batch]
        if not batch:
            return False
        modality = {b.port: b.modality for b in self.node.inputs}
        for item in batch:
            for port, value in item.inputs.items():
                if isinstance(value, StreamReader):  # a stream into a batch stage: wait for all of it
                    item.inputs[port] = join_chunks(modality[port], list(value))
        results = self.run(batch)
        for item, outputs in zip(batch, results):
            if isinstance(outputs, BaseException):  # this request alone failed
                item.fail(outputs)
                continue
            for port, value in outputs.items():
                if port in item.streams:
                    item.chunk(port, value)
                else:
                    item.emit(port, value)
            item.finish()
        return True

    @abstractmethod
    def run(self, items: list[WorkItem]) -> list[dict[str, Any] | BaseException]:
        """Outputs (port -> value) for each item, in order; an exception fails that item only."""


# The table: kind -> "module:Class", imported on first use so that a pipeline
# without diffusion never imports diffusers.
EXECUTORS: dict[str, str] = {
    "ar_llm": "omnigraph.runtime.executors.ar_llm:ArLlmExecutor",
    "tts": "omnigraph.runtime.executors.tts:TtsExecutor",
    "vocoder": "omnigraph.runtime.executors.vocoder:VocoderExecutor",
    "encoder": "omnigraph.runtime.executors.encoder:EncoderExecutor",
    "projector": "omnigraph.runtime.executors.projector:ProjectorExecutor",
    "diffusion": "omnigraph.runtime.executors.diffusion:DiffusionExecutor",
    "decoder": "omnigraph.runtime.executors.decoder:DecoderExecutor",
    "moe": "omnigraph.runtime.executors.moe:MoeExecutor",
    "custom": "omnigraph.runtime.executors.custom:CustomExecutor",
}


def executor_class(kind: str) -> type[Executor]:
    try:
        target = EXECUTORS[kind]
    except KeyError:
        raise ValueError(f"no executor for stage kind '{kind}'") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
