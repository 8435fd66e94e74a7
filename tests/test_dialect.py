"""The omni dialect: printing, parsing back, verifiers, and the types' own syntax."""
from __future__ import annotations

from pathlib import Path

import pytest
from xdsl.utils.exceptions import ParseError, VerifyException

from omnigraph.compiler import compile_path
from omnigraph.dialect.attrs import MemAttr, ParallelAttr, PlaceAttr
from omnigraph.dialect.textio import parse_module, print_module
from omnigraph.dialect.types import StreamType, TensorType

from conftest import example_specs

SPECS = example_specs()


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_printed_ir_parses_back_to_an_equal_module(path: Path, generic: bool) -> None:
    module = compile_path(path).module
    text = print_module(module, generic=generic)
    again = parse_module(text)
    again.verify()
    assert again.is_structurally_equivalent(module)
    assert print_module(again, generic=generic) == text


@pytest.mark.parametrize("path", [p for p in SPECS if p.suffix == ".yaml"], ids=lambda p: p.stem)
def test_yaml_and_dsl_give_identical_ir(path: Path) -> None:
    dsl = path.with_suffix(".og")
    assert print_module(compile_path(path).module) == print_module(compile_path(dsl).module)


def test_examples_exist() -> None:
    assert len(SPECS) >= 12, "six example pipelines, each in YAML and DSL"


@pytest.mark.parametrize(
    "text",
    [
        "!omni.tensor<text>",
        "!omni.tensor<image, u8, [3, ?, ?]>",
        "!omni.stream<text, utf8, [?]>",
        "!omni.tensor<embedding, ?, [?, 576]>",
        "!omni.tensor<scalar, f32, []>",
    ],
)
def test_edge_types_round_trip(text: str) -> None:
    module = parse_module(f'builtin.module {{ omni.pipeline @p {{ %x = omni.input "x" : {text}\n'
                          f'omni.output "y" %x : {text} }} }}')
    printed = print_module(module)
    assert text in printed


def test_type_accessors() -> None:
    t = TensorType("embedding", "bf16", [None, 576])
    assert (t.mod, t.elem, t.dims, t.is_stream) == ("embedding", "bf16", (None, 576), False)
    s = StreamType("text")
    assert (s.elem, s.dims, s.is_stream) == (None, None, True)
    assert s.describe() == "stream of text"
    assert TensorType("text") != StreamType("text")


def test_attrs_print_and_compare() -> None:
    assert str(ParallelAttr(tp=2, ep=4)) == "#omni.parallel<tp = 2, pp = 1, dp = 1, ep = 4, replicas = 1>"
    assert ParallelAttr(tp=2) == ParallelAttr(tp=2) != ParallelAttr(tp=4)
    assert str(PlaceAttr(["n0:g0", "n0:g1"])) == '#omni.place<["n0:g0", "n0:g1"]>'
    assert MemAttr(weights=10).as_dict() == {"weights": 10, "kv": 0, "arena": 0, "buffers": 0, "offload": 0}


@pytest.mark.parametrize(
    "body, message",
    [
        ('%x = omni.input "x" : !omni.tensor<text>', "no outputs"),
        ('%x = omni.input "x" : !omni.tensor<text>\n%y = omni.input "x" : !omni.tensor<text>\n'
         'omni.output "y" %x : !omni.tensor<text>', "duplicate name 'x'"),
    ],
)
def test_verifier_rejects(body: str, message: str) -> None:
    module = parse_module(f"builtin.module {{ omni.pipeline @p {{ {body} }} }}")
    with pytest.raises(VerifyException, match=message):
        module.verify()


@pytest.mark.parametrize(
    "text, message",
    [
        ('%x = omni.input "x" {p = #omni.parallel<xp = 1>} : !omni.tensor<text>', "unknown field 'xp'"),
        ('%x = omni.input "x" : !omni.tensor<smell>', "unknown modality 'smell'"),
        ('%x = omni.input "x" : !omni.tensor<text, utf9>', "unknown element type 'utf9'"),
    ],
)
def test_parser_names_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_module(f"builtin.module {{ omni.pipeline @p {{ {text} }} }}")
