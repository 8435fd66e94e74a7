"""One fused group of FX nodes → one Triton kernel and the Python launcher that calls it.

A group is a set of compute nodes (fx_classify's pointwise, reduction and matmul
classes) of a lowered stage graph, chosen by the fuse-ops pass. Its kernel computes
every node at the index the template's loop variables give, reading the group's
inputs once and writing only the values something outside the group reads:

  pointwise  x over the elements of the output
  reduction  r over rows and c over the reduced (trailing) dims; the whole row lives in
             registers, so norms and softmax take one read and one write
  matmul     a tiled mm/addmm/bmm; the nodes after it run on the accumulator tile
             (bias, activation, gating, residual), before anything is stored

View ops (view, permute, slice, expand, cat, split) that feed the group become index
arithmetic inside it (kernel_index.py); they never materialize. The source is rendered
from codegen/templates/*.py.jinja; nothing here imports triton. `CannotEmit` says a
group is not expressible — the fusion pass treats that as illegal and keeps it apart.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import sympy
import torch
from torch import fx
from torch.utils._sympy.printers import PythonPrinter

from omnigraph.passes.fusion import kernel_index as ki
from omnigraph.passes.fusion.kernel_index import Index, Seg, Size
from omnigraph.passes.fusion.kernel_ops import TRITON_DTYPES
from omnigraph.passes.fusion.kernel_values import (
    MAX_UNROLLED, CannotEmit, GroupValues, view_bases, matmul_operands, row_item, shape_of, size_expr, tensor_val)
from omnigraph.passes.fusion.classify import OpClass, classify

aten = torch.ops.aten
TEMPLATES = Path(__file__).parent / "templates"
MAX_ROW = 16384  # widest row a reduction keeps in registers (elements)
__all__ = ["CannotEmit", "Kernel", "MAX_ROW", "MAX_UNROLLED", "TEMPLATES", "emit", "summary"]


@dataclass
class Kernel:
    name: str
    kind: str  # pointwise | reduction | matmul
    source: str  # the @triton.jit function and its launcher `name(...)`
    inputs: list[fx.Node]  # the launcher's tensor arguments, in order
    outputs: list[fx.Node]  # what it returns, in order
    nodes: list[fx.Node]  # the compute nodes it replaces
    summary: str  # the ops it runs, for people
    # Dynamic sizes no input tensor has as a dim, passed after the tensors: (symbol, a
    # graph input that has it as dim `dim`, dim); the caller reads them with sym_size.
    size_inputs: list[tuple[str, fx.Node, int]] = field(default_factory=list)


# -- the templates -----------------------------------------------------------------------
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def emit(name: str, kind: str, nodes: list[fx.Node], render: bool = True) -> Kernel:
    """The kernel for one group; CannotEmit when the group is not expressible as one.
    With render=False only the checks run (the fusion pass probing a merge)."""
    em = GroupValues(name, kind, nodes)
    outputs = em.outputs()
    if not outputs:
        raise CannotEmit("nothing outside the group reads its values")
    if kind == "pointwise":
        context = _pointwise(em, outputs)
    elif kind == "reduction":
        context = _reduction(em, outputs)
    elif kind == "matmul":
        context = _matmul(em, outputs)
    else:
        raise CannotEmit(f"kind {kind}")
    launch, size_inputs = _launcher(em, outputs)
    context.update(launch)
    context.update(name=name, body=em.lines, summary=summary(nodes), max_row=MAX_ROW)
    tensors = [*em.operands, *em.inputs]
    if not render:
        return Kernel(name, kind, "", tensors, outputs, nodes, "", size_inputs)
    source = _ENV.get_template(f"{'matmul_epilogue' if kind == 'matmul' else kind}.py.jinja").render(**context)
    return Kernel(name, kind, source, tensors, outputs, nodes, summary(nodes), size_inputs)


def summary(nodes: list[fx.Node]) -> str:
    return " -> ".join(_op_name(n) for n in nodes)


def _op_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _store(em: GroupValues, out: fx.Node, idx: Index, slot: int) -> None:
    v = em.value(out, idx)
    val = tensor_val(out)
    store_ty = TRITON_DTYPES.get(val.dtype)
    if store_ty is None:
        raise CannotEmit(f"{out.name}: dtype {val.dtype}")
    expr = v.expr if v.ty == store_ty else f"{v.expr}.to({store_ty})"
    mask = em.mask(idx.deps)
    addr = idx.ravel(em.sizes)
    em.lines.append(f"tl.store(out{slot} + ({addr}), {expr}{', ' + mask if mask else ''})")


def _pointwise(em: GroupValues, outputs: list[fx.Node]) -> dict[str, Any]:
    em.masks = {"x": "xmask"}
    numel = ki.prod(shape_of(outputs[0]))
    for slot, out in enumerate(outputs):
        shape = shape_of(out)
        if not ki.same(ki.prod(shape), numel):
            raise CannotEmit("outputs of different sizes")
        _store(em, out, Index.of("x", shape), slot)
    return {"numel": numel}


def _reduction(em: GroupValues, outputs: list[fx.Node]) -> dict[str, Any]:
    em.masks = {"r": "rmask", "c": "cmask"}
    reductions = [n for n in em.order if classify(n) is OpClass.REDUCTION]
    if not reductions:
        raise CannotEmit("a reduction kernel without a reduction")
    for red in reductions:  # computed first, in order: they fix the row length
        if red.target is aten.topk.default:
            em.topk_picks(red)
        elif red.target is not operator.getitem:
            shape = shape_of(red)
            em.value(red, Index.of("r", shape) if shape else Index.of("r", (sympy.Integer(1),)))
    if em.rows is None or em.cols is None:
        raise CannotEmit("the kernel's rows are not known")
    rows, cols = em.rows, em.cols
    if cols.is_Integer and int(cols) > MAX_ROW:
        raise CannotEmit(f"rows of {int(cols)} elements do not fit in registers")
    for slot, out in enumerate(outputs):
        shape = shape_of(out)
        n = ki.prod(shape)
        if ki.same(n, rows * cols):
            home = Index((Seg("r", (rows,), frozenset({"r"})), Seg("c", (cols,), frozenset({"c"}))))
            idx = ki.view(home, shape, em.sizes)
            if idx.ravel(em.sizes) != home.ravel(em.sizes):
                raise CannotEmit(f"{out.name} does not line up with the rows")
        elif ki.same(n, rows):
            idx = Index.of("r", shape) if shape else Index.of("r", (sympy.Integer(1),))
        elif shape and shape[-1].is_Integer and int(shape[-1]) <= MAX_UNROLLED and ki.same(n, rows * shape[-1]):
            for j in range(int(shape[-1])):  # k values per row: one store each
                _store(em, out, row_item(shape, j), slot)
            continue
        else:
            raise CannotEmit(f"{out.name} is neither a row nor a row statistic")
        v = em.value(out, idx)
        if ki.same(n, rows) and "c" in v.deps:
            raise CannotEmit(f"{out.name} varies along the row")
        _store(em, out, idx, slot)
    return {"rows": rows, "cols": cols}


def _matmul(em: GroupValues, outputs: list[fx.Node]) -> dict[str, Any]:
    anchors = [n for n in em.order if classify(n) is OpClass.MATMUL]
    if len(anchors) != 1:
        raise CannotEmit("a matmul kernel takes exactly one matmul")
    anchor = em.anchor = anchors[0]
    a, b = matmul_operands(anchor)
    if view_bases(a) & em.compute or view_bases(b) & em.compute:
        raise CannotEmit("a matmul operand computed in the same kernel")
    em.operands = [a, b]
    shape = shape_of(anchor)
    batched = anchor.target is aten.bmm.default
    k_dim = shape_of(a)[-1]
    em.masks = {"rm": "mask_m", "rn": "mask_n"}
    segs = [Seg("rm", (shape[-2],), frozenset({"rm"})), Seg("rn", (shape[-1],), frozenset({"rn"}))]
    if batched:
        segs.insert(0, Seg("rb", (shape[0],), frozenset({"rb"})))
    em.home = Index(tuple(segs))
    numel = ki.prod(shape)
    for slot, out in enumerate(outputs):
        out_shape = shape_of(out)
        if not ki.same(ki.prod(out_shape), numel):
            raise CannotEmit(f"{out.name} is not the size of the matmul's result")
        idx = ki.view(em.home, out_shape, em.sizes)
        if idx.ravel(em.sizes) != em.home.ravel(em.sizes):
            raise CannotEmit(f"{out.name} does not line up with the matmul's tiles")
        _store(em, out, idx, slot)
    if len(em.compute) == 1:
        raise CannotEmit("a matmul without an epilogue is left to the vendor library")
    return {"m": shape[-2], "n": shape[-1], "k": k_dim, "batch": shape[0] if batched else sympy.Integer(1),
            "batched": batched}


def _launcher(em: GroupValues, outputs: list[fx.Node]) -> tuple[dict[str, Any], list[tuple[str, fx.Node, int]]]:
    """What the launcher needs: its arguments, the symbols it reads off them, the sizes
    it passes to the kernel and the outputs it allocates; and the sizes it must be given."""
    tensors = [*em.operands, *em.inputs]
    names = [f"a{i}" for i in range(len(em.operands))] + [f"in{i}" for i in range(len(em.inputs))]
    if em.operands:
        names[:2] = ["a", "b"]
    printer = PythonPrinter()
    sources: dict[sympy.Symbol, str] = {}
    for name, node in zip(names, tensors):
        for d, s in enumerate(shape_of(node)):
            if isinstance(s, sympy.Symbol) and s not in sources:
                sources[s] = f"{name}.shape[{d}]"
    out_shapes = [shape_of(o) for o in outputs]
    needed: set[sympy.Symbol] = set()
    exprs = list(em.sizes.names) + [s for shape in out_shapes for s in shape]
    if em.rows is not None:
        exprs += [em.rows, em.cols]
    for e in exprs:
        needed |= {s for s in sympy.sympify(e).free_symbols}
    size_inputs = []
    for sym in sorted(needed - set(sources), key=str):  # a dim of some graph input instead
        found = _dim_of_input(em.order[0].graph, sym)
        if found is None:
            raise CannotEmit(f"size {sym} is not a dim of any input")
        size_inputs.append((str(sym), *found))
        sources[sym] = str(sym)
    device = f"{names[0]}.device" if names else "_device"

    def py(e: Size) -> str:
        return printer.doprint(sympy.sympify(e))

    allocs = [f"out{i} = torch.empty(({', '.join(py(s) for s in shape)}{',' if len(shape) == 1 else ''}), "
              f"dtype={tensor_val(o).dtype}, device={device})" for i, (o, shape) in enumerate(zip(outputs, out_shapes))]
    return {
        "args": names + [n for n, _, _ in size_inputs],
        "loaded": [f"in{i}" for i in range(len(em.inputs))],
        "symbols": [(str(s), src) for s, src in sorted(sources.items(), key=lambda kv: str(kv[0]))
                    if s in needed and src != str(s)],
        "size_args": [(n, py(e)) for e, n in em.sizes.names.items()],
        "allocs": allocs,
        "outs": [f"out{i}" for i in range(len(outputs))],
        "py": py,
    }, size_inputs


def _dim_of_input(graph: fx.Graph, sym: sympy.Symbol) -> tuple[fx.Node, int] | None:
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            for d, s in enumerate(val.shape):
                if size_expr(s) == sym:
                    return node, d
    return None
