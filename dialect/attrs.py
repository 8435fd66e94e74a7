"""Stage attributes that passes fill in: parallelism, the planner's choice, placement, memory.

    #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 4, replicas = 2>
    #omni.plan<batch = 8, device_type = "h100", devices_per_replica = 2, shared = false, ...>
    #omni.place<["node0:gpu0", "node0:gpu1"]>
    #omni.mem<weights = 270532608, kv = 1073741824, arena = 16777216, buffers = 0, offload = 0>   (bytes)
"""
from __future__ import annotations

from typing import ClassVar

from typing import Any

from xdsl.dialects.builtin import ArrayAttr, FloatData, IntAttr, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException


class _IntFieldsAttr(ParametrizedAttribute):
    """An attribute of named non-negative integers, printed as ``<a = 1, b = 2>``."""

    FIELDS: ClassVar[tuple[str, ...]]
    MINIMUM: ClassVar[int] = 0
    DEFAULTS: ClassVar[dict[str, int]] = {}  # fields IR from before them may leave out

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
        values = {**cls.DEFAULTS, **values}
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
    """One device's share of a stage instance, in bytes: its weight shard, KV-cache pool,
    activation arena, double-buffered inputs, and the weights kept in host memory."""

    name = "omni.mem"
    FIELDS = ("weights", "kv", "arena", "buffers", "offload")
    weights: IntAttr
    kv: IntAttr
    arena: IntAttr
    buffers: IntAttr
    offload: IntAttr

    def __init__(self, weights: int = 0, kv: int = 0, arena: int = 0, buffers: int = 0, offload: int = 0) -> None:
        super().__init__(IntAttr(weights), IntAttr(kv), IntAttr(arena), IntAttr(buffers), IntAttr(offload))


_KINDS: dict[type, str] = {int: "integer", float: "number", str: "string", bool: "true or false"}


