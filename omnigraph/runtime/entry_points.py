"""A stage's entry points: its module wrapped in the call the runtime makes, with example inputs.

The runtime owns how it calls a stage's module (its executors make these calls), so the
calling convention lives here, and the compiler reads it from here: capture-stages exports
these entries to fuse them, and the bundle writer exports the same ones as `.pt2` programs.

    encoder     forward(x)                     the main input by name, the main output
    projector   forward(x)                     moe: the same
    decoder     decode(z)                      a VAE's decode when it has one
    diffusion   denoise_step(x, t, cond)       one step of the denoising loop
    ar_llm      prefill(embeds, mask, positions) -> logits, hidden, KV per layer
                decode_step(ids, mask, positions, kv) -> logits, hidden, grown KV

Example inputs come from what the executor read when it loaded the module (image size,
mel bins, widths); batch and sequence dims are `Dim.AUTO` (dynamic where the module allows).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from omnigraph.kinds import DiffusionParams
from omnigraph.runtime.executor import ExecContext, Executor, executor_class
from omnigraph.runtime.executors.llm_calls import cache_kwarg, output_cache
from omnigraph.runtime.executors.modules import call, main_output
from omnigraph.runtime.plan import StageNode

AUTO = Dim.AUTO
Args = tuple[torch.Tensor, ...]
Stages = Mapping[str, StageNode]  # every stage of the pipeline, by name (a decoder asks its producer)
Loaded = Executor  # a stage as load_stage returns it: its module (`.model`) and what loading read


class NoEntry(Exception):
    """This stage has no entry to export; the message says why."""


@dataclass
class Examples:
    args: list[Args]  # the first is exported with, the rest only check the program
    dynamic: tuple[Any, ...]


@dataclass
class Entry:
    """One entry point: the module as the runtime calls it, example inputs, dynamic dims."""

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    dynamic: tuple[Any, ...]
    checks: list[Args]  # more inputs, of other shapes, an export must agree on


def load_stage(node: StageNode, device: str = "cpu", meta: bool = False) -> Executor:
    """The stage loaded as its executor loads it (on `meta`: shapes only, no weights)."""
    executor = executor_class(node.kind)(node, ExecContext(device="meta" if meta else device, optimize=False))
    with (torch.device("meta") if meta else contextlib.nullcontext()):
        executor.load()
    return executor


def stage_entries(executor: Executor, stages: Stages) -> list[Entry]:
    """The entries of a loaded stage; NoEntry if its kind has none (or it cannot be called)."""
    rule = ENTRIES.get(executor.node.kind)
    if rule is None:
        raise NoEntry(f"{executor.node.kind} stages have no torch entry point")
    return rule(executor, stages)


class _Called(nn.Module):
    """An encoder: its main input by name (transformers) or positionally, the main output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return call(self.model, x)


