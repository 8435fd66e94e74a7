"""The small shared vocabulary of a kernel's values: `CannotEmit` (a group is not expressible
as one kernel), `_Value` (one Triton expression, the index variables it depends on, its
type), and readers of a node's tensor, shape and dims. Imported by kernel_values.py and its
mixins (kernel_views.py, kernel_reductions.py), and imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch import fx

from omnigraph.passes.fusion.kernel_index import Size


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


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d