@irdl_attr_definition
class PlanAttr(ParametrizedAttribute):
    """What plan-parallel chose for a stage and what it predicts, read by place-devices,
    plan-memory, the plan emitter and the placement report. Rates are requests/s, times
    seconds, sizes bytes per device."""

    name = "omni.plan"
    FIELDS: ClassVar[dict[str, type]] = {
        "batch": int,  # requests a replica runs at once
        "device_type": str,
        "devices_per_replica": int,  # tp x pp x max(1, ep / tp)
        "shared": bool,  # time-sliced in its device type's shared pool
        "visits": float,  # runs per request (routes, loops)
        "rate": float,  # requests/s one replica sustains
        "latency_s": float,
        "first_output_s": float,
        "mem_per_device": int,
        "weights_per_device": int,
        "kv_per_device": int,
        "activations": int,  # the activation arena one batch needs
        "offload": int,  # expert weights kept in host memory
        "forward_tokens": int,  # tokens of its longest forward
        "in_bytes": int,  # the largest hand-off it reads
        "pipeline_rate": float,  # the plan's predicted throughput
        "solver": str,
        "dtype": str,  # the dtype it computes and keeps weights in ("": runs as it is)
        "pool": str,  # a shared stage's pool when its type has several ("": the first)
        # split-prefill-decode's decision for an AR stage under TTFT/TPOT targets, and why
        # ("": not considered); the two halves of a split stage both say it.
        "split": str,
        # A shared stage whose weights stay in host memory and are loaded onto its device when
        # it runs (its pool's stages do not fit there together).
        "swap": bool,
        # How far below the best plan the planning model allows this one may be, as the MILP
        # proved it when its time budget ran out (0: proven best).
        "gap": float,
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {"dtype": "", "pool": "", "split": "", "swap": False, "gap": 0.0}  # fields IR from before them may leave out
    values: ArrayAttr[Attribute]

    def __init__(self, **values: Any) -> None:
        values = {**self.DEFAULTS, **values}
        missing = [f for f in self.FIELDS if f not in values]
        extra = [k for k in values if k not in self.FIELDS]
        if missing or extra:
            raise ValueError(f"omni.plan: missing {missing}, unknown {extra}")
        super().__init__(ArrayAttr([_wrap(self.FIELDS[f], values[f]) for f in self.FIELDS]))

    def get(self, field: str) -> Any:
        kind = self.FIELDS[field]
        data = self.values.data[list(self.FIELDS).index(field)].data
        return bool(data) if kind is bool else data

    def __getattr__(self, item: str) -> Any:  # attr.batch, attr.rate, ...
        if item in type(self).FIELDS:
            return self.get(item)
        raise AttributeError(item)

    def as_dict(self) -> dict[str, Any]:
        return {f: self.get(f) for f in self.FIELDS}

    def verify(self) -> None:
        if len(self.values.data) != len(self.FIELDS):
            raise VerifyException(f"omni.plan: {len(self.values.data)} values for {len(self.FIELDS)} fields")
        for f in ("batch", "devices_per_replica"):
            if self.get(f) < 1:
                raise VerifyException(f"omni.plan: {f} must be >= 1, got {self.get(f)}")

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            shown = [(f, kind) for f, kind in self.FIELDS.items()  # a default prints as before it existed
                     if f not in self.DEFAULTS or self.get(f) != self.DEFAULTS[f]]
            for i, (f, kind) in enumerate(shown):
                value = self.get(f)
                printer.print_string(f"{', ' if i else ''}{f} = ")
                if kind is str:
                    printer.print_string_literal(value)
                elif kind is bool:
                    printer.print_string("true" if value else "false")
                else:
                    printer.print_string(repr(float(value)) if kind is float else str(value))

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        values: dict[str, Any] = {}

        def entry() -> None:
            key = parser.parse_identifier()
            if key not in cls.FIELDS:
                parser.raise_error(f"omni.plan: unknown field '{key}' (fields: {', '.join(cls.FIELDS)})")
            parser.parse_punctuation("=")
            kind = cls.FIELDS[key]
            if kind is bool:
                values[key] = parser.parse_boolean()
            elif kind is str:
                values[key] = parser.parse_str_literal()
            elif kind is float:
                values[key] = float(parser.parse_number())
            else:
                values[key] = parser.parse_integer(allow_boolean=False)

        parser.parse_comma_separated_list(parser.Delimiter.ANGLE, entry)
        values = {**cls.DEFAULTS, **values}
        missing = [f for f in cls.FIELDS if f not in values]
        if missing:
            parser.raise_error(f"omni.plan: missing {', '.join(missing)}")
        return [ArrayAttr([_wrap(cls.FIELDS[f], values[f]) for f in cls.FIELDS])]


def _wrap(kind: type, value: Any) -> Attribute:
    if kind is str:
        return StringAttr(str(value))
    if kind is float:
        return FloatData(float(value))
    return IntAttr(int(value))


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


@irdl_attr_definition
class CoresAttr(ParametrizedAttribute):
    """The CPU cores a stage instance computes on (ids on its node), printed `<[0, 1]>`."""

    name = "omni.cores"
    ids: ArrayAttr[IntAttr]

    def __init__(self, ids: list[int]) -> None:
        super().__init__(ArrayAttr([IntAttr(i) for i in ids]))

    def as_list(self) -> list[int]:
        return [i.data for i in self.ids.data]

    def verify(self) -> None:
        if not self.ids.data or any(i.data < 0 for i in self.ids.data):
            raise VerifyException("omni.cores needs at least one core id, none negative")

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string("[" + ", ".join(str(i) for i in self.as_list()) + "]")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            start = parser.pos
            ids = parser.parse_comma_separated_list(parser.Delimiter.SQUARE,
                                                    lambda: parser.parse_integer(allow_boolean=False))
            if not ids or min(ids) < 0:
                parser.raise_error("omni.cores needs at least one core id, none negative", start, parser.pos)
        return [ArrayAttr([IntAttr(i) for i in ids])]
