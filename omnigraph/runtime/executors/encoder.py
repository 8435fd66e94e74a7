"""`encoder`: an image, video, audio or text encoder → embeddings [seq, hidden].

What the model is fed depends on the modality of its input, through transformers' own
processors (processors.py: the checkpoint's, else the model family's):
  image  uint8 [3, H, W] → pixel values [1, 3, h, w] (resized to the model's image size)
  video  uint8 [T, 3, H, W] → T frames as above; the frames' tokens are concatenated
  audio  Audio → log-mel [1, num_mel_bins, frames]; encoders with max_source_positions
         (Whisper, Qwen2-Audio) get their fixed window, others the audio's length
  text   str → the checkpoint's tokens, else UTF-8 byte ids [1, L]; tokens as they are
transformers models take it by their main input name, other modules positionally. The
output's last hidden state [N, seq, hidden] is the embeddings; [N, hidden] is one token
and a conv feature map [N, C, h, w] is h*w tokens of width C.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.output_cache import OutputCache
from omnigraph.runtime.executors.modules import call, checkpoint_folder, config_value, load_module, stage_dtype
from omnigraph.runtime.executors.processors import Processors
from omnigraph.runtime.programs import recorded_facts
from omnigraph.runtime.fused_stage import fused_entry

DEFAULT_CACHE_MB = 64  # embeddings kept by input content (params.cache_mb; 0: none)
FEEDS: dict[str, Callable[[Processors, Any], torch.Tensor]] = {
    "image": Processors.image,
    "video": Processors.video,
    "audio": Processors.audio,
    "text": Processors.text,
    "tokens": Processors.tokens,
}


class EncoderExecutor(GroupedExecutor[torch.Tensor]):
    def load(self) -> None:
        self.hidden = self.params.get("hidden_size")
        self.max_tokens = self.params.get("max_tokens")
        self.model = load_module(self.node, self.ctx.device, {"hidden_size": self.hidden}, self.ctx.seed)
        self.dtype = stage_dtype(self.node)
        self.modality = self.node.inputs[0].modality
        if self.modality not in FEEDS:
            raise ValueError(f"encoders read {', '.join(FEEDS)}, not {self.modality}")
        facts = recorded_facts(self.model)  # an exported program has no config to read
        self.processors = (Processors.of(self.model, checkpoint_folder(self.node), self.modality,
                                         _audio_window(self.model))
                           if facts is None else Processors.from_facts(facts))
        self.model = fused_entry(self.node, "forward", self.model, self.ctx.device) or self.model
        cache_mb = self.params.get("cache_mb", DEFAULT_CACHE_MB)
        self.output_cache = OutputCache(int(cache_mb * (1 << 20))) if cache_mb else None

    def stats(self) -> dict[str, Any]:
        return self.output_cache.stats() if self.output_cache is not None else {}

    def bundle_facts(self) -> dict[str, Any]:
        return self.processors.facts()

    def prepare(self, item: WorkItem) -> torch.Tensor:
        return FEEDS[self.modality](self.processors, item.inputs["x"])

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
