"""Values inside a generated kernel: each FX node of a fused group as a Triton expression at
an index, and the loads of the group's inputs. The heart of the kernel emitter
(kernel_emitter.py): it walks from the group's outputs back to its inputs, through pointwise
ops by the expression table (kernel_ops.py) and a matmul's accumulator tile; every expression
once (CSE), as a line `tN = ...`. View ops as index arithmetic live in kernel_views.py, row
reductions and top-k in kernel_reductions.py (mixins of `GroupValues`); `CannotEmit` and the
shared value types in kernel_types.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch import fx

from omnigraph.passes.fusion import kernel_index as ki
from omnigraph.passes.fusion.kernel_index import Index, Size
from omnigraph.passes.fusion.kernel_ops import COMPARISONS, IDENTITY_OPS, OPS, TRITON_DTYPES, compute_type, literal
from omnigraph.passes.fusion.kernel_reductions import MAX_UNROLLED, RowReductions, row_item
from omnigraph.passes.fusion.kernel_types import CannotEmit, _Value, shape_of, size_expr, tensor_val
from omnigraph.passes.fusion.kernel_views import ViewValues, view_bases
from omnigraph.passes.fusion.classify import OpClass, classify

aten = torch.ops.aten
__all__ = ["MAX_UNROLLED", "CannotEmit", "GroupValues", "matmul_operands", "row_item", "shape_of", "size_expr",
           "tensor_val", "view_bases"]


@dataclass
class _Sizes:
    """Sizes as kernel source: integers inline, symbolic ones as kernel arguments ks0, ks1, …"""

    names: dict[Size, str] = field(default_factory=dict)

    def __call__(self, size: Size) -> str:
        size = sympy.sympify(size)
        if size.is_Integer:
            return str(int(size))
        if size not in self.names:
            self.names[size] = f"ks{len(self.names)}"
        return self.names[size]


class GroupValues(ViewValues, RowReductions):
    """A group's values as Triton source lines, and what the kernel reads to compute them."""

    def __init__(self, name: str, kind: str, nodes: list[fx.Node]) -> None:
        self.name = name
        self.kind = kind
        self.compute = set(nodes)
        self.order = nodes
        self.sizes = _Sizes()
        self.lines: list[str] = []
        self.cse: dict[str, str] = {}
        self.memo: dict[tuple[str, str, str], _Value] = {}
        self.inputs: list[fx.Node] = []  # loaded through a contiguous pointer
        self.operands: list[fx.Node] = []  # matmul operands: strided
        self.masks: dict[str, str] = {}
        self.reduced: dict[fx.Node, _Value] = {}
        self.topks: dict[fx.Node, list[tuple[_Value, _Value]]] = {}
        self.rows: Size | None = None
        self.cols: Size | None = None
        self.anchor: fx.Node | None = None
        self.home: Index | None = None
        self.members = self._members()

    # -- which nodes the kernel covers --------------------------------------------------
    def _members(self) -> set[fx.Node]:
        """The compute nodes, plus the view ops between them and their inputs."""
        members = set(self.compute)
        stack = []
        for node in self.compute:
            args = node.all_input_nodes
            if classify(node) is OpClass.MATMUL:  # operands are read through their strides
                args = [a for a in args if a not in matmul_operands(node)]
            stack.extend(args)
        while stack:
            node = stack.pop()
            if node in members or classify(node) is not OpClass.VIEW:
                continue
            members.add(node)
            stack.extend(node.all_input_nodes)
        return members

    def outputs(self) -> list[fx.Node]:
        def needed(node: fx.Node, seen: set[fx.Node]) -> bool:
            for user in node.users:
                if user not in self.members or user.op == "output":
                    return True
                if user not in self.compute and user not in seen and needed(user, seen | {user}):
                    return True  # a view in the kernel that is also read outside it
            return False

        return [n for n in self.order if needed(n, set())]

    # -- emitting lines ----------------------------------------------------------------------
    def tmp(self, expr: str) -> str:
        if expr in self.cse:
            return self.cse[expr]
        if expr.isidentifier() or ki._is_int(expr):
            return expr
        var = f"t{len(self.cse)}"
        self.cse[expr] = var
        self.lines.append(f"{var} = {expr}")
        return var

    def mask(self, deps: frozenset[str], cond: str | None = None) -> str | None:
        parts = [self.masks[d] for d in sorted(deps) if d in self.masks]
        if cond:
            parts.append(cond)
        return " & ".join(parts) if parts else None

    def load(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        val = tensor_val(node)
        if val.dtype not in TRITON_DTYPES:
            raise CannotEmit(f"{node.name}: dtype {val.dtype}")
        if node not in self.inputs:
            self.inputs.append(node)
        ptr = f"in{self.inputs.index(node)}"
        addr = idx.ravel(self.sizes)
        mask = self.mask(idx.deps, cond)
        ty = compute_type(val.dtype)
        load = f"tl.load({ptr} + ({addr}){', mask=' + mask + ', other=0' if mask else ''})"
        if TRITON_DTYPES[val.dtype] != ty:
            load += f".to({ty})"
        return _Value(self.tmp(load), idx.deps, ty)

    def cast(self, v: _Value, ty: str) -> _Value:
        if v.ty == ty:
            return v
        if ki._is_int(v.expr) or _is_float_literal(v.expr):
            return _Value(v.expr, v.deps, ty)
        return _Value(self.tmp(f"{v.expr}.to({ty})"), v.deps, ty)

    # -- values ------------------------------------------------------------------------
    def value(self, node: Any, idx: Index, cond: str | None = None) -> _Value:
        if not isinstance(node, fx.Node):
            return _Value(literal(node), frozenset(), "tl.float32" if isinstance(node, float) else "tl.int64")
        key = (node.name, idx.key(self.sizes), cond or "")
        if key not in self.memo:
            self.memo[key] = self._value(node, idx, cond)
        return self.memo[key]

    def _value(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        if node not in self.members:
            return self.load(node, idx, cond)
        if node not in self.compute:
            return self.view_value(node, idx, cond)
        cls = classify(node)
        if cls is OpClass.REDUCTION:
            return self.reduction_value(node, idx)
        if cls is OpClass.MATMUL:
            return self.matmul_value(node, idx)
        return self.pointwise_value(node, idx, cond)

    def pointwise_value(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        target = node.target
        val = tensor_val(node)
        ty = compute_type(val.dtype)
        if target in (aten.full.default, aten.scalar_tensor.default):
            fill = node.args[1] if target is aten.full.default else node.args[0]
            return self.cast(_Value(literal(fill), frozenset(), _literal_type(fill)), ty)
        if target in (aten.full_like.default, aten.zeros_like.default, aten.ones_like.default):
            fill = node.args[1] if target is aten.full_like.default else (0 if target is aten.zeros_like.default else 1)
            return self.cast(_Value(literal(fill), frozenset(), _literal_type(fill)), ty)
        if target in (aten.arange.start_step, aten.arange.start, aten.arange.default):
            return self.arange_value(node, idx, ty)
        if target in IDENTITY_OPS:
            return self.cast(self.value(node.args[0], ki.view(idx, shape_of(node.args[0]), self.sizes), cond), ty)
        render = OPS.get(target)
        if render is None:
            raise CannotEmit(f"no Triton expression for {target}")
        operands = [self.operand(a, idx, cond) for a in node.args]
        kwargs = {k: v for k, v in node.kwargs.items()}
        if target in COMPARISONS:
            common = _promote([o.ty for o in operands])
            operands = [self.cast(o, common) for o in operands]
        elif target is aten.where.self:
            operands = [operands[0]] + [self.cast(o, ty) for o in operands[1:]]
        elif target in (aten.clamp.default,):
            operands = [self.cast(operands[0], ty)] + [
                _Value("None", frozenset(), ty) if a is None else self.cast(o, ty)
                for a, o in zip(node.args[1:], operands[1:])]
        else:
            operands = [self.cast(o, ty) if ty == "tl.float32" or o.ty != "tl.float32" else o for o in operands]
        expr = render([o.expr for o in operands], kwargs)
        deps = frozenset().union(*(o.deps for o in operands)) if operands else frozenset()
        out_ty = "tl.int1" if target in COMPARISONS else ty
        return _Value(self.tmp(expr), deps, out_ty)

    def operand(self, arg: Any, idx: Index, cond: str | None) -> _Value:
        if isinstance(arg, fx.Node):
            try:
                return self.value(arg, ki.broadcast(idx, shape_of(arg), self.sizes), cond)
            except ValueError as exc:
                raise CannotEmit(str(exc)) from None
        if arg is None:
            return _Value("None", frozenset(), "tl.float32")
        if isinstance(arg, (int, float, bool)):
            return _Value(literal(arg), frozenset(), _literal_type(arg))
        raise CannotEmit(f"operand {arg!r}")

    def arange_value(self, node: fx.Node, idx: Index, ty: str) -> _Value:
        args = list(node.args)
        if node.target is aten.arange.default:
            start, step = 0, 1
        else:
            start = args[0]
            step = args[2] if len(args) > 2 else node.kwargs.get("step", 1)
        if not all(isinstance(a, (int, float)) for a in (start, step)):
            raise CannotEmit("arange with symbolic start or step")
        (coord, deps), = idx.coords(self.sizes)
        expr = ki.add(ki.mul(coord, literal(step)), literal(start))
        return self.cast(_Value(self.tmp(expr) if expr != coord else expr, deps, "tl.int64"), ty)

    # -- matmul -----------------------------------------------------------------------
    def matmul_value(self, node: fx.Node, idx: Index) -> _Value:
        if node is not self.anchor or self.home is None or idx.key(self.sizes) != self.home.key(self.sizes):
            raise CannotEmit(f"{node.name} is read at another index than its own tile")
        acc = _Value("acc", self.home.deps, "tl.float32")
        if node.target is aten.addmm.default:
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                raise CannotEmit("addmm with alpha or beta")
            bias = self.operand(node.args[0], idx, None)
            return _Value(self.tmp(f"acc + {self.cast(bias, 'tl.float32').expr}"), acc.deps | bias.deps, "tl.float32")
        return acc


def matmul_operands(node: fx.Node) -> tuple[fx.Node, fx.Node]:
    if node.target is aten.addmm.default:
        return node.args[1], node.args[2]
    return node.args[0], node.args[1]


def _is_float_literal(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.startswith('float("')


def _literal_type(value: Any) -> str:
    if isinstance(value, bool):
        return "tl.int1"
    return "tl.float32" if isinstance(value, float) else "tl.int64"


def _promote(types: list[str]) -> str:
    if "tl.float32" in types:
        return "tl.float32"
    for ty in ("tl.int64", "tl.int32", "tl.int16", "tl.int8", "tl.uint8"):
        if ty in types:
            return ty
    return types[0] if types else "tl.float32"
