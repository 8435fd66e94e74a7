"""Row reductions and top-k inside a reduction kernel: sum, mean, amax and amin over the
template's row (or unrolled over a short static last dim), and a row's top-k picks, one
value and index per pick. `RowReductions` is a mixin of kernel_values.GroupValues.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from omnigraph.passes.fusion import kernel_index as ki
from omnigraph.passes.fusion.kernel_index import Index, Seg, Size
from omnigraph.passes.fusion.kernel_ops import compute_type
from omnigraph.passes.fusion.kernel_types import CannotEmit, _dim, _Value, shape_of, tensor_val

aten = torch.ops.aten
MAX_UNROLLED = 16  # top-k picks (and reductions over them) are unrolled, one value per pick


class RowReductions:
    """A reduction's or top-k pick's value at row r. Mixed into GroupValues, whose `value`,
    `tmp`, `cast`, `sizes`, `kind`, `rows`, `cols`, `reduced` and `topks` it uses."""

    def reduction_value(self, node: fx.Node, idx: Index) -> _Value:
        if self.kind != "reduction":
            raise CannotEmit("a reduction inside a non-reduction kernel")
        if node.target is operator.getitem:  # values or indices of a top-k
            return self.topk_item(node, idx)
        if node.target is aten.topk.default:
            raise CannotEmit("a top-k read as a whole")
        if idx.ravel(self.sizes) != "r":
            raise CannotEmit(f"{node.name} is read at another row than its own")
        if node in self.reduced:
            return self.reduced[node]
        src = node.args[0]
        shape = shape_of(src)
        k = _reduced_from(node, len(shape))
        rows, cols = ki.prod(shape[:k]), ki.prod(shape[k:])
        ty = compute_type(tensor_val(node).dtype)
        if self.rows is None:
            self.rows, self.cols = rows, cols
        elif not ki.same(rows, self.rows):
            raise CannotEmit("reductions over different rows")
        elif not ki.same(cols, self.cols):
            if not (cols.is_Integer and int(cols) <= MAX_UNROLLED and k == len(shape) - 1):
                raise CannotEmit("reductions over rows of different lengths")
            out = self.unrolled_reduction(node, src, shape, int(cols), ty)
            self.reduced[node] = out
            return out
        home = Index((Seg("r", shape[:k], frozenset({"r"})), Seg("c", shape[k:], frozenset({"c"}))))
        v = self.cast(self.value(src, home), ty)
        full = "rmask & cmask"
        op = node.target
        if op in (aten.sum.dim_IntList, aten.mean.dim):
            expr = f"tl.sum(tl.where({full}, {v.expr}, 0), 1)[:, None]"
            if op is aten.mean.dim:
                expr = f"{expr} / {self.sizes(cols)}"
        elif op is aten.amax.default:
            expr = f"tl.max(tl.where({full}, {v.expr}, float(\"-inf\")), 1)[:, None]"
        elif op is aten.amin.default:
            expr = f"tl.min(tl.where({full}, {v.expr}, float(\"inf\")), 1)[:, None]"
        else:
            raise CannotEmit(f"reduction {op}")
        out = _Value(self.tmp(expr), frozenset({"r"}), ty)
        self.reduced[node] = out
        return out

    def unrolled_reduction(self, node: fx.Node, src: fx.Node, shape: tuple[Size, ...], k: int, ty: str) -> _Value:
        """A reduction over a short static last dim (the k picks of a top-k): one term each."""
        terms = [self.cast(self.value(src, row_item(shape, j)), ty).expr for j in range(k)]
        op = node.target
        if op in (aten.sum.dim_IntList, aten.mean.dim):
            expr = "(" + " + ".join(terms) + ")" + (f" / {k}" if op is aten.mean.dim else "")
        elif op in (aten.amax.default, aten.amin.default):
            fn = "tl.maximum" if op is aten.amax.default else "tl.minimum"
            expr = terms[0]
            for t in terms[1:]:
                expr = f"{fn}({expr}, {t})"
        else:
            raise CannotEmit(f"reduction {op}")
        return _Value(self.tmp(expr), frozenset({"r"}), ty)

    def topk_item(self, node: fx.Node, idx: Index) -> _Value:
        """Element j of a row's top-k values (getitem 0) or indices (getitem 1): the kernel
        takes the row's maximum k times, masking each pick out (ties: the lowest index)."""
        topk, which = node.args[0], int(node.args[1])
        last = idx.segs[-1] if idx.segs else None
        if last is None or len(last.dims) != 1 or not ki._is_int(last.flat) or \
                Index(idx.segs[:-1]).ravel(self.sizes) != "r":
            raise CannotEmit("a top-k read at another row, or not one pick at a time")
        picks = self.topk_picks(topk)
        value, index = picks[int(last.flat)]
        return index if which == 1 else value

    def topk_picks(self, topk: fx.Node) -> list[tuple[_Value, _Value]]:
        if topk in self.topks:
            return self.topks[topk]
        src, k = topk.args[0], int(topk.args[1])
        largest = topk.args[3] if len(topk.args) > 3 else topk.kwargs.get("largest", True)
        shape = shape_of(src)
        if _reduced_from(topk, len(shape)) != len(shape) - 1 or k > MAX_UNROLLED:
            raise CannotEmit("top-k over another dim than the last, or of too many")
        rows, cols = ki.prod(shape[:-1]), shape[-1]
        if self.rows is None:
            self.rows, self.cols = rows, cols
        elif not (ki.same(rows, self.rows) and ki.same(cols, self.cols)):
            raise CannotEmit("a top-k over other rows than the kernel's")
        home = Index((Seg("r", shape[:-1], frozenset({"r"})), Seg("c", shape[-1:], frozenset({"c"}))))
        v = self.cast(self.value(src, home), "tl.float32")
        sign = "" if largest else "-"
        cur = self.tmp(f"tl.where(rmask & cmask, {sign}{v.expr}, float(\"-inf\"))")
        picks = []
        for _ in range(k):
            best = self.tmp(f"tl.max({cur}, 1)[:, None]")
            at = self.tmp(f"tl.min(tl.where({cur} == {best}, c, 2147483647), 1)[:, None]")
            cur = self.tmp(f"tl.where(c == {at}, float(\"-inf\"), {cur})")
            value = _Value(self.tmp(f"{sign}{best}") if sign else best, frozenset({"r"}), "tl.float32")
            picks.append((value, _Value(self.tmp(f"{at}.to(tl.int64)"), frozenset({"r"}), "tl.int64")))
        self.topks[topk] = picks
        return picks


def row_item(shape: tuple[Size, ...], j: int) -> Index:
    """Element j of the last dim of this kernel's row r."""
    return Index((Seg("r", shape[:-1], frozenset({"r"})), Seg(str(j), shape[-1:], frozenset())))


def _reduced_from(node: fx.Node, rank: int) -> int:
    """The first reduced dim: reductions must cover a trailing run of dims."""
    if node.target is aten.topk.default:
        dim = node.args[2] if len(node.args) > 2 else -1
        dims = [_dim(dim, rank)]
    else:
        raw = node.args[1] if len(node.args) > 1 else None
        dims = sorted(_dim(d, rank) for d in raw) if raw else list(range(rank))
    if not dims or dims != list(range(dims[0], rank)):
        raise CannotEmit("the reduced dims are not the trailing ones")
    return dims[0]
