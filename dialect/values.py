"""Python values ⇄ builtin attributes, for stage parameters."""
from __future__ import annotations

import functools
from typing import Any

from xdsl.dialects.builtin import (
    ArrayAttr, BoolAttr, DictionaryAttr, FloatAttr, IntegerAttr, IntegerType, StringAttr, UnitAttr,
    f64, i64,
)
from xdsl.ir import Attribute


@functools.lru_cache(maxsize=4096)
def _scalar_attr(kind: type, value: Any) -> Attribute:
    """Scalar attributes are immutable values: building (and verifying) each once is enough
    (an i64 attribute's verification dominates lowering a large spec)."""
    if kind is bool:
        return BoolAttr.from_bool(value)
    if kind is int:
        return IntegerAttr(value, i64)
    return StringAttr(value)


def to_attr(value: Any) -> Attribute:
    if isinstance(value, float):  # not cached: -0.0 == 0.0 would share one attribute
        return FloatAttr(value, f64)
    if isinstance(value, (bool, int, str)):
        return _scalar_attr(next(t for t in (bool, int, str) if isinstance(value, t)), value)
    if value is None:
        return UnitAttr()
    if isinstance(value, (list, tuple)):
        return ArrayAttr([to_attr(v) for v in value])
    if isinstance(value, dict):
        return DictionaryAttr({str(k): to_attr(v) for k, v in value.items()})
    raise TypeError(f"cannot put a {type(value).__name__} into the IR")


def from_attr(attr: Attribute) -> Any:
    if isinstance(attr, IntegerAttr):
        width = attr.type.width.data if isinstance(attr.type, IntegerType) else 64
        return bool(attr.value.data) if width == 1 else attr.value.data
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, UnitAttr):
        return None
    if isinstance(attr, ArrayAttr):
        return [from_attr(a) for a in attr.data]
    if isinstance(attr, DictionaryAttr):
        return {k: from_attr(v) for k, v in attr.data.items()}
    return attr
