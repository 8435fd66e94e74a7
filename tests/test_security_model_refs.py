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


def test_a_poisoned_class_table_still_builds_no_payload(payload: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` reads the library's class table from omnigraph's cache; an entry someone wrote
    there to pass the payload off as a model class gets past `check`, but the class is checked
    again where it would be built, so it never runs."""
    from importlib import metadata

    from omnigraph import model_ref
    from omnigraph.runtime import cache

    monkeypatch.setenv("OMNIGRAPH_CACHE", str(tmp_path / "cache"))
    model_ref._class_table.cache_clear()
    model_ref._public_problem.cache_clear()
    store = cache.entry_dir("profiles", f"classes-transformers-{metadata.version('transformers')}")
    cache.write_json(store / "classes.json", {"classes": {"og_marker_boom": "models.llama.modeling_llama"}})
    try:
        assert model_ref.problem("transformers:og_marker_boom") is None  # the table was believed
        with pytest.raises(model_ref.ModelRefError, match="outside transformers.models|cannot reach"):
            model_ref.library_class("transformers", "og_marker_boom")
        spec = tmp_path / "spec.yaml"
        spec.write_text(_yaml("transformers:og_marker_boom", ""))
        for command in COMMANDS:
            main([command[0], str(spec), *command[1:]])
            assert not payload.exists(), command
    finally:
        model_ref._class_table.cache_clear()
        model_ref._public_problem.cache_clear()


def test_checking_a_reference_again_imports_no_library(tmp_path: Path) -> None:
    """The class table is read from the cache and a family's classes from its source file,
    so a second `check` (and `plan`) does not import transformers at all."""
    import json
    import os
    import subprocess

    probe = ("import sys, json; from omnigraph import model_ref as m; "
             "r = [m.problem('transformers:LlamaForCausalLM'), m.problem('transformers:LlamaForCausalLMx'), "
             "m.problem('transformers:qwen2_5_omni.Qwen2_5OmniAudioEncoder'), m.problem('transformers:llama.nope')]; "
             "print(json.dumps([r, 'transformers' in sys.modules]))")
    env = {**os.environ, "OMNIGRAPH_CACHE": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                      check=True).stdout) for _ in range(2)]
    assert runs[0][0] == runs[1][0]
    verdicts = runs[1][0]
    assert verdicts[0] is None and verdicts[2] is None
    assert "did you mean 'LlamaForCausalLM'" in verdicts[1]
    assert "defines no class 'nope'" in verdicts[3]
    assert runs[0][1] is True and runs[1][1] is False  # built once, then read back
