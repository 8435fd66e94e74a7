"""`decoder`: latents → an image, a video or audio (params.modality).

Models with a `decode` method (diffusers AutoencoderKL and its kin) get the latents
unscaled as diffusers pipelines do, z / scaling_factor + shift_factor; any other
module is called on the latents. Outputs, batched over requests:
  image  pixels [N, 3, H, W] in [-1, 1] → uint8 [3, H, W]
  video  pixels [N, 3, T, H, W] (diffusers' video layout) in [-1, 1] → uint8 [T, 3, H, W]
  audio  samples [N, S] or [N, 1, S] in [-1, 1] → Audio at params.sample_rate
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from omnigraph.kinds import KINDS
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.media import to_uint8
from omnigraph.runtime.executors.modules import config_value, load_module, main_output, stage_dtype
from omnigraph.runtime.programs import recorded_facts
from omnigraph.runtime.values import Audio
from omnigraph.runtime.fused_stage import fused_entry

DEFAULT_RATE = 22050  # as the audio stages default to


def _image(x: torch.Tensor, rate: int) -> torch.Tensor:
    return to_uint8(x)


def _video(x: torch.Tensor, rate: int) -> torch.Tensor:
    return to_uint8(x.transpose(0, 1))


def _audio(x: torch.Tensor, rate: int) -> Audio:
    return Audio(x.float().clamp(-1, 1).flatten().cpu().numpy().astype(np.float32), rate)


OUTPUTS: dict[str, Callable[[torch.Tensor, int], Any]] = {"image": _image, "video": _video, "audio": _audio}


class DecoderExecutor(GroupedExecutor[torch.Tensor]):
    def load(self) -> None:
        s = KINDS["decoder"].settings(self.params)
        self.modality = s.modality
        self.upsample = s.upsample
        self.rate = s.sample_rate or DEFAULT_RATE
        self.dtype = stage_dtype(self.node)
        self.model = load_module(self.node, self.ctx.device, default_seed=self.ctx.seed)
        # An exported program is the decode itself: it has no `decode`, and its scales are recorded.
        self.decode = getattr(self.model, "decode", None)
        facts = recorded_facts(self.model)
        if facts is not None:
            self.scale, self.shift = float(facts["scale"]), float(facts["shift"])
            return
        self.scale = float(config_value(self.model, "scaling_factor") or 1.0) if self.decode else 1.0
        self.shift = float(config_value(self.model, "shift_factor") or 0.0) if self.decode else 0.0
        blocks = config_value(self.model, "block_out_channels")
        if self.decode and self.modality == "image" and blocks and 2 ** (len(blocks) - 1) != self.upsample:
            raise ValueError(f"upsample is {self.upsample}, but this VAE upsamples by {2 ** (len(blocks) - 1)} "
                             f"({len(blocks)} blocks)")
        fused = fused_entry(self.node, "decode", self.model, self.ctx.device)
        if fused is not None:  # the captured entry is the decode itself
            self.model, self.decode = fused, None

    def bundle_facts(self) -> dict[str, Any]:
        return {"scale": self.scale, "shift": self.shift}

    def prepare(self, item: WorkItem) -> torch.Tensor:
        return torch.as_tensor(item.inputs["latents"]).float()

    def batch_key(self, prepared: torch.Tensor) -> Hashable:
        return tuple(prepared.shape)

    def forward(self, batch: list[torch.Tensor], items: list[WorkItem]) -> list[dict[str, Any]]:
        z = (torch.stack(batch) / self.scale + self.shift).to(self.ctx.device, self.dtype)
        out = main_output(self.decode(z) if self.decode else self.model(z))
        if self.modality == "image":
            want = [len(batch), 3, *(d * self.upsample for d in batch[0].shape[-2:])]
            if list(out.shape) != want:
                raise ValueError(f"decoded images have shape {list(out.shape)[1:]}; latents "
                                 f"{list(batch[0].shape)} × upsample {self.upsample} give {want[1:]}")
        return [{self.modality: OUTPUTS[self.modality](x, self.rate)} for x in out]
