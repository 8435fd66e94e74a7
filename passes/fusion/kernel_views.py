"""View ops inside a kernel as index arithmetic (kernel_index.py): reshape, permute,
transpose, expand, slice, select, split pieces and cat read their source at a rewritten
index instead of moving data. `ViewValues` is a mixin of kernel_values.GroupValues.
"""
from __future__ import annotations

import operator

import sympy
import torch
from torch import fx

from omnigraph.passes.fusion import kernel_index as ki
from omnigraph.passes.fusion.kernel_index import Index, Size
from omnigraph.passes.fusion.kernel_ops import compute_type
from omnigraph.passes.fusion.kernel_types import CannotEmit, _dim, _Value, shape_of, tensor_val
from omnigraph.passes.fusion.classify import OpClass, classify

aten = torch.ops.aten


class ViewValues:
    """A view node's value: its source's value at the view's index. Mixed into GroupValues,
    whose `value`, `tmp`, `cast` and `sizes` it uses."""

    def view_value(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        t = node.target
        name = self.sizes
        if t is operator.getitem:  # a piece of split: a slice of its input
            split = node.args[0]
            src, size_arg = split.args[0], split.args[1]
            dim = _dim(split.args[2] if len(split.args) > 2 else 0, len(shape_of(src)))
            sizes = [size_arg] * (int(node.args[1]) + 1) if isinstance(size_arg, int) else list(size_arg)
            offset = sum(int(s) for s in sizes[: int(node.args[1])])
            (coord, deps) = idx.coords(name)[dim]
            return self.value(src, ki.replace_dim(idx, dim, ki.add(coord, str(offset)), deps,
                                                  shape_of(src)[dim], name), cond)
        src = node.args[0]
        if t in (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
                 aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default):
            return self.value(src, ki.view(idx, shape_of(src), name), cond)
        if t is aten.permute.default:
            return self.value(src, ki.permute(idx, [_dim(d, len(node.args[1])) for d in node.args[1]], name), cond)
        if t in (aten.transpose.int, aten.t.default):
            n = len(shape_of(src))
            perm = list(range(n))
            if n >= 2:
                d0, d1 = (0, 1) if t is aten.t.default else (_dim(node.args[1], n), _dim(node.args[2], n))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            return self.value(src, ki.permute(idx, perm, name), cond)
        if t is aten.expand.default:
            return self.value(src, ki.broadcast(idx, shape_of(src), name), cond)
        if t is aten.slice.Tensor:
            return self.slice_value(node, idx, cond)
        if t is aten.select.int:
            shape = shape_of(src)
            dim = _dim(node.args[1], len(shape))
            i = node.args[2]
            if not isinstance(i, int):
                raise CannotEmit("select at a symbolic index")
            if i < 0:
                if not shape[dim].is_Integer:
                    raise CannotEmit("select from the end of a dynamic dim")
                i += int(shape[dim])
            return self.value(src, ki.insert_dim(idx, dim, str(i), shape[dim], name), cond)
        if t is aten.cat.default:
            return self.cat_value(node, idx, cond)
        raise CannotEmit(f"view op {t}")

    def slice_value(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        src = node.args[0]
        shape = shape_of(src)
        dim = _dim(node.args[1] if len(node.args) > 1 else 0, len(shape))
        start = node.args[2] if len(node.args) > 2 else 0
        step = node.args[4] if len(node.args) > 4 else 1
        start = 0 if start is None else start
        if not isinstance(start, int) or not isinstance(step, int):
            raise CannotEmit("slice with a symbolic start or step")
        if start < 0:
            if not shape[dim].is_Integer:
                raise CannotEmit("slice from the end of a dynamic dim")
            start = max(0, start + int(shape[dim]))
        (coord, deps) = idx.coords(self.sizes)[dim]
        new = ki.add(ki.mul(coord, str(step)), str(start))
        return self.value(src, ki.replace_dim(idx, dim, new, deps, shape[dim], self.sizes), cond)

    def cat_value(self, node: fx.Node, idx: Index, cond: str | None) -> _Value:
        parts = [p for p in node.args[0] if 0 not in tensor_val(p).shape]
        rank = len(shape_of(node))
        dim = _dim(node.args[1] if len(node.args) > 1 else 0, rank)
        (coord, deps) = idx.coords(self.sizes)[dim]
        ty = compute_type(tensor_val(node).dtype)
        offset: Size = sympy.Integer(0)
        picks: list[tuple[str, _Value]] = []
        for part in parts:
            size = shape_of(part)[dim]
            lo, hi = self.sizes(offset), self.sizes(offset + size)
            inside = self.tmp(f"({coord} >= {lo}) & ({coord} < {hi})") if lo != "0" else self.tmp(f"{coord} < {hi}")
            inner = ki.replace_dim(idx, dim, ki.add(coord, f"-{lo}") if lo != "0" else coord, deps, size, self.sizes)
            sub_cond = inside if cond is None else self.tmp(f"{cond} & {inside}")
            picks.append((inside, self.cast(self.value(part, inner, sub_cond), ty)))
            offset = offset + size
        value = picks[-1][1]
        for inside, v in reversed(picks[:-1]):
            value = _Value(self.tmp(f"tl.where({inside}, {v.expr}, {value.expr})"),
                           value.deps | v.deps | deps, ty)
        return value


def view_bases(node: fx.Node) -> set[fx.Node]:
    """The nodes a value is a view of (itself, when it is not a view)."""
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if classify(n) is OpClass.VIEW:
            stack.extend(n.all_input_nodes)
        else:
            out.add(n)
    return out
