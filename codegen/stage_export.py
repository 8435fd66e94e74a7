"""torch.export of a loaded stage: the module as its executor calls it, with dynamic dims.

A rule per kind wraps the module in the call its executor makes (an encoder's
`call`, a VAE's `decode`, a denoiser's (x, t, cond) convention) and builds example
inputs from what the executor read at load time. Batch and sequence dims are
`Dim.AUTO`: dynamic where the module allows, fixed where it does not. An export is
kept only if the exported program gives bit-identical outputs to the module on the
example and on differently shaped variants (batch 1, other lengths); otherwise the
stage ships as weights, with the reason.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from omnigraph.kinds import DiffusionParams
from omnigraph.runtime.executor import Executor
from omnigraph.runtime.executors.modules import call, main_output
from omnigraph.runtime.plan import RuntimePlan, StageNode

AUTO = Dim.AUTO
Args = tuple[torch.Tensor, ...]


class ExportFailed(Exception):
    """This stage cannot be a .pt2 program; the message says why (it goes in the manifest)."""


@dataclass
class Examples:
    args: list[Args]  # the first is exported with, the rest only check the program
    dynamic: tuple[dict[int, Any], ...]


@dataclass
class Exported:
    program: torch.export.ExportedProgram
    signature: list[str]  # each input as "name: dtype[dims]", "?" for a dynamic dim


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
def _encoder(ex: Any, plan: RuntimePlan) -> Examples:
    f = ex.frontend
    if ex.modality in ("image", "video"):
        h, w = f.size or (64, 64)  # a model without image_size keeps the image's own size
        dyn = {0: AUTO} if f.size else {0: AUTO, 2: AUTO, 3: AUTO}
        return Examples([(torch.randn(n, 3, h, w).to(ex.dtype),) for n in (2, 1, 3)], (dyn,))
    if ex.modality == "audio":
        frames = f.frames or 200
        dyn = {0: AUTO} if f.frames else {0: AUTO, 2: AUTO}
        return Examples([(torch.randn(n, f.n_mels, frames).to(ex.dtype),) for n in (2, 1, 3)], (dyn,))
    vocab = f.vocab or 256
    return Examples([(torch.randint(0, vocab, (n, s)),) for n, s in ((2, 7), (1, 1), (3, 4))], ({0: AUTO, 1: AUTO},))


def _projector(ex: Any, plan: RuntimePlan) -> Examples:
    if ex.in_dim is None:
        raise ExportFailed("in_dim is not set, so there is no input to export it with")
    shapes = ((2, 5), (1, 1), (3, 9))
    return Examples([(torch.randn(n, s, ex.in_dim).to(ex.dtype),) for n, s in shapes], ({0: AUTO, 1: AUTO},))


def _moe(ex: Any, plan: RuntimePlan) -> Examples:
    if ex.hidden is None:
        raise ExportFailed("hidden_size is not set, so there is no input to export it with")
    return Examples([(torch.randn(1, s, ex.hidden).to(ex.dtype),) for s in (6, 1, 11)], ({1: AUTO},))


def _decoder(ex: Any, plan: RuntimePlan) -> Examples:
    shape = _latent_shape(ex.node, plan)
    if shape is None:
        raise ExportFailed("the latents' shape is only known at run time (no diffusion stage feeds this decoder)")
    return Examples([(torch.randn(n, *shape).to(ex.dtype),) for n in (2, 1, 3)], ({0: AUTO},))


def _diffusion(ex: Any, plan: RuntimePlan) -> Examples:
    if ex.cond_width is None:
        raise ExportFailed("the model's conditioning width is unknown, so there is no input to export it with")
    scheduler = ex.scheduler_cls()
    scheduler.set_timesteps(ex.steps)
    steps = scheduler.timesteps
    args = [(torch.randn(n, *ex.shape).to(ex.dtype), steps[i % len(steps)].expand(n),
             torch.randn(n, s, ex.cond_width).to(ex.dtype))
            for i, (n, s) in enumerate(((2, 3), (ex.branches, 1), (3, 5)))]
    return Examples(args, ({0: AUTO}, {0: AUTO}, {0: AUTO, 1: AUTO}))


@dataclass(frozen=True)
class Rule:
    wrap: Callable[[Any], nn.Module]
    examples: Callable[[Any, RuntimePlan], Examples]


RULES: dict[str, Rule] = {
    "encoder": Rule(lambda ex: _Called(ex.model), _encoder),
    "projector": Rule(lambda ex: _Main(ex.model), _projector),
    "moe": Rule(lambda ex: _Main(ex.model), _moe),
    "decoder": Rule(lambda ex: _Decode(ex.model, ex.decode is not None), _decoder),
    "diffusion": Rule(lambda ex: _Denoise(ex.model, ex.denoise), _diffusion),
}


def export_stage(executor: Executor, plan: RuntimePlan) -> Exported:
    """The loaded stage as a checked torch.export program; ExportFailed says why not."""
    rule = RULES.get(executor.node.kind)
    if rule is None:
        raise ExportFailed(f"{executor.node.kind} stages are not exported")
    module = rule.wrap(executor).eval()
    examples = rule.examples(executor, plan)
    noise = io.StringIO()  # a failed export prints its whole graph
    try:
        with torch.no_grad(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            program = torch.export.export(module, examples.args[0], dynamic_shapes=examples.dynamic)
            _check_same(module, program, examples.args)
    except ExportFailed:
        raise
    except Exception as exc:
        raise ExportFailed(f"torch.export failed: {_why(exc)}") from None
    return Exported(program, _signature(program))


def _check_same(module: nn.Module, program: torch.export.ExportedProgram, all_args: list[Args]) -> None:
    exported = program.module()
    for args in all_args:
        shapes = ", ".join(str(list(a.shape)) for a in args)
        try:
            got = exported(*args)
        except Exception as exc:
            raise ExportFailed(f"the exported program does not run on inputs of shape {shapes}: {_why(exc)}") from None
        want = module(*args)
        if not torch.equal(got, want):
            diff = (got.float() - want.float()).abs().max().item() if got.shape == want.shape else float("nan")
            raise ExportFailed(f"the exported program's output differs from the module's on inputs of "
                               f"shape {shapes} (max |difference| {diff:.3g})")


def _why(exc: BaseException) -> str:
    """The first line of an export error, and where in the model it came from."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("Caused by:")), "")
    head = lines[0] if lines else ""
    return f"{type(exc).__name__}: {head[:200]}" + (f" ({where.removeprefix('Caused by:').strip(' ()')})" if where else "")


def _signature(program: torch.export.ExportedProgram) -> list[str]:
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    described = []
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        dims = ", ".join(str(d) if isinstance(d, int) else "?" for d in value.shape)
        described.append(f"{name}: {str(value.dtype).removeprefix('torch.')}[{dims}]")
    return described


def _latent_shape(node: StageNode, plan: RuntimePlan) -> tuple[int, int, int] | None:
    """[C, h, w] of the latents a diffusion stage feeds into `node`, from its params."""
    source = next((b.source for b in node.inputs if b.port == "latents"), "")
    producer = source.split(".", 1)[0]
    stage = next((s for s in plan.stages() if s.name == producer and s.kind == "diffusion"), None)
    if stage is None:
        return None
    p = DiffusionParams.model_validate(stage.params)  # the registry's defaults, as the executor reads them
    return p.latent_channels, p.height // p.downsample, p.width // p.downsample
