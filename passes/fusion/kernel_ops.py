"""Triton expressions for ATen pointwise ops: a table keyed by op.

Each entry renders the op from its operands' expressions (already cast to the compute
type) and its scalar arguments. Floating-point math is done in fp32 whatever the
tensors' dtype (bf16 and fp16 inputs are upcast as they are loaded), integer math in
the result's integer type, comparisons give int1.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten
Render = Callable[[list[str], dict[str, Any]], str]  # operand expressions, keyword args -> expression

def literal(value: Any) -> str:
    """A Python scalar as Triton source."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        if math.isnan(value):
            return 'float("nan")'
        return repr(value)
    raise TypeError(f"no Triton literal for {type(value).__name__}")


def _binary(op: str) -> Render:
    return lambda a, kw: f"({a[0]} {op} {a[1]})"


def _call(fn: str) -> Render:
    return lambda a, kw: f"{fn}({', '.join(a)})"


def _add(a: list[str], kw: dict[str, Any]) -> str:
    alpha = kw.get("alpha", 1)
    return f"({a[0]} + {a[1]})" if alpha == 1 else f"({a[0]} + {literal(alpha)} * {a[1]})"


def _sub(a: list[str], kw: dict[str, Any]) -> str:
    alpha = kw.get("alpha", 1)
    return f"({a[0]} - {a[1]})" if alpha == 1 else f"({a[0]} - {literal(alpha)} * {a[1]})"


def _rsub(a: list[str], kw: dict[str, Any]) -> str:
    alpha = kw.get("alpha", 1)
    return f"({a[1]} - {a[0]})" if alpha == 1 else f"({a[1]} - {literal(alpha)} * {a[0]})"


# No libdevice: its functions exist only once a GPU backend resolves them, and the
# interpreter that checks kernels on a CPU cannot run them. These forms are exact in fp32
# to within a few ulp.
def _tanh(x: str) -> str:
    return f"(2.0 * tl.sigmoid(2.0 * {x}) - 1.0)"


def _div_mode(a: list[str], kw: dict[str, Any]) -> str:
    mode = kw.get("rounding_mode")
    q = f"({a[0]} / {a[1]})"
    if mode == "trunc":
        return f"tl.where({q} >= 0, tl.floor({q}), tl.ceil({q}))"
    if mode == "floor":
        return f"tl.floor({q})"
    return q


def _pow(a: list[str], kw: dict[str, Any]) -> str:
    x, exp = a
    try:
        e = float(exp)
    except ValueError:
        return f"tl.exp({exp} * tl.log({x}))"
    if e == int(e) and 0 <= e <= 4:
        return "1.0" if e == 0 else "(" + " * ".join([x] * int(e)) + ")"
    if e == 0.5:
        return f"tl.sqrt({x})"
    if e == -0.5:
        return f"tl.rsqrt({x})"
    if e == int(e) and -4 <= e < 0:
        return "(1.0 / (" + " * ".join([x] * int(-e)) + "))"
    return f"tl.exp({exp} * tl.log({x}))"  # NaN for a negative base, as torch gives


def _gelu(a: list[str], kw: dict[str, Any]) -> str:
    x = a[0]
    if kw.get("approximate", "none") == "tanh":
        return f"(0.5 * {x} * (1.0 + {_tanh(f'0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})')}))"
    return f"(0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476)))"


def _clamp(a: list[str], kw: dict[str, Any]) -> str:
    x = a[0]
    lo = a[1] if len(a) > 1 and a[1] != "None" else None
    hi = a[2] if len(a) > 2 and a[2] != "None" else None
    if lo is not None:
        x = f"tl.maximum({x}, {lo})"
    if hi is not None:
        x = f"tl.minimum({x}, {hi})"
    return x


