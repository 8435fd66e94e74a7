"""The planner's view of a pipeline module: its stages in order, who feeds whom, how often
each runs per request.

A route sends a request down one case: each case's stages run with probability
1/len(cases) (no better prior before traffic is seen). A loop body runs up to max_iters
times: planned for the worst case, so a plan never overloads when every request iterates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, SSAValue

from omnigraph.dialect.checks import params_of
from omnigraph.dialect.ops import InputOp, LoopOp, PipelineOp, RouteOp, StageOp


@dataclass
class StageInfo:
    op: StageOp
    name: str
    kind: str
    model: str | None
    params: dict[str, Any]
    visits: float
    preds: list[tuple[str, bool]] = field(default_factory=list)  # (producer stage, stream edge)
    feeds: list[str] = field(default_factory=list)  # modalities of pipeline inputs it reads directly


def pipeline_of(module: ModuleOp) -> PipelineOp:
    return next(op for op in module.ops if isinstance(op, PipelineOp))


def stage_graph(module: ModuleOp) -> list[StageInfo]:
    """Every stage, producers before consumers (the IR's SSA order)."""
    out: list[StageInfo] = []
    _walk(pipeline_of(module).block, 1.0, {}, out)
    return out


def _producer(value: SSAValue, routes: dict[SSAValue, list[str]]) -> list[str]:
    """The stages a value comes from, looking through routes."""
    owner = value.owner
    if isinstance(owner, StageOp):
        return [owner.label]
    return routes.get(value, [])


def _walk(block: Block, visits: float, routes: dict[SSAValue, list[str]], out: list[StageInfo]) -> None:
    weight: dict[SSAValue, float] = {}  # route outputs: the probability their case is taken
    for op in block.ops:
        if isinstance(op, RouteOp):
            for result in op.results:
                routes[result] = [p for v in op.operands for p in _producer(v, routes)]
                weight[result] = 1.0 / max(1, len(op.results))
        elif isinstance(op, StageOp):
            share = min((weight.get(v, 1.0) for v in op.operands), default=1.0)
            preds = []
            for v in op.operands:
                for p in _producer(v, routes):
                    if (p, v.type.is_stream) not in preds:
                        preds.append((p, v.type.is_stream))
            feeds = [v.type.mod for v in op.operands if isinstance(v.owner, InputOp)]
            out.append(StageInfo(op, op.label, op.kind.data, op.model.data if op.model else None,
                                 params_of(op), visits * share, preds, feeds))
            for result in op.results:  # a stage on a route case passes its share on
                if share < 1.0:
                    weight[result] = share
        elif isinstance(op, LoopOp):
            _walk(op.body.block, visits * op.iterations, routes, out)