class _Main(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_output(self.model(x))


class _Decode(nn.Module):
    """A decoder: `decode` when the model has one (a VAE), else the model itself."""

    def __init__(self, model: nn.Module, decode: bool) -> None:
        super().__init__()
        self.model = model
        self.use_decode = decode

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return main_output(self.model.decode(z) if self.use_decode else self.model(z))


class _Denoise(nn.Module):
    """A denoiser step in the executor's (latents, timesteps, conditioning) convention."""

    def __init__(self, model: nn.Module, denoise: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.denoise = denoise

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.denoise(self.model, x, t, cond)


# example inputs, per kind ----------------------------------------------------------------
def _encoder(ex: Any, stages: Stages) -> Examples:
    proc = ex.processors
    if ex.modality in ("image", "video"):
        size = proc.size
        h, w = size or (64, 64)  # a model without an image size keeps the image's own
        dyn = {0: AUTO} if size else {0: AUTO, 2: AUTO, 3: AUTO}
        return Examples([(torch.randn(n, 3, h, w).to(ex.dtype),) for n in (2, 1, 3)], (dyn,))
    if ex.modality == "audio":
        frames = proc.window or 200
        dyn = {0: AUTO} if proc.window else {0: AUTO, 2: AUTO}
        mels = proc.audio_fe.feature_size
        return Examples([(torch.randn(n, mels, frames).to(ex.dtype),) for n in (2, 1, 3)], (dyn,))
    vocab = proc.vocab or 256
    return Examples([(torch.randint(0, vocab, (n, s)),) for n, s in ((2, 7), (1, 1), (3, 4))], ({0: AUTO, 1: AUTO},))


def _projector(ex: Any, stages: Stages) -> Examples:
    if ex.in_dim is None:
        raise NoEntry("in_dim is not set, so there is no input to export it with")
    shapes = ((2, 5), (1, 1), (3, 9))
    return Examples([(torch.randn(n, s, ex.in_dim).to(ex.dtype),) for n, s in shapes], ({0: AUTO, 1: AUTO},))


def _moe(ex: Any, stages: Stages) -> Examples:
    if ex.hidden is None:
        raise NoEntry("hidden_size is not set, so there is no input to export it with")
    return Examples([(torch.randn(1, s, ex.hidden).to(ex.dtype),) for s in (6, 1, 11)], ({1: AUTO},))


def _decoder(ex: Any, stages: Stages) -> Examples:
    shape = _latent_shape(ex.node, stages)
    if shape is None:
        raise NoEntry("the latents' shape is only known at run time (no diffusion stage feeds this decoder)")
    return Examples([(torch.randn(n, *shape).to(ex.dtype),) for n in (2, 1, 3)], ({0: AUTO},))


def _diffusion(ex: Any, stages: Stages) -> Examples:
    if ex.cond_width is None:
        raise NoEntry("the model's conditioning width is unknown, so there is no input to export it with")
    scheduler = ex.scheduler_cls()
    scheduler.set_timesteps(ex.steps)
    steps = scheduler.timesteps
    args = [(torch.randn(n, *ex.shape).to(ex.dtype), steps[i % len(steps)].expand(n),
             torch.randn(n, s, ex.cond_width).to(ex.dtype))
            for i, (n, s) in enumerate(((2, 3), (ex.branches, 1), (3, 5)))]
    return Examples(args, ({0: AUTO}, {0: AUTO}, {0: AUTO, 1: AUTO}))


def _one(name: str, wrap: Callable[[Any], nn.Module],
         examples: Callable[[Any, Stages], Examples]) -> Callable[[Any, Stages], list[Entry]]:
    def entries(ex: Any, stages: Stages) -> list[Entry]:
        made = examples(ex, stages)
        return [Entry(name, wrap(ex).eval(), made.args[0], made.dynamic, made.args[1:])]

    return entries


def _latent_shape(node: StageNode, stages: Stages) -> tuple[int, int, int] | None:
    """[C, h, w] of the latents a diffusion stage feeds into `node`, from its params."""
    source = next((b.source for b in node.inputs if b.port == "latents"), "")
    producer = source.split(".", 1)[0]
    stage = stages.get(producer)
    if stage is None or stage.kind != "diffusion":
        return None
    p = DiffusionParams.model_validate(stage.params)  # the registry's defaults, as the executor reads them
    return p.latent_channels, p.height // p.downsample, p.width // p.downsample


def _flat_cache(cache: Any) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


class _Prefill(nn.Module):
    """A causal LM's prefill as the ar_llm executor calls it (runtime/executors/llm_calls.py):
    left-padded embeddings, padding mask and positions → last-position logits and hidden
    state, then keys and values per layer. Embeddings, not ids, so that prompts with
    context embeddings run it too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, output_hidden_states=True)
        return (out.logits[:, -1], out.hidden_states[-1][:, -1], *_flat_cache(output_cache(out)))


class _DecodeStep(nn.Module):
    """A causal LM's decode step with its KV cache as tensors: logits, hidden state and the
    grown cache, in the prefill's order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                kv: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)])
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_kwarg(self.model): cache},
                         use_cache=True, logits_to_keep=1, output_hidden_states=True)
        return (out.logits[:, -1], out.hidden_states[-1][:, -1], *_flat_cache(output_cache(out)))


def _llm_entries(ex: Any, stages: Stages) -> list[Entry]:
    model = ex.model
    config = model.config
    vocab = int(config.vocab_size)
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    batch, prompt, past = 2, 7, 5
    dtype = next(model.parameters()).dtype
    embeds = torch.randn(batch, prompt, int(config.hidden_size)).to(dtype)
    mask = torch.ones(batch, prompt, dtype=torch.long)
    positions = torch.arange(prompt).repeat(batch, 1)
    kv = [torch.randn(batch, kv_heads, past, head_dim).to(dtype) for _ in range(2 * layers)]
    step = (torch.randint(0, vocab, (batch, 1)), torch.ones(batch, past + 1, dtype=torch.long),
            torch.full((batch, 1), past))
    seq = {0: AUTO, 1: AUTO}
    return [
        Entry("prefill", _Prefill(model), (embeds, mask, positions), (seq, seq, seq), []),
        Entry("decode_step", _DecodeStep(model), (*step, kv),
              ({0: AUTO}, seq, {0: AUTO}, [{0: AUTO, 2: AUTO}] * len(kv)), []),
    ]


ENTRIES: dict[str, Callable[[Any, Stages], list[Entry]]] = {
    "encoder": _one("forward", lambda ex: _Called(ex.model), _encoder),
    "projector": _one("forward", lambda ex: _Main(ex.model), _projector),
    "moe": _one("forward", lambda ex: _Main(ex.model), _moe),
    "decoder": _one("decode", lambda ex: _Decode(ex.model, ex.decode is not None), _decoder),
    "diffusion": _one("denoise_step", lambda ex: _Denoise(ex.model, ex.denoise), _diffusion),
    "ar_llm": _llm_entries,
}


