"""The `omni` stage-graph dialect (xDSL): types, attributes, ops, lowering, text I/O."""
from xdsl.ir import Dialect

from omnigraph.dialect.attrs import CoresAttr, MemAttr, ParallelAttr, PlaceAttr, PlanAttr
from omnigraph.dialect.ops import InputOp, LoopOp, OutputOp, PipelineOp, RouteOp, StageOp, YieldOp
from omnigraph.dialect.types import KvType, StreamType, TensorType

OMNI = Dialect(
    "omni",
    [PipelineOp, InputOp, OutputOp, StageOp, RouteOp, LoopOp, YieldOp],
    [TensorType, StreamType, KvType, ParallelAttr, PlanAttr, PlaceAttr, MemAttr, CoresAttr],
)

__all__ = [
    "OMNI", "CoresAttr", "InputOp", "LoopOp", "MemAttr", "OutputOp", "ParallelAttr", "PipelineOp", "PlaceAttr", "PlanAttr",
    "KvType", "RouteOp", "StageOp", "StreamType", "TensorType", "YieldOp",
]
