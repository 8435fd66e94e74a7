"""Stage attributes that passes fill in: parallelism, placement, memory.

    #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 4, replicas = 2>
    #omni.place<["node0:gpu0", "node0:gpu1"]>
    #omni.mem<weights = 270532608, kv = 1073741824, arena = 16777216, offload = 0>   (bytes)
"""
from __future__ import annotations

from typing import ClassVar

from xdsl.dialects.builtin import ArrayAttr, IntAttr, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException


class _IntFieldsAttr(ParametrizedAttribute):
    """An attribute of named non-negative integers, printed as ``<a = 1, b = 2>``."""

    FIELDS: ClassVar[tuple[str, ...]]
    MINIMUM: ClassVar[int] = 0

    def get(self, name: str) -> int:
        return getattr(self, name).data

    def as_dict(self) -> dict[str, int]:
        return {f: self.get(f) for f in self.FIELDS}

    def verify(self) -> None:
        for f in self.FIELDS:
            if self.get(f) < self.MINIMUM:
                raise VerifyException(f"{self.name}: {f} must be >= {self.MINIMUM}, got {self.get(f)}")

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string(", ".join(f"{f} = {self.get(f)}" for f in self.FIELDS))

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        values: dict[str, int] = {}

        def entry() -> None:
            key = parser.parse_identifier()
            if key not in cls.FIELDS:
                parser.raise_error(f"{cls.name}: unknown field '{key}' (fields: {', '.join(cls.FIELDS)})")
            parser.parse_punctuation("=")
            start = parser.pos
            values[key] = parser.parse_integer(allow_boolean=False)
            if values[key] < cls.MINIMUM:  # here, with a location, rather than in verify()
                parser.raise_error(f"{cls.name}: {key} must be >= {cls.MINIMUM}, got {values[key]}",
                                   start, parser.pos)

        parser.parse_comma_separated_list(parser.Delimiter.ANGLE, entry)
        missing = [f for f in cls.FIELDS if f not in values]
        if missing:
            parser.raise_error(f"{cls.name}: missing {', '.join(missing)}")
        return [IntAttr(values[f]) for f in cls.FIELDS]


@irdl_attr_definition
class ParallelAttr(_IntFieldsAttr):
    name = "omni.parallel"
    FIELDS = ("tp", "pp", "dp", "ep", "replicas")
    MINIMUM = 1
    tp: IntAttr
    pp: IntAttr
    dp: IntAttr
    ep: IntAttr
    replicas: IntAttr

    def __init__(self, tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1, replicas: int = 1) -> None:
        super().__init__(IntAttr(tp), IntAttr(pp), IntAttr(dp), IntAttr(ep), IntAttr(replicas))


@irdl_attr_definition
class MemAttr(_IntFieldsAttr):
    name = "omni.mem"
    FIELDS = ("weights", "kv", "arena", "offload")
    weights: IntAttr
    kv: IntAttr
    arena: IntAttr
    offload: IntAttr

    def __init__(self, weights: int = 0, kv: int = 0, arena: int = 0, offload: int = 0) -> None:
        super().__init__(IntAttr(weights), IntAttr(kv), IntAttr(arena), IntAttr(offload))


@irdl_attr_definition
class PlaceAttr(ParametrizedAttribute):
    """The devices one stage instance runs on, in rank order."""

    name = "omni.place"
    devices: ArrayAttr[StringAttr]

    def __init__(self, devices: list[str]) -> None:
        super().__init__(ArrayAttr([StringAttr(d) for d in devices]))

    def verify(self) -> None:
        if not self.devices.data:
            raise VerifyException("omni.place needs at least one device")

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string("[" + ", ".join(f'"{d.data}"' for d in self.devices.data) + "]")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            start = parser.pos
            names = parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_str_literal)
            if not names:
                parser.raise_error("omni.place needs at least one device", start, parser.pos)
        return [ArrayAttr([StringAttr(n) for n in names])]
