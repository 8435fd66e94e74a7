"""No spec, in any notation, makes check/compile/plan/simulate/viz run code it names.

A marker module stands for code an attacker wants run: importing it, calling its function
or constructing its class writes a marker file. It is made reachable the ways a spec could
try to reach code — through an attribute chain from a module transformers imports, as a
model family's attribute, as a `py:` reference, as a weights file's `arch` — and every
command is run on every such spec (YAML, DSL and IR text). The marker must never appear;
the references that are not model classes must be refused with a located error.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from omnigraph.cli import main

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MARKER_MODULE = "og_marker_payload"

# (name, model reference, params) — each names the payload some way.
REFERENCES = [
    ("chain_through_modeling", f"transformers:models.llama.modeling_llama.{MARKER_MODULE}.Boom", ""),
    ("chain_to_function", f"transformers:models.llama.modeling_llama.{MARKER_MODULE}.boom", ""),
    ("family_attribute", f"transformers:llama.{MARKER_MODULE}", ""),
    ("top_level_attribute", "transformers:og_marker_boom", ""),
    ("py_reference", f"py:{MARKER_MODULE}:Boom", ""),
    ("weights_arch_chain", "safetensors:/nonexistent/w.safetensors",
     f'arch: "transformers:models.llama.modeling_llama.{MARKER_MODULE}.Boom"'),
    ("weights_arch_py", "safetensors:/nonexistent/w.safetensors", f'arch: "py:{MARKER_MODULE}:Boom"'),
]
REFUSED = {"chain_through_modeling", "chain_to_function", "family_attribute", "top_level_attribute",
           "weights_arch_chain"}


@pytest.fixture()
def payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The marker module, importable and already reachable from inside transformers."""
    marker = tmp_path / "MARKER"
    source = f'''
import pathlib
import torch
MARKER = pathlib.Path({str(marker)!r})

def boom(*args, **kwargs):
    MARKER.write_text("function called")

class Boom(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        MARKER.write_text("class constructed")
        super().__init__()
'''
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / f"{MARKER_MODULE}.py").write_text(source + f"\nMARKER.write_text('imported')\n")
    module = types.ModuleType(MARKER_MODULE)
    exec(compile(source, MARKER_MODULE, "exec"), module.__dict__)  # reachable, but importing it would mark
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama, MARKER_MODULE, module, raising=False)
    monkeypatch.setattr(transformers, "og_marker_boom", module.Boom, raising=False)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, MARKER_MODULE, raising=False)
    return marker


def _yaml(ref: str, params: str) -> str:
    kind, port, out = ("projector", "embeds", "embedding") if ref.startswith("safetensors") else \
        ("encoder", "embeds", "embedding")
    extra = f"\n    params: {{{params}}}" if params else ""
    return (f"pipeline: p\ninputs:\n  x: {'embedding' if kind == 'projector' else 'image'}\noutputs:\n"
            f"  y: {{from: s.{port}, modality: {out}}}\nstages:\n  s:\n    kind: {kind}\n"
            f"    model: \"{ref}\"\n    inputs: [x]{extra}\n")


def _dsl(ref: str, params: str) -> str:
    kind, in_type = ("projector", "embedding") if ref.startswith("safetensors") else ("encoder", "image")
    body = f'model: "{ref}"' + (f", {params}" if params else "")
    return f"pipeline p(x: {in_type}) -> (y: embedding) {{\n  s = {kind}(x) {{ {body} }}\n  return y = s.embeds\n}}\n"


def _ir(ref: str, params: str) -> str:
    kind, in_type = ("projector", "embedding") if ref.startswith("safetensors") else ("encoder", "image")
    attrs = f'model = "{ref}"'
    if params:
        key, _, value = params.partition(": ")
        attrs += f", params = {{{key} = {value}}}"
    return (f'builtin.module {{\n  omni.pipeline @p {{\n    %x = omni.input "x" : !omni.tensor<{in_type}>\n'
            f'    %s = omni.stage @s "{kind}" (x = %x : !omni.tensor<{in_type}>) -> '
            f'(embeds : !omni.tensor<embedding>) attributes {{{attrs}}}\n'
            f'    omni.output "y" %s : !omni.tensor<embedding>\n  }}\n}}\n')


COMMANDS = [
    ["check"],
    ["compile"],
    ["compile", "--emit", "plan"],
    ["compile", "--target", "h100x1"],
    ["compile", "--emit", "plan", "--target", "h100x1"],
    ["plan", "--target", "h100x1"],
    ["plan", "--target", "h100x1", "--json"],
    ["simulate", "--target", "h100x1", "-n", "5", "--burst"],
    ["viz"],
]


@pytest.mark.parametrize("name,ref,params", REFERENCES, ids=[r[0] for r in REFERENCES])
@pytest.mark.parametrize("fmt", ["yaml", "og", "mlir"])
def test_no_command_runs_code_a_spec_names(payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           name: str, ref: str, params: str, fmt: str) -> None:
    write = {"yaml": _yaml, "og": _dsl, "mlir": _ir}[fmt]
    spec = tmp_path / f"spec.{fmt}"
    spec.write_text(write(ref, params))
    for command in COMMANDS:
        if fmt == "mlir" and command[0] in ("simulate",):
            continue  # simulate takes a spec or a plan, not IR
        code = main([command[0], str(spec), *command[1:]])
        out, err = capsys.readouterr()
        assert not payload.exists(), f"{command}: {payload.read_text()}"
        assert "Traceback" not in err and "internal error" not in err, err
        if name in REFUSED:
            assert code == 2, (command, out, err)
            assert f"{spec}:" in err and "error:" in err, err  # located
    assert MARKER_MODULE not in sys.modules


def test_run_is_where_py_code_runs(payload: Path, tmp_path: Path) -> None:
    """The one place a spec's own code runs is `run` (the user asked for it): the marker is
    the proof that the payload above is live, so the tests above would catch a leak."""
    from omnigraph.runtime.loaders import import_attr

    import_attr(f"{MARKER_MODULE}:boom")()
    assert payload.exists()
