"""Index expressions of generated kernels: how an element of one tensor is addressed
from the loop variables of a kernel, through views, permutes, slices and broadcasts.

An index into a tensor of shape D is a list of *segments*: each segment covers some
consecutive dims of D and carries one flat (row-major) coordinate over them, an
expression in the kernel's loop variables. A kernel starts with one segment per loop
variable (a pointwise kernel: `x` over the whole output; a row reduction: `r` over the
outer dims and `c` over the reduced ones). Views keep segments whole when the segment
boundaries survive the reshape, so `r * N + c` stays that rather than a chain of
divisions and remainders; broadcasting a dim turns its coordinate into 0, and
raveling simplifies `r * 1 + 0` back to `r`, which is how a row statistic is found
again at its own row. Sizes are sympy expressions (symbols for dynamic dims), printed
through a namer that turns them into kernel arguments.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy

Size = sympy.Expr
Namer = Callable[[Size], str]  # a size as kernel source: a literal or an argument name


def prod(sizes: Sequence[Size]) -> Size:
    out: Size = sympy.Integer(1)
    for s in sizes:
        out = out * s
    return out


def same(a: Size, b: Size) -> bool:
    """Equal as expressions in the shape symbols (products are canonical in sympy)."""
    return a == b or sympy.expand(a - b) == 0


# -- expressions as text, simplified where it is free to -----------------------------
def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def add(a: str, b: str) -> str:
    if a == "0":
        return b
    if b == "0":
        return a
    if _is_int(a) and _is_int(b):
        return str(int(a) + int(b))
    return f"{a} + {b}"


def mul(a: str, b: str) -> str:
    if a == "0" or b == "0":
        return "0"
    if a == "1":
        return b
    if b == "1":
        return a
    if _is_int(a) and _is_int(b):
        return str(int(a) * int(b))
    return f"({a}) * {b}" if "+" in a or " - " in a else f"{a} * {b}"


def floordiv(a: str, b: str) -> str:
    if b == "1" or a == "0":
        return a
    return f"({a}) // {b}"


def mod(a: str, b: str) -> str:
    if b == "1" or a == "0":
        return "0"
    return f"({a}) % {b}"


@dataclass(frozen=True)
class Seg:
    flat: str  # row-major coordinate over `dims`
    dims: tuple[Size, ...]
    deps: frozenset[str]  # loop variables the coordinate depends on

    def coords(self, name: Namer) -> list[str]:
        """One coordinate per dim: the flat one unraveled (the outermost needs no remainder;
        a size-1 dim's is 0 wherever the flat one is in bounds, and masks cover the rest)."""
        if len(self.dims) == 1:
            return [self.flat]
        out = []
        for j, size in enumerate(self.dims):
            if size == 1:
                out.append("0")
                continue
            inner = name(prod(self.dims[j + 1:]))
            c = floordiv(self.flat, inner)
            out.append(c if j == 0 else mod(c, name(size)))
        return out


@dataclass(frozen=True)
class Index:
    segs: tuple[Seg, ...]

    @property
    def shape(self) -> tuple[Size, ...]:
        return tuple(d for s in self.segs for d in s.dims)

    @property
    def deps(self) -> frozenset[str]:
        return frozenset().union(*(s.deps for s in self.segs)) if self.segs else frozenset()

    @staticmethod
    def of(var: str, shape: Sequence[Size], deps: frozenset[str] | None = None) -> Index:
        return Index((Seg(var, tuple(shape), frozenset({var}) if deps is None else deps),))

    def ravel(self, name: Namer) -> str:
        """The flat row-major offset of this index in its shape."""
        acc = "0"
        for seg in self.segs:
            acc = add(mul(acc, name(prod(seg.dims))), seg.flat) if acc != "0" else seg.flat
        return acc

    def key(self, name: Namer) -> str:
        return f"{self.ravel(name)}|{','.join(str(d) for d in self.shape)}"

    def split(self, name: Namer) -> Index:
        """One segment per dim."""
        segs = []
        for seg in self.segs:
            if len(seg.dims) == 1:
                segs.append(seg)
            else:
                segs.extend(Seg(c, (d,), frozenset() if c == "0" else seg.deps)
                            for c, d in zip(seg.coords(name), seg.dims))
        return Index(tuple(segs))

    def coords(self, name: Namer) -> list[tuple[str, frozenset[str]]]:
        return [(s.flat, s.deps) for s in self.split(name).segs]


def from_coords(coords: Sequence[tuple[str, frozenset[str]]], shape: Sequence[Size]) -> Index:
    return Index(tuple(Seg(c, (d,), deps) for (c, deps), d in zip(coords, shape)))


def _boundaries(sizes: Sequence[Size]) -> list[Size]:
    out, acc = [], sympy.Integer(1)
    for s in sizes:
        acc = acc * s
        out.append(acc)
    return out


def view(idx: Index, shape: Sequence[Size], name: Namer) -> Index:
    """`idx` (over a view's output) as an index into its input of `shape`: the same flat
    element. Segments survive when their boundaries fall between dims of `shape`."""
    shape = tuple(shape)
    if tuple(idx.shape) == shape:
        return idx
    segs = [s for s in idx.segs if not all(d == 1 for d in s.dims) or s.flat != "0"]  # size-1 zeros add nothing
    if not segs:
        return Index((Seg("0", shape, frozenset()),))
    ends = _boundaries([prod(s.dims) for s in segs])
    cuts = _boundaries(shape)
    out, start = [], 0
    for seg, end in zip(segs, ends):
        stop = next((i + 1 for i in range(start, len(shape)) if same(cuts[i], end)), None)
        if stop is None:  # the reshape splits a segment's dims: one flat coordinate over all
            return Index((Seg(idx.ravel(name), shape, idx.deps),))
        out.append(Seg(seg.flat, shape[start:stop], seg.deps))
        start = stop
    if start < len(shape):  # trailing size-1 dims
        out.append(Seg("0", shape[start:], frozenset()))
    return Index(tuple(out))


def broadcast(idx: Index, shape: Sequence[Size], name: Namer) -> Index:
    """`idx` over an op's output, as the index of an operand of `shape` broadcast to it
    (numpy rules: aligned on the right, size-1 dims read at 0)."""
    shape = tuple(shape)
    out_shape = idx.shape
    if out_shape == shape:
        return idx
    lead = len(out_shape) - len(shape)
    if lead < 0:
        raise ValueError("operand has more dims than the result")
    kept = [j >= lead and not (shape[j - lead] == 1 and out_shape[j] != 1) for j in range(len(out_shape))]
    segs, pos = [], 0
    for seg in idx.segs:
        span = range(pos, pos + len(seg.dims))
        pos += len(seg.dims)
        if all(kept[j] for j in span):
            segs.append(seg)
            continue
        if not any(j >= lead for j in span):
            continue  # dims the operand does not have
        for (c, deps), j in zip(Index((seg,)).coords(name), span):
            if j < lead:
                continue
            segs.append(Seg(c, (shape[j - lead],), deps) if kept[j] else Seg("0", (sympy.Integer(1),), frozenset()))
    return Index(tuple(segs))


def permute(idx: Index, perm: Sequence[int], name: Namer) -> Index:
    """`idx` over permute(x, perm), as an index into x."""
    coords = idx.coords(name)
    shape = idx.shape
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return from_coords([coords[inv[d]] for d in range(len(perm))], [shape[inv[d]] for d in range(len(perm))])


def replace_dim(idx: Index, dim: int, coord: str, deps: frozenset[str], size: Size, name: Namer) -> Index:
    """`idx` with the coordinate of `dim` replaced (slices, concatenation)."""
    coords = idx.coords(name)
    shape = list(idx.shape)
    coords[dim] = (coord, deps)
    shape[dim] = size
    return from_coords(coords, shape)


def insert_dim(idx: Index, dim: int, coord: str, size: Size, name: Namer) -> Index:
    """`idx` over select(x, dim, i), as an index into x."""
    coords = idx.coords(name)
    shape = list(idx.shape)
    coords.insert(dim, (coord, frozenset()))
    shape.insert(dim, size)
    return from_coords(coords, shape)
