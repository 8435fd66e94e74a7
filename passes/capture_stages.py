"""`capture-stages`: each stage's entry points as torch.export FX graphs (passes/fusion/capture.py).

Entry points are what the runtime calls, in its own convention (runtime/entry_points.py, the
same entries a bundle exports): an encoder's, projector's or MoE block's forward, a decoder's
decode, one denoising step, and an LLM's prefill and decode step (the decode step with its KV
cache as explicit tensors). The programs go in the compilation's artifacts, where fuse-ops
reads them; the stage's `graphs` attribute summarises them. Identical stages (same kind,
model and parameters) are captured once. Not in the default pipeline: `--emit kernels`,
`--dump-kernels` and `--emit bundle --kernels` add it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from xdsl.dialects.builtin import DictionaryAttr

from omnigraph.dialect.ops import StageOp
from omnigraph.dialect.values import to_attr
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.runtime_view import stage_nodes


@dataclass(frozen=True)
class CaptureStagesPass(CompilerPass):
    name = "capture-stages"

    def run(self, comp: Compilation) -> None:
        from dataclasses import replace

        from omnigraph.passes.fusion.capture import capture_stage, graph_summary

        nodes = stage_nodes(comp.module)
        seen: dict[str, str] = {}  # kind, model and params -> the first stage captured with them
        for op in comp.module.walk():
            if not isinstance(op, StageOp):
                continue
            node = nodes[op.label]
            key = json.dumps([node.kind, node.model, node.params], sort_keys=True, default=str)
            if key in seen:
                capture = replace(comp.artifacts.captures[seen[key]], stage=op.label)
            else:
                seen[key] = op.label
                capture = capture_stage(node, nodes)
            comp.artifacts.captures[op.label] = capture
            summary = graph_summary(capture)
            if summary:
                op.properties["graphs"] = DictionaryAttr({k: to_attr(v) for k, v in summary.items()})
