"""What each FX node of a captured stage is, for fusion: a table keyed by ATen op.

    pointwise  one output element from the same-index elements of its inputs (broadcasting)
    reduction  a row statistic over trailing dims (sum, mean, amax, amin), or top-k over them
    matmul     mm / addmm / bmm: a template kernel that takes a pointwise epilogue
    view       layout only (view, permute, slice, expand, cat, …): free in eager mode;
               inside a kernel an index transformation, never a buffer
    opaque     everything else (attention, convolution, embedding, scatter, …): runs as it is
    meta       shape arithmetic and assertions: no tensor data

The table is the single place that says which ops codegen can express: the kernel
emitter's expression table covers exactly the pointwise and reduction entries here.
"""
from __future__ import annotations

import operator
from enum import Enum
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten


class OpClass(str, Enum):
    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    MATMUL = "matmul"
    VIEW = "view"
    OPAQUE = "opaque"
    META = "meta"


POINTWISE_OPS: tuple[Any, ...] = (
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar,
    aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode,
    aten.neg.default, aten.exp.default, aten.exp2.default, aten.expm1.default, aten.log.default,
    aten.log1p.default, aten.sqrt.default, aten.rsqrt.default, aten.reciprocal.default,
    aten.sigmoid.default, aten.tanh.default, aten.erf.default, aten.sin.default, aten.cos.default,
    aten.abs.default, aten.relu.default, aten.silu.default, aten.gelu.default,
    aten.pow.Tensor_Scalar, aten.maximum.default, aten.minimum.default,
    aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.where.self,
    aten.eq.Tensor, aten.eq.Scalar, aten.ne.Tensor, aten.ne.Scalar, aten.lt.Tensor, aten.lt.Scalar,
    aten.le.Tensor, aten.le.Scalar, aten.gt.Tensor, aten.gt.Scalar, aten.ge.Tensor, aten.ge.Scalar,
    aten.logical_not.default, aten.logical_and.default, aten.logical_or.default,
    aten.bitwise_not.default, aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.sign.default,
    aten._to_copy.default, aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default,
    aten.full.default, aten.scalar_tensor.default, aten.full_like.default, aten.zeros_like.default,
    aten.ones_like.default, aten.arange.start_step, aten.arange.start, aten.arange.default,
)
REDUCTION_OPS: tuple[Any, ...] = (
    aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default, aten.topk.default,
)
MATMUL_OPS: tuple[Any, ...] = (aten.mm.default, aten.addmm.default, aten.bmm.default)
VIEW_OPS: tuple[Any, ...] = (
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.expand.default, aten.slice.Tensor, aten.select.int,
    aten.cat.default, aten.split.Tensor, aten.split_with_sizes.default,
)
META_OPS: tuple[Any, ...] = (
    aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten._assert_tensor_metadata.default,
    aten._assert_scalar.default, aten.sym_constrain_range_for_size.default,
    operator.mul, operator.add, operator.sub, operator.floordiv, operator.mod, operator.neg,
    operator.truediv, operator.getitem, torch.sym_float, torch.sym_int, torch.sym_max, torch.sym_min,
)

TABLE: dict[Any, OpClass] = {
    **{op: OpClass.POINTWISE for op in POINTWISE_OPS},
    **{op: OpClass.REDUCTION for op in REDUCTION_OPS},
    **{op: OpClass.MATMUL for op in MATMUL_OPS},
    **{op: OpClass.VIEW for op in VIEW_OPS},
    **{op: OpClass.META for op in META_OPS},
}


def classify(node: fx.Node) -> OpClass:
    """The class of one node of a core-ATen graph. Placeholders, get_attr and output are META."""
    if node.op != "call_function":
        return OpClass.META
    if node.target is operator.getitem:  # an element of a multi-output op: follows its producer
        producer = node.args[0]
        if isinstance(producer, fx.Node) and producer.op == "call_function" and producer.target in (
                aten.topk.default, aten.split.Tensor, aten.split_with_sizes.default):
            return classify(producer)
        return OpClass.META if not isinstance(_val(node), torch.Tensor) else OpClass.OPAQUE
    cls = TABLE.get(node.target, OpClass.OPAQUE)
    if node.target is aten._to_copy.default and set(node.kwargs) - {"dtype", "memory_format"}:
        return OpClass.OPAQUE  # a copy to another device or layout is not arithmetic
    if cls is OpClass.POINTWISE and not _tensor_out(node):
        return OpClass.META
    if cls is OpClass.POINTWISE and _complex_or_odd(node):
        return OpClass.OPAQUE
    return cls


def is_compute(cls: OpClass) -> bool:
    """Classes that become (part of) a kernel."""
    return cls in (OpClass.POINTWISE, OpClass.REDUCTION, OpClass.MATMUL)


def _val(node: fx.Node) -> Any:
    return node.meta.get("val")


def _tensor_out(node: fx.Node) -> bool:
    return isinstance(_val(node), torch.Tensor)


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool,
                  torch.int8, torch.uint8, torch.int16)


def _complex_or_odd(node: fx.Node) -> bool:
    """Dtypes a generated kernel does not compute in (complex, float64, fp8): left to eager."""
    values = [_val(node), *(_val(a) for a in node.all_input_nodes)]
    return any(isinstance(v, torch.Tensor) and v.dtype not in _KERNEL_DTYPES for v in values)
