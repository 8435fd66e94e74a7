"""Values inside a generated kernel: each FX node of a fused group as a Triton expression at
an index, and the loads of the group's inputs. The heart of the kernel emitter
(kernel_emitter.py): it walks from the group's outputs back to its inputs, through view
ops as index arithmetic (kernel_index.py), pointwise ops by the expression table
(kernel_ops.py), row reductions and top-k over the template's row variable, and a matmul's
accumulator tile; every expression once (CSE), as a line `tN = ...`. `CannotEmit` says a
group is not expressible as one kernel.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch import fx

from omnigraph.codegen import kernel_index as ki
from omnigraph.codegen.kernel_index import Index, Seg, Size
from omnigraph.codegen.kernel_ops import COMPARISONS, IDENTITY_OPS, OPS, TRITON_DTYPES, compute_type, literal
from omnigraph.passes.fx_classify import OpClass, classify

aten = torch.ops.aten
MAX_UNROLLED = 16  # top-k picks (and reductions over them) are unrolled, one value per pick

class CannotEmit(Exception):
    """This group cannot be one kernel; the message says why."""


def tensor_val(node: Any) -> torch.Tensor:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        raise CannotEmit(f"{getattr(node, 'name', node)} is not a tensor")
    return val


def shape_of(node: fx.Node) -> tuple[Size, ...]:
    return tuple(size_expr(s) for s in tensor_val(node).shape)


def size_expr(s: Any) -> Size:
    if isinstance(s, torch.SymInt):
        return sympy.sympify(s.node.expr)
    return sympy.Integer(int(s))


@dataclass
class _Value:
    expr: str
    deps: frozenset[str]
    ty: str  # Triton compute type


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


class GroupValues:
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

    # -- reductions ---------------------------------------------------------------------
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


def row_item(shape: tuple[Size, ...], j: int) -> Index:
    """Element j of the last dim of this kernel's row r."""
    return Index((Seg("r", shape[:-1], frozenset({"r"})), Seg(str(j), shape[-1:], frozenset())))


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


def matmul_operands(node: fx.Node) -> tuple[fx.Node, fx.Node]:
    if node.target is aten.addmm.default:
        return node.args[1], node.args[2]
    return node.args[0], node.args[1]


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


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


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
