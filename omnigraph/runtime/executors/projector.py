"""`projector`: embeddings → embeddings [seq, out_dim] in another model's space.

Several inputs on the variadic port x are concatenated along the sequence axis
first (Eagle-style fusion: plain concatenation works as well as complex mixing).
`py:` classes get in_dim/out_dim under the names their constructor takes
(nn.Linear: in_features/out_features). Requests whose fused sequences have one
length run as one [batch, seq, in_dim] forward; the module need not be token-wise.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.modules import load_module, main_output, stage_dtype
from omnigraph.runtime.fused_stage import fused_entry

_IN_NAMES = ("in_features", "in_dim", "input_dim", "dim_in")
_OUT_NAMES = ("out_features", "out_dim", "output_dim", "dim_out")


class ProjectorExecutor(GroupedExecutor[torch.Tensor]):
    def load(self) -> None:
        self.in_dim = self.params.get("in_dim")
        self.out_dim = self.params.get("out_dim")
        sizes = {**dict.fromkeys(_IN_NAMES, self.in_dim), **dict.fromkeys(_OUT_NAMES, self.out_dim)}
        self.model = load_module(self.node, self.ctx.device, sizes, self.ctx.seed)
        self.model = fused_entry(self.node, "forward", self.model, self.ctx.device) or self.model
        self.dtype = stage_dtype(self.node)

    def prepare(self, item: WorkItem) -> torch.Tensor:
        x = item.inputs["x"]
        parts = [torch.as_tensor(p) for p in (x if isinstance(x, list) else [x])]
        if self.in_dim is not None:
            for i, p in enumerate(parts):
                if p.dim() != 2 or p.shape[-1] != self.in_dim:
                    raise ValueError(f"input {i} has shape {list(p.shape)}; expected [seq, {self.in_dim}]")
        return torch.cat([p.to(self.dtype) for p in parts])

    def batch_key(self, prepared: torch.Tensor) -> Hashable:
        return tuple(prepared.shape)

    def forward(self, batch: list[torch.Tensor], items: list[WorkItem]) -> list[dict[str, Any]]:
        out = main_output(self.model(torch.stack(batch).to(self.ctx.device)))
        if out.dim() == 2:  # pooled: one token per request
            out = out.unsqueeze(1)
        if self.out_dim is not None and out.shape[-1] != self.out_dim:
            raise ValueError(f"the module maps to width {out.shape[-1]}, but out_dim is {self.out_dim}")
        return [{"embeds": e.to(self.dtype).cpu()} for e in out]
