"""`!omni.tensor<…>` and `!omni.stream<…>`: what flows along an edge.

Printed forms (``?`` marks a dynamic dimension; modality alone = not inferred yet):
    !omni.tensor<text>
    !omni.tensor<embedding, f32, [?, 576]>
    !omni.stream<text, utf8, [?]>        chunks delivered as they are produced
"""
from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import ArrayAttr, IntAttr, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from omnigraph.modality import DTYPES, MODALITIES

DYNAMIC = -1
UNKNOWN_DTYPE = "?"


class _EdgeType(ParametrizedAttribute, TypeAttribute):
    """Shared behaviour of tensor and stream types. Each concrete class declares the
    parameters itself (xDSL compares attributes by the fields of the decorated class):
    modality, dtype ("?" until inferred), shape (-1 = dynamic dim), ranked (0 = no shape yet).
    """

    modality: StringAttr
    dtype: StringAttr
    shape: ArrayAttr[IntAttr]
    ranked: IntAttr

    def __init__(
        self,
        modality: str,
        dtype: str = UNKNOWN_DTYPE,
        shape: Sequence[int | None] | None = None,
    ) -> None:
        dims = [] if shape is None else [DYNAMIC if d is None else d for d in shape]
        super().__init__(
            StringAttr(modality),
            StringAttr(dtype),
            ArrayAttr([IntAttr(d) for d in dims]),
            IntAttr(0 if shape is None else 1),
        )

    # convenience ---------------------------------------------------------------------
    @property
    def mod(self) -> str:
        return self.modality.data

    @property
    def elem(self) -> str | None:
        return None if self.dtype.data == UNKNOWN_DTYPE else self.dtype.data

    @property
    def dims(self) -> tuple[int | None, ...] | None:
        if not self.ranked.data:
            return None
        return tuple(None if d.data == DYNAMIC else d.data for d in self.shape.data)

    @property
    def is_stream(self) -> bool:
        return isinstance(self, StreamType)

    def describe(self) -> str:
        """Short human form for error messages: ``text``, ``embedding f32 [?, 576]``."""
        out = self.mod
        if self.elem:
            out += f" {self.elem}"
        if self.dims is not None:
            out += " [" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return ("stream of " if self.is_stream else "") + out

    def verify(self) -> None:
        if self.mod not in MODALITIES:
            raise VerifyException(f"unknown modality '{self.mod}'")
        if self.dtype.data != UNKNOWN_DTYPE and self.dtype.data not in DTYPES:
            raise VerifyException(f"unknown element type '{self.dtype.data}'")
        if not self.ranked.data and self.shape.data:
            raise VerifyException("an unranked type has no dimensions")
        for d in self.shape.data:
            if d.data != DYNAMIC and d.data <= 0:
                raise VerifyException(f"dimension {d.data} must be positive or dynamic")

    # syntax --------------------------------------------------------------------------
    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string(self.mod)
            if self.elem is None and self.dims is None:
                return
            printer.print_string(f", {self.dtype.data}")
            if self.dims is not None:
                printer.print_string(", [")
                printer.print_string(", ".join("?" if d is None else str(d) for d in self.dims))
                printer.print_string("]")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            modality = parser.parse_identifier("expected a modality")
            if modality not in MODALITIES:
                parser.raise_error(f"unknown modality '{modality}' (modalities: {', '.join(MODALITIES)})")
            dtype = UNKNOWN_DTYPE
            shape: list[int | None] | None = None
            if parser.parse_optional_punctuation(","):
                if parser.parse_optional_punctuation("?"):
                    dtype = UNKNOWN_DTYPE
                else:
                    dtype = parser.parse_identifier("expected an element type or '?'")
                    if dtype not in DTYPES:
                        parser.raise_error(f"unknown element type '{dtype}' (types: {', '.join(DTYPES)})")
                if parser.parse_optional_punctuation(","):
                    shape = parser.parse_comma_separated_list(
                        parser.Delimiter.SQUARE, lambda: _parse_dim(parser)
                    )
        t = cls(modality, dtype, shape)
        return list(t.parameters)


def _parse_dim(parser: AttrParser) -> int | None:
    if parser.parse_optional_punctuation("?"):
        return None
    return parser.parse_integer(allow_boolean=False, allow_negative=False)


@irdl_attr_definition
class TensorType(_EdgeType):
    """A whole value, delivered once."""

    name = "omni.tensor"
    modality: StringAttr
    dtype: StringAttr
    shape: ArrayAttr[IntAttr]
    ranked: IntAttr


@irdl_attr_definition
class StreamType(_EdgeType):
    """A value delivered in chunks as the producer makes them (bounded, backpressured)."""

    name = "omni.stream"
    modality: StringAttr
    dtype: StringAttr
    shape: ArrayAttr[IntAttr]
    ranked: IntAttr




KV_MODALITY = "kv"  # internal: only the planner makes KV edges (split-prefill-decode)


@irdl_attr_definition
class KvType(_EdgeType):
    """An LLM's KV cache handed from its prefill instances to its decode instances:
    `!omni.kv<bf16, layers 30, heads 3, dim 64, block 16>`, keys and values of every layer
    for each prompt position, in the pool's blocks of `block` tokens. Its size per token is
    what the hand-over costs on the link between them."""

    name = "omni.kv"
    modality: StringAttr
    dtype: StringAttr
    shape: ArrayAttr[IntAttr]
    ranked: IntAttr
    block: IntAttr

    def __init__(self, dtype: str, layers: int, heads: int, dim: int, block: int = 16) -> None:  # noqa: D107
        ParametrizedAttribute.__init__(self, StringAttr(KV_MODALITY), StringAttr(dtype),
                                       ArrayAttr([IntAttr(layers), IntAttr(heads), IntAttr(dim)]), IntAttr(1),
                                       IntAttr(block))

    @property
    def layout(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim)."""
        layers, heads, dim = (d.data for d in self.shape.data)
        return layers, heads, dim

    @property
    def bytes_per_token(self) -> int:
        layers, heads, dim = self.layout
        return 2 * layers * heads * dim * _ITEM_BYTES[self.dtype.data]

    def describe(self) -> str:
        layers, heads, dim = self.layout
        return f"KV cache {self.dtype.data} ({layers} layers x {heads} heads x {dim})"

    def verify(self) -> None:
        if self.mod != KV_MODALITY:
            raise VerifyException(f"a KV edge's modality is '{KV_MODALITY}', not '{self.mod}'")
        if self.dtype.data not in _ITEM_BYTES:
            raise VerifyException(f"a KV cache is {', '.join(_ITEM_BYTES)}, not '{self.dtype.data}'")
        if len(self.shape.data) != 3 or any(d.data <= 0 for d in self.shape.data) or self.block.data <= 0:
            raise VerifyException("a KV edge has positive layers, heads, dim and block")

    def print_parameters(self, printer: Printer) -> None:
        layers, heads, dim = self.layout
        printer.print_string(f"<{self.dtype.data}, layers {layers}, heads {heads}, dim {dim}, block {self.block.data}>")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            dtype = parser.parse_identifier("expected the KV's element type")
            sizes = {}
            for key in ("layers", "heads", "dim", "block"):
                parser.parse_punctuation(",")
                parser.parse_keyword(key)
                sizes[key] = parser.parse_integer(allow_boolean=False, allow_negative=False)
        return list(cls(dtype, sizes["layers"], sizes["heads"], sizes["dim"], sizes["block"]).parameters)


_ITEM_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "fp8": 1}
