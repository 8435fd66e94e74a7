"""A captured program lowered to the ATen ops fusion works on.

torch.export's default decompositions give core ATen, with three changes, all so that
fusion sees arithmetic instead of black boxes and the graph stays device-neutral:
  - layer norm, group norm, softmax, log-softmax and var/var_mean become their
    reductions and pointwise ops (one row statistic each), as Inductor lowers them;
  - scaled_dot_product_attention stays one op: decomposing it on CPU picks a
    CPU-only kernel (_scaled_dot_product_flash_attention_for_cpu), and on a GPU the
    fused flash kernel beats anything built from its pieces.
Low-precision inputs to a norm or softmax are upcast to fp32 inside it, as ATen's own
kernels do.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten
_LOW = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) if x.dtype in _LOW else x


def _layer_norm(x: torch.Tensor, shape: Sequence[int], weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = list(range(x.dim() - len(shape), x.dim()))
    xf = _upcast(x)
    mean = xf.mean(dims, keepdim=True)
    centered = xf - mean
    rstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    out = centered * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(x.dtype), mean, rstd


def _group_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, n: Any, c: Any,
                hw: Any, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = _upcast(x).reshape(n, groups, -1)  # each group's channels and pixels: one trailing row
    mean = xf.mean([2], keepdim=True)
    centered = xf - mean
    rstd = torch.rsqrt((centered * centered).mean([2], keepdim=True) + eps)
    out = (centered * rstd).reshape(x.shape)
    channel = [1, x.shape[1]] + [1] * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(channel)
    if bias is not None:
        out = out + bias.reshape(channel)
    return out.to(x.dtype), mean.reshape(n, groups), rstd.reshape(n, groups)


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    xf = _upcast(x)
    shifted = xf - xf.amax(dim, keepdim=True)
    e = shifted.exp()
    out = e / e.sum(dim, keepdim=True)
    return out if half_to_float else out.to(x.dtype)


def _log_softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    xf = _upcast(x)
    shifted = xf - xf.amax(dim, keepdim=True)
    out = shifted - shifted.exp().sum(dim, keepdim=True).log()
    return out if half_to_float else out.to(x.dtype)


def _dims(x: torch.Tensor, dim: Sequence[int] | int | None) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    return [dim] if isinstance(dim, int) else list(dim)


def _var_mean(x: torch.Tensor, dim: Sequence[int] | int | None = None, *, correction: float | None = None,
              keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    dims = _dims(x, dim)
    mean = x.mean(dims, keepdim=True)
    count = 1
    for d in dims:
        count = count * x.shape[d]
    sq = ((x - mean) * (x - mean)).sum(dims, keepdim=keepdim)
    var = sq / (count - (1 if correction is None else correction))
    return var, mean if keepdim else mean.squeeze(dims)


def _var(x: torch.Tensor, dim: Sequence[int] | int | None = None, *, correction: float | None = None,
         keepdim: bool = False) -> torch.Tensor:
    return _var_mean(x, dim, correction=correction, keepdim=keepdim)[0]


OWN_DECOMPOSITIONS: dict[Any, Callable[..., Any]] = {
    aten.native_layer_norm.default: _layer_norm,
    aten.native_group_norm.default: _group_norm,
    aten._softmax.default: _softmax,
    aten._log_softmax.default: _log_softmax,
    aten.var_mean.correction: _var_mean,
    aten.var.correction: _var,
}
KEPT: tuple[Any, ...] = (aten.scaled_dot_product_attention.default,)


def decomposition_table() -> Any:
    table = torch.export.default_decompositions()
    for op in KEPT:
        if op in table:
            del table[op]
    for op, fn in OWN_DECOMPOSITIONS.items():
        table[op] = fn
    return table


# Runtime checks of dtype and device that export leaves in: the kernels check nothing, and
# as readers of a value they would keep it from being fused away.
ASSERTS: tuple[Any, ...] = (aten._assert_tensor_metadata.default,)


def lower(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` in the ATen ops fusion classifies (see fx_classify), asserts dropped."""
    with contextlib.redirect_stderr(io.StringIO()):  # deprecation chatter from pytree specs
        lowered = program.run_decompositions(decomposition_table())
    graph = lowered.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in ASSERTS and not node.users:
            graph.erase_node(node)
    drop_empty_cat_operands(graph)
    lowered.graph_module.recompile()
    return lowered


def _empty_1d(node: Any, dtype: torch.dtype) -> bool:
    val = getattr(node, "meta", {}).get("val")
    return (isinstance(val, torch.Tensor) and val.dim() == 1 and isinstance(val.shape[0], int)
            and val.shape[0] == 0 and val.dtype == dtype)


def drop_empty_cat_operands(graph: torch.fx.Graph) -> None:
    """`cat` skips 1-D empty operands; drop them from the graph, with what made them.

    A transformers DynamicCache starts each layer as an empty tensor and cats the first
    keys onto it: in a captured decode step that is a copy of every layer's cache and a
    kernel cloning an empty constant, per layer, per step. Without the empty operand, a
    cat of one tensor is that tensor (kept as a copy where it is an input returned as is).
    """
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.cat.default:
            continue
        out = node.meta.get("val")
        tensors = list(node.args[0])
        keep = [t for t in tensors if not (isinstance(out, torch.Tensor) and _empty_1d(t, out.dtype))]
        if not keep or len(keep) == len(tensors):
            continue
        dropped = [t for t in tensors if t not in keep]
        if len(keep) == 1 and not (keep[0].op == "placeholder" and any(u.op == "output" for u in node.users)):
            node.replace_all_uses_with(keep[0])
            graph.erase_node(node)
        else:
            node.args = (keep, *node.args[1:])
        while dropped:  # what only fed the dropped operands: the clones of an empty constant
            orphan = dropped.pop()
            if orphan.op == "call_function" and not orphan.users:
                dropped += orphan.all_input_nodes
                graph.erase_node(orphan)
