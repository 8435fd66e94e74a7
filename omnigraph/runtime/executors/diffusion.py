"""`diffusion`: a conditioning → latents [C, H/down, W/down], by a denoising loop.

The loop is a diffusers scheduler's (params.scheduler when the spec names one, else the one
a pipeline folder ships in scheduler/, else DDIM), params.steps steps. The model is a UNet2DConditionModel, an
SD3Transformer2DModel (a DiT), or any module called as `model(latents, t, cond)`. Requests whose conditionings have one shape run as one
batch through every step.

Conditioning: an embedding [seq, d]; or [k, seq, d] when k branches cross the edge
(the conditional one first, then the dropped ones); or text, embedded by a seeded
byte table (a stand-in where no text encoder precedes the stage). With
guidance_scale > 1, max(cfg_branches, 2) branches run in the same forward as the
conditional one; missing branches are the null (zero) condition, and guidance pushes
away from their mean: eps = neg + g * (cond - neg).

Noise: seeded by params.seed and the request's own conditioning, so a request is
reproducible whatever it is batched with, and different prompts get different noise.
An input on the optional `latents` port replaces the noise.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from omnigraph.kinds import KINDS
from omnigraph.model_ref import location_of
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.media import byte_ids
from omnigraph.runtime.executors.modules import config_value, load_module, main_output, stage_dtype, stage_seed
from omnigraph.runtime.fused_stage import fused_entry
from omnigraph.runtime.programs import recorded_facts

SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "flow_match": "FlowMatchEulerDiscreteScheduler",
    "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
}
Denoiser = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _unet(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return model(x, t, encoder_hidden_states=cond).sample


def _sd3(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    # SD3 also takes a pooled text vector; the mean over the sequence stands in for it.
    return model(hidden_states=x, encoder_hidden_states=cond, pooled_projections=cond.mean(1), timestep=t).sample


def _module(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return main_output(model(x, t, cond))


DENOISERS: dict[str, Denoiser] = {"UNet2DConditionModel": _unet, "SD3Transformer2DModel": _sd3}
_COND_WIDTH = ("cross_attention_dim", "joint_attention_dim", "cond_dim")


@dataclass
class Job:
    cond: torch.Tensor  # [branches, seq, d]
    noise: torch.Tensor  # [C, h, w]


def pipeline_scheduler(node: StageNode) -> Callable[[], Any] | None:
    """The scheduler a diffusers pipeline folder ships (scheduler/scheduler_config.json), as a
    factory of fresh instances; None when the stage loads no pipeline folder. Its class must be
    one of diffusers' schedulers (it is named by the folder, so it is checked like a model's)."""
    from omnigraph.runtime.checkpoint import CheckpointError, open_checkpoint

    ref = node.model or ""  # a bundle's checkpoint program is localised to Class@folder
    if not ref.startswith("diffusers:") or location_of(ref)[1] is None:
        return None
    root = open_checkpoint(ref, KINDS["diffusion"].traits.components).root
    config_path = root / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        return None
    import diffusers

    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = config.get("_class_name")
    if not isinstance(name, str) or getattr(diffusers, "_class_to_module", {}).get(name) != "schedulers":
        raise CheckpointError(f"{config_path}: '{name}' is not a diffusers scheduler")
    cls = getattr(diffusers, name)
    return lambda: cls.from_config(config)


class DiffusionExecutor(GroupedExecutor[Job]):
    def load(self) -> None:
        import diffusers

        p = self.params
        s = KINDS["diffusion"].settings(p)  # the kind's defaults, as every phase reads them
        # A pipeline folder's own scheduler, with its config, unless the spec names one.
        shipped = None if "scheduler" in p else pipeline_scheduler(self.node)
        if shipped is not None:
            self.scheduler_cls = shipped
        else:
            if s.scheduler not in SCHEDULERS:
                raise ValueError(f"unknown scheduler '{s.scheduler}'; choose one of {', '.join(SCHEDULERS)}")
            self.scheduler_cls = getattr(diffusers, SCHEDULERS[s.scheduler])
        self.steps = s.steps
        self.guidance = s.guidance_scale
        self.branches = max(s.cfg_branches, 2) if self.guidance > 1 else 1
        self.shape = (s.latent_channels, s.height // s.downsample, s.width // s.downsample)
        self.seed = stage_seed(p, self.ctx.seed)
        self.dtype = stage_dtype(self.node)
        self.model = load_module(self.node, self.ctx.device, default_seed=self.ctx.seed)
        # An exported program is already called as (x, t, cond), with its sizes recorded.
        self.denoise = DENOISERS.get(type(self.model).__name__, _module)
        facts = recorded_facts(self.model) or {"in_channels": config_value(self.model, "in_channels"),
                                               "cond_width": config_value(self.model, *_COND_WIDTH)}
        in_channels = facts["in_channels"]
        if in_channels is not None and in_channels != self.shape[0]:
            raise ValueError(f"latent_channels is {self.shape[0]}, but the model takes {in_channels} channels")
        width = facts["cond_width"]
        self.cond_width = width if isinstance(width, int) else None
        self.in_channels = in_channels
        pooled = config_value(self.model, "pooled_projection_dim")
        if self.denoise is _sd3 and pooled != self.cond_width:
            raise ValueError(f"the mean conditioning stands in for the pooled one: set pooled_projection_dim "
                             f"to joint_attention_dim ({self.cond_width}), not {pooled}")
        fused = fused_entry(self.node, "denoise_step", self.model, self.ctx.device)
        if fused is not None:  # the captured step is called as (x, t, cond), like an exported one
            self.model, self.denoise = fused, _module
        self.byte_table: torch.Tensor | None = None
        if self.cond_width is not None:  # for text conditionings
            g = torch.Generator().manual_seed(self.seed)
            self.byte_table = torch.randn(256, self.cond_width, generator=g)

    def bundle_facts(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "cond_width": self.cond_width}

    def prepare(self, item: WorkItem) -> Job:
        value = item.inputs["cond"]
        cond = self._embed_text(value) if isinstance(value, str) else torch.as_tensor(value).float()
        if cond.dim() == 2:
            cond = cond.unsqueeze(0)
        if cond.dim() != 3 or (self.cond_width is not None and cond.shape[-1] != self.cond_width):
            raise ValueError(f"cond has shape {list(cond.shape)}; the model expects [seq, {self.cond_width}]")
        cond = cond[: self.branches]
        null = torch.zeros(self.branches - cond.shape[0], *cond.shape[1:])
        return Job(torch.cat([cond, null]), self._noise(item, value))

    def batch_key(self, prepared: Job) -> Hashable:
        return tuple(prepared.cond.shape)

    def forward(self, batch: list[Job], items: list[WorkItem]) -> list[dict[str, Any]]:
        device = self.ctx.device
        n = self.branches
        cond = torch.cat([job.cond for job in batch]).to(device, self.dtype)  # [G*n, seq, d], branches adjacent
        scheduler = self.scheduler_cls()  # fresh: multistep schedulers keep per-run state
        scheduler.set_timesteps(self.steps, device=device)
        sigma = getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching has none: noise as is
        latents = torch.stack([job.noise for job in batch]).to(device) * sigma
        scale = getattr(scheduler, "scale_model_input", None)
        for t in scheduler.timesteps:
            x = latents.repeat_interleave(n, dim=0)
            if scale is not None:
                x = scale(x, t)
            pred = self.denoise(self.model, x.to(self.dtype), t.expand(x.shape[0]), cond).float()
            pred = pred[:, : self.shape[0]].unflatten(0, (len(batch), n))  # drop learned-sigma channels
            latents = scheduler.step(_guide(pred, self.guidance), t, latents).prev_sample
        return [{"latents": z.float().cpu()} for z in latents]

    def _embed_text(self, text: str) -> torch.Tensor:
        if self.byte_table is None:
            raise ValueError("text conditioning needs a model whose config names its conditioning width")
        return self.byte_table[byte_ids(text)]

    def _noise(self, item: WorkItem, cond: Any) -> torch.Tensor:
        given = item.inputs.get("latents")
        if given is not None:
            given = torch.as_tensor(given).float()
            if tuple(given.shape) != self.shape:
                raise ValueError(f"latents have shape {list(given.shape)}; expected {list(self.shape)}")
            return given
        g = torch.Generator().manual_seed((self.seed + _digest(cond)) % 2**63)
        return torch.randn(self.shape, generator=g)


def _guide(pred: torch.Tensor, scale: float) -> torch.Tensor:
    """[G, branches, ...] predictions → [G, ...] guided ones."""
    if pred.shape[1] == 1:
        return pred[:, 0]
    neg = pred[:, 1:].mean(1)
    return neg + scale * (pred[:, 0] - neg)


def _digest(value: Any) -> int:
    """A stable 63-bit digest of a conditioning (text or tensor)."""
    if isinstance(value, str):
        data = value.encode("utf-8")
    else:
        data = np.ascontiguousarray(torch.as_tensor(value).float().cpu().numpy()).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