OPS: dict[Any, Render] = {
    aten.add.Tensor: _add, aten.add.Scalar: _add,
    aten.sub.Tensor: _sub, aten.sub.Scalar: _sub, aten.rsub.Scalar: _rsub,
    aten.mul.Tensor: _binary("*"), aten.mul.Scalar: _binary("*"),
    aten.div.Tensor: _binary("/"), aten.div.Scalar: _binary("/"), aten.div.Tensor_mode: _div_mode,
    aten.neg.default: lambda a, kw: f"(-{a[0]})",
    aten.exp.default: _call("tl.exp"), aten.exp2.default: _call("tl.exp2"),
    aten.expm1.default: lambda a, kw: f"(tl.exp({a[0]}) - 1.0)",
    aten.log.default: _call("tl.log"), aten.log1p.default: lambda a, kw: f"tl.log(1.0 + {a[0]})",
    aten.sqrt.default: _call("tl.sqrt"), aten.rsqrt.default: _call("tl.rsqrt"),
    aten.reciprocal.default: lambda a, kw: f"(1.0 / {a[0]})",
    aten.sigmoid.default: _call("tl.sigmoid"), aten.tanh.default: lambda a, kw: _tanh(a[0]),
    aten.erf.default: _call("tl.erf"), aten.sin.default: _call("tl.sin"), aten.cos.default: _call("tl.cos"),
    aten.abs.default: _call("tl.abs"),
    aten.relu.default: lambda a, kw: f"tl.maximum({a[0]}, 0.0)",
    aten.silu.default: lambda a, kw: f"({a[0]} * tl.sigmoid({a[0]}))",
    aten.gelu.default: _gelu,
    aten.pow.Tensor_Scalar: _pow,
    aten.maximum.default: _call("tl.maximum"), aten.minimum.default: _call("tl.minimum"),
    aten.clamp.default: _clamp, aten.clamp_min.default: lambda a, kw: f"tl.maximum({a[0]}, {a[1]})",
    aten.clamp_max.default: lambda a, kw: f"tl.minimum({a[0]}, {a[1]})",
    aten.where.self: lambda a, kw: f"tl.where({a[0]}, {a[1]}, {a[2]})",
    aten.eq.Tensor: _binary("=="), aten.eq.Scalar: _binary("=="),
    aten.ne.Tensor: _binary("!="), aten.ne.Scalar: _binary("!="),
    aten.lt.Tensor: _binary("<"), aten.lt.Scalar: _binary("<"),
    aten.le.Tensor: _binary("<="), aten.le.Scalar: _binary("<="),
    aten.gt.Tensor: _binary(">"), aten.gt.Scalar: _binary(">"),
    aten.ge.Tensor: _binary(">="), aten.ge.Scalar: _binary(">="),
    aten.logical_not.default: lambda a, kw: f"({a[0]} == 0)",
    aten.logical_and.default: lambda a, kw: f"(({a[0]} != 0) & ({a[1]} != 0))",
    aten.logical_or.default: lambda a, kw: f"(({a[0]} != 0) | ({a[1]} != 0))",
    aten.bitwise_not.default: lambda a, kw: f"(~{a[0]})",
    aten.bitwise_and.Tensor: _binary("&"), aten.bitwise_or.Tensor: _binary("|"),
    aten.sign.default: lambda a, kw: f"(({a[0]} > 0).to(tl.float32) - ({a[0]} < 0).to(tl.float32))",
}
# Ops whose value is their first operand's (a dtype change is applied by the caller).
IDENTITY_OPS: tuple[Any, ...] = (aten._to_copy.default, aten.clone.default, aten.alias.default,
                                 aten.lift_fresh_copy.default)
# Ops whose operands are compared or selected, not computed with: they keep operand types.
COMPARISONS: tuple[Any, ...] = (
    aten.eq.Tensor, aten.eq.Scalar, aten.ne.Tensor, aten.ne.Scalar, aten.lt.Tensor, aten.lt.Scalar,
    aten.le.Tensor, aten.le.Scalar, aten.gt.Tensor, aten.gt.Scalar, aten.ge.Tensor, aten.ge.Scalar,
)

TRITON_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
    torch.int64: "tl.int64", torch.int32: "tl.int32", torch.int16: "tl.int16", torch.int8: "tl.int8",
    torch.uint8: "tl.uint8", torch.bool: "tl.int1",
}


def compute_type(dtype: torch.dtype) -> str:
    """The Triton type a value of `dtype` is computed in: fp32 for every float type."""
    return "tl.float32" if dtype.is_floating_point else TRITON_DTYPES[dtype]
