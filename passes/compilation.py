"""A compilation: what one compile makes, carried explicitly through the pass pipeline.

A compile is a function of its inputs (the spec, the target, the options). The driver
(omnigraph/compiler.py) makes one `Compilation` and hands it to every pass in turn: the IR
module, the `Target` (loaded once), and the artifacts passes produce for later phases —
each stage's captured FX graphs (capture-stages) and fused kernels (fuse-ops), which the
kernel writer and the bundle writer read. No pass keeps module-level state; nothing of one
compile is visible to another.

A `CompilerPass` is an xDSL ModulePass (so pass pipelines parse and print as MLIR's do)
whose work is `run(comp)`. Called the xDSL way, `apply(ctx, module)`, it runs on a fresh
compilation of that module alone.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from omnigraph.errors import IRError
from omnigraph.target import Target

if TYPE_CHECKING:
    from omnigraph.passes.fusion.fuse import StageFusion
    from omnigraph.passes.fusion.capture import StageCapture


@dataclass
class Artifacts:
    """What passes make besides the IR, by stage name."""

    captures: dict[str, StageCapture] = field(default_factory=dict)  # capture-stages
    fusions: dict[str, StageFusion] = field(default_factory=dict)  # fuse-ops


@dataclass
class Compilation:
    module: ModuleOp
    target: Target | None = None
    artifacts: Artifacts = field(default_factory=Artifacts)
    # Where the module came from, to point errors at the user's text (set by the driver).
    loaded: Any = None  # frontend.LoadedSpec, for specs
    origins: Any = None  # dialect.lower.Origins, for specs
    ir_source: tuple[str, str] | None = None  # (file, text), for IR input

    @classmethod
    def of_module(cls, module: ModuleOp) -> Compilation:
        """A compilation of `module` alone, its target loaded from the name it records."""
        from omnigraph.passes.stage_graph import pipeline_of
        from omnigraph.target import load_target

        name = pipeline_of(module).target
        return cls(module, load_target(name.data) if name is not None else None)

    def need_target(self, what: str) -> Target:
        if self.target is None:
            raise IRError(f"{what} needs a target to plan for", hint="compile with --target NAME")
        return self.target


class CompilerPass(ModulePass):
    """A pass that works on a Compilation (see the module docstring)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        self.run(Compilation.of_module(op))

    @abstractmethod
    def run(self, comp: Compilation) -> None:
        ...
