"""`encoder`: an image, video, audio or text encoder → embeddings [seq, hidden].

What the model is fed depends on the modality of its input (a table below):
  image  uint8 [3, H, W] → normalized float [1, 3, h, w], resized to config.image_size
         when the model has one (SigLIP, ViT, CLIP towers), else kept at its size
  video  uint8 [T, 3, H, W] → T frames as above; the frames' tokens are concatenated
  audio  Audio → log-mel [1, num_mel_bins, frames]; encoders with max_source_positions
         (Whisper, Qwen2-Audio) get their fixed window, others the audio's length
  text   str → UTF-8 byte ids [1, L] (no tokenizer files without a hub); tokens as they are
transformers models take it by their main input name, other modules positionally. The
output's last hidden state [N, seq, hidden] is the embeddings; [N, hidden] is one token
and a conv feature map [N, C, h, w] is h*w tokens of width C.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.media import (
    DEFAULT_NORM, IMAGE_NORM, MeanStd, as_rgb, byte_ids, image_pixels, image_size, log_mel)
from omnigraph.runtime.executors.modules import call, config_value, load_module, stage_dtype
from omnigraph.runtime.programs import recorded_facts
from omnigraph.runtime.fused_stage import fused_entry

DEFAULT_MELS = 80  # Whisper's, for modules that do not say


@dataclass(frozen=True)
class Frontend:
    """How this encoder's model wants its input: the geometry read from its config."""

    size: tuple[int, int] | None
    norm: MeanStd
    n_mels: int
    frames: int | None
    vocab: int | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> Frontend:
        return cls(size=image_size(config_value(model, "image_size")),
                   norm=IMAGE_NORM.get(str(config_value(model, "model_type")), DEFAULT_NORM),
                   n_mels=int(config_value(model, "num_mel_bins", "n_mels") or DEFAULT_MELS),
                   frames=_audio_window(model),
                   vocab=config_value(model, "vocab_size"))

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> Frontend:
        """As recorded in a bundle (JSON: tuples came back as lists)."""
        mean, std = facts["norm"]
        size = facts["size"]
        return cls(size=None if size is None else (int(size[0]), int(size[1])),
                   norm=(tuple(mean), tuple(std)), n_mels=int(facts["n_mels"]),
                   frames=facts["frames"], vocab=facts["vocab"])

    def image(self, value: torch.Tensor) -> torch.Tensor:
        return image_pixels(as_rgb(torch.as_tensor(value)).unsqueeze(0), self.size, self.norm)

    def video(self, value: torch.Tensor) -> torch.Tensor:
        frames = torch.stack([as_rgb(f) for f in torch.as_tensor(value)])
        return image_pixels(frames, self.size, self.norm)

    def audio(self, value: Any) -> torch.Tensor:
        return log_mel(value, self.n_mels, self.frames).unsqueeze(0)

    def text(self, value: str) -> torch.Tensor:
        return byte_ids(value, self.vocab).unsqueeze(0)

    def tokens(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.long).flatten().unsqueeze(0)


FEEDS: dict[str, Callable[[Frontend, Any], torch.Tensor]] = {
    "image": Frontend.image,
    "video": Frontend.video,
    "audio": Frontend.audio,
    "text": Frontend.text,
    "tokens": Frontend.tokens,
}


class EncoderExecutor(GroupedExecutor[torch.Tensor]):
    def load(self) -> None:
        self.hidden = self.params.get("hidden_size")
        self.max_tokens = self.params.get("max_tokens")
        self.model = load_module(self.node, self.ctx.device, {"hidden_size": self.hidden}, self.ctx.seed)
        self.dtype = stage_dtype(self.params)
        self.modality = self.node.inputs[0].modality
        if self.modality not in FEEDS:
            raise ValueError(f"encoders read {', '.join(FEEDS)}, not {self.modality}")
        facts = recorded_facts(self.model)  # an exported program has no config to read
        self.frontend = Frontend.of(self.model) if facts is None else Frontend.from_facts(facts)
        self.model = fused_entry(self.node, "forward", self.model, self.ctx.device) or self.model

    def bundle_facts(self) -> dict[str, Any]:
        return asdict(self.frontend)

    def prepare(self, item: WorkItem) -> torch.Tensor:
        return FEEDS[self.modality](self.frontend, item.inputs["x"])

    def batch_key(self, prepared: torch.Tensor) -> Hashable:
        return tuple(prepared.shape[1:])

    def forward(self, batch: list[torch.Tensor], items: list[WorkItem]) -> list[dict[str, Any]]:
        x = torch.cat(batch).to(self.ctx.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        tokens = _as_tokens(call(self.model, x))
        if self.hidden is not None and tokens.shape[-1] != self.hidden:
            raise ValueError(f"the model emits embeddings of width {tokens.shape[-1]}, "
                             f"but hidden_size is {self.hidden}")
        outs = []
        for part in tokens.split([b.shape[0] for b in batch]):  # a video's frames → one sequence
            embeds = part.reshape(-1, part.shape[-1])[: self.max_tokens]
            outs.append({"embeds": embeds.to(self.dtype).cpu()})
        return outs


def _as_tokens(out: torch.Tensor) -> torch.Tensor:
    """A model output as [N, seq, hidden]."""
    if out.dim() == 2:
        return out.unsqueeze(1)
    if out.dim() == 4:  # conv feature map [N, C, h, w]
        return out.flatten(2).transpose(1, 2)
    if out.dim() != 3:
        raise ValueError(f"cannot read embeddings from a model output of shape {list(out.shape)}")
    return out


def _audio_window(model: torch.nn.Module) -> int | None:
    """Mel frames a fixed-window audio encoder checks for: its positions × its conv strides."""
    positions = config_value(model, "max_source_positions")
    if positions is None:
        return None
    stride = 1
    for conv in (getattr(model, "conv1", None), getattr(model, "conv2", None)):
        stride *= conv.stride[0] if conv is not None else 1
    return int(positions) * stride
