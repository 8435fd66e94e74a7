"""`fuse-ops`: fuse every captured stage into Triton kernels (the fusion unit: passes/fusion/).

Reads capture-stages' captures from the compilation and leaves each stage's fused graphs
there for codegen (kernel files, bundles); the stage's `fusion` attribute counts kernels
and fused ops per entry, or says why an entry was not fused.
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import DictionaryAttr

from omnigraph.dialect.ops import StageOp
from omnigraph.dialect.values import to_attr
from omnigraph.passes.compilation import Compilation, CompilerPass


@dataclass(frozen=True)
class FuseOpsPass(CompilerPass):
    name = "fuse-ops"

    def run(self, comp: Compilation) -> None:
        from omnigraph.passes.fusion.fuse import fuse_stage, fusion_summary

        for stage in comp.module.walk():
            if not isinstance(stage, StageOp):
                continue
            capture = comp.artifacts.captures.get(stage.label)
            if capture is None:
                continue
            fusion = comp.artifacts.fusions[stage.label] = fuse_stage(capture)
            summary = fusion_summary(fusion)
            if summary:
                stage.properties["fusion"] = DictionaryAttr({k: to_attr(v) for k, v in summary.items()})
