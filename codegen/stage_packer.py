"""Each stage of a plan as the files of a bundle, and the StageProgram that loads them.

A table keyed by kind picks the form (see omnigraph.runtime.plan.StageProgram):
  encoder, projector, decoder, diffusion, moe   a torch.export .pt2 when the module
      exports and the program matches it bit for bit; else weights (safetensors) + class
  ar_llm   GGUF kept as it is; a transformers model as weights + class (its decode loop
      with a growing KV cache is driven step by step by the executor, not traced)
  tts      the ONNX voice and its JSON config, kept as they are
  vocoder  ONNX kept as it is; a torch module as weights; a plain function as code
  custom   code: its Python source (when it lives beside the spec) ships in code/
Torch stages are loaded exactly as the runtime loads them (runtime/entry_points.load_stage),
so the weights written are the ones a direct run computes with.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omnigraph.errors import OmnigraphError
from omnigraph.kinds import KINDS, ArLlmParams
from omnigraph.runtime.bundle import trusted_class_ref
from omnigraph.runtime.bundle_manifest import CODE_DIR, check_relpath
from omnigraph.model_ref import location_of
from omnigraph.runtime.checkpoint import open_checkpoint
from omnigraph.runtime.entry_points import Loaded as Executor, load_stage
from omnigraph.runtime.loaders import ModelNotFound, folder_tokenizer, import_attr, resolve_file, split_ref, voice_files
from omnigraph.runtime.plan import RuntimePlan, StageNode, StageProgram

from omnigraph.codegen.chat_frame import chat_frame
from omnigraph.codegen.stage_export import ExportFailed, export_stage

_LLM_WHY = ("autoregressive decoding: the executor drives the model one step at a time with a KV cache "
            "that grows and is re-batched as requests come and go; a traced program would fix one step's "
            "shapes. The class is rebuilt from params.config and the weights are loaded strictly")
_CODE_WHY = "Python code: it runs only when the bundle is trusted (--trust-code)"


@dataclass
class Packed:
    program: StageProgram
    signature: list[str] = field(default_factory=list)  # a .pt2 program's inputs
    requires: set[str] = field(default_factory=set)  # pip packages its executor needs


class StagePacker:
    """Writes stages' files under `root` (a bundle being built) and says how to load them."""

    def __init__(self, root: Path, plan: RuntimePlan) -> None:
        self.root = root
        self.plan = plan
        self.stages = {s.name: s for s in plan.stages()}
        self.code: set[str] = set()  # bundle paths of Python source files copied in
        for path in plan.module_paths:  # `py:` modules beside the spec, found as LocalBackend finds them
            if path not in sys.path:
                sys.path.append(path)

    def pack(self, node: StageNode) -> Packed:
        packer = PACKERS.get(node.kind)
        if location_of(node.model or "")[1] is not None:  # a checkpoint folder ships as it is
            packer = _checkpoint
        if packer is None:
            raise OmnigraphError(f"{node.kind} stages cannot be bundled yet", where=f"stage '{node.name}'")
        try:
            return packer(self, node)
        except (ModelNotFound, ValueError, OSError) as exc:  # a missing package or file, a bad config
            raise OmnigraphError(f"cannot bundle model '{node.model}': {exc}", where=f"stage '{node.name}'") from None

    # -- files ---------------------------------------------------------------------------
    def copy(self, source: Path, rel: str) -> str:
        """Copy a regular file into the bundle (its bytes: never a link)."""
        check_relpath(rel, where=f"bundle path for {source.name}")
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target, follow_symlinks=True)
        return rel

    def save_weights(self, executor: Executor, node: StageNode) -> str:
        from safetensors.torch import save_model

        rel = f"weights/{node.name}.safetensors"
        (self.root / "weights").mkdir(exist_ok=True)
        save_model(executor.model, str(self.root / rel))  # tied tensors are stored once
        return rel

    def ship_code(self, ref: str) -> list[str]:
        """The bundle paths of a `py:` target's module when it lives beside the spec (an
        installed module is a reference: it ships nothing)."""
        source = _user_module(ref, self.plan.module_paths)
        if source is None:
            return []
        base, files = source
        shipped = []
        for path in files:
            rel = f"{CODE_DIR}/{path.relative_to(base).as_posix()}"
            if rel not in self.code:
                self.copy(path, rel)
                self.code.add(rel)
            shipped.append(rel)
        return shipped

    def load(self, node: StageNode) -> Executor:
        try:
            executor = load_stage(node)
        except Exception as exc:
            raise OmnigraphError(f"cannot load model '{node.model}' to bundle it: {exc}",
                                 where=f"stage '{node.name}'") from None
        return executor


# per kind -------------------------------------------------------------------------------
def _torch_stage(packer: StagePacker, node: StageNode) -> Packed:
    executor = packer.load(node)
    try:
        exported = export_stage(executor, packer.stages)
    except ExportFailed as exc:
        return _weights(packer, node, executor, str(exc))
    import torch

    rel = f"programs/{node.name}.pt2"
    (packer.root / "programs").mkdir(exist_ok=True)
    torch.export.save(exported.program, str(packer.root / rel))
    program = StageProgram(form="pt2", files={"program": rel}, facts=executor.bundle_facts(),
                           reason="torch.export program (weights inside as raw tensors), loaded with "
                                  "torch.export.load; it matched the module bit for bit when exported")
    return Packed(program, exported.signature, set(KINDS[node.kind].traits.requires))


def _weights(packer: StagePacker, node: StageNode, executor: Executor, why: str) -> Packed:
    ref = _module_ref(node)
    files = {"weights": packer.save_weights(executor, node)}
    shipped = packer.ship_code(ref) if ref.startswith("py:") else []
    reason = why
    if shipped:
        reason += f"; its class is Python shipped in {CODE_DIR}/ ({_CODE_WHY})"
    elif not trusted_class_ref(ref):
        reason += f"; its class comes from the installed module '{_top_module(ref)}' ({_CODE_WHY})"
    program = StageProgram(form="weights", files=files, ref=ref, facts=executor.bundle_facts(), reason=reason)
    return Packed(program, requires=set(KINDS[node.kind].traits.requires) | _library_of(ref))


def _checkpoint(packer: StagePacker, node: StageNode) -> Packed:
    """A checkpoint folder, copied as it is: config, safetensors shards (and their index),
    tokenizer, processor and generation files; a diffusers component keeps its pipeline layout
    (model_index.json, the component, and a denoiser's scheduler)."""
    kind = KINDS[node.kind]
    ckpt = open_checkpoint(node.model or "", kind.traits.components,
                           allow_pickle=bool(node.params.get("allow_pickle")))
    if not ckpt.weights:
        raise OmnigraphError("a bundle carries safetensors only; this checkpoint has pickled weights",
                             where=f"stage '{node.name}'")
    rel = f"programs/{node.name}"
    base = rel
    if ckpt.root != ckpt.path:  # a component of a pipeline folder
        packer.copy(ckpt.root / "model_index.json", f"{rel}/model_index.json")
        base = f"{rel}/{ckpt.path.relative_to(ckpt.root).as_posix()}"
        scheduler = ckpt.root / "scheduler"
        if kind.name == "diffusion" and scheduler.is_dir():
            for f in sorted(p for p in scheduler.iterdir() if p.is_file()):
                packer.copy(f, f"{rel}/scheduler/{f.name}")
    for f in (*ckpt.files, *ckpt.weights):
        packer.copy(f, f"{base}/{f.name}")
    files = {"checkpoint": rel}
    if node.params.get("tokenizer"):  # a tokenizer the spec names beside the folder's
        files["tokenizer"] = _copy_tokenizer(packer, node, node.params["tokenizer"])
    program = StageProgram(form="checkpoint", files=files, ref=f"{ckpt.library}:{ckpt.class_name}",
                           reason=f"a {ckpt.library} checkpoint folder kept as it is ({len(ckpt.weights)} "
                                  f"safetensors file(s), {ckpt.params / 1e6:.1f}M parameters); loaded with "
                                  f"from_pretrained, offline")
    needs = set(kind.traits.requires) | {ckpt.library}
    if kind.traits.autoregressive:
        shipped = packer.root / files.get("tokenizer", rel)
        _chat_frame_facts(node, _gguf_tokenizer(shipped) if shipped.suffix == ".gguf" else folder_tokenizer(shipped),
                          program, needs)
    return Packed(program, requires=needs)


def _ar_llm(packer: StagePacker, node: StageNode) -> Packed:
    settings = ArLlmParams.model_validate({k: v for k, v in node.params.items() if k != "tokenizer"})
    scheme, target = split_ref(node.model or "")
    files: dict[str, str] = {}
    tokenizer_ref = node.params.get("tokenizer")
    if tokenizer_ref:
        files["tokenizer"] = _copy_tokenizer(packer, node, tokenizer_ref)
    if scheme == "gguf":
        path = resolve_file(target, ".gguf")
        files["gguf"] = packer.copy(path, f"programs/{node.name}/{path.name}")
        tokenizer = _gguf_tokenizer(path) if settings.chat else None
        program = StageProgram(form="file", files=files, reason="GGUF kept as it is (quantized weights, tokenizer "
                               "and chat template inside); the runtime dequantizes it once into its cache")
        needs = {"transformers", "gguf"}
    else:
        executor = packer.load(node)
        tokenizer = executor.tokenizer
        weights = _weights(packer, node, executor, _LLM_WHY)
        program = weights.program
        program.files.update(files)
        needs = weights.requires | {"transformers"}
    _chat_frame_facts(node, tokenizer, program, needs)
    return Packed(program, requires=needs)


def _chat_frame_facts(node: StageNode, tokenizer: object | None, program: StageProgram, needs: set[str]) -> None:
    """An LLM's chat template, rendered around the prompt once (no jinja2 at run time) when it
    is a fixed frame."""
    settings = ArLlmParams.model_validate({k: v for k, v in node.params.items() if k != "tokenizer"})
    frame = chat_frame(tokenizer, settings.system) if settings.chat and tokenizer is not None else None
    if frame is not None:
        program.facts["chat_frame"] = list(frame)
        program.reason += "; the chat template is recorded rendered around the prompt (no jinja2 at run time)"
    elif settings.chat and getattr(tokenizer, "chat_template", None):
        program.reason += "; its chat template is not a fixed frame, so running it needs jinja2"
        needs.add("jinja2")


def _tts(packer: StagePacker, node: StageNode) -> Packed:
    model, config = voice_files(node.model)
    files = {"onnx": packer.copy(model, f"programs/{node.name}/{model.name}"),
             "onnx_config": packer.copy(config, f"programs/{node.name}/{config.name}")}
    return Packed(StageProgram(form="file", files=files, reason="Piper voice (ONNX) and its config kept as "
                               "they are; onnxruntime runs it"), requires={"onnxruntime", "piper-tts"})


def _vocoder(packer: StagePacker, node: StageNode) -> Packed:
    scheme, target = split_ref(node.model or "")
    if scheme == "onnx":
        path = resolve_file(target, ".onnx")
        files = {"onnx": packer.copy(path, f"programs/{node.name}/{path.name}")}
        return Packed(StageProgram(form="file", files=files, reason="ONNX kept as it is; onnxruntime runs it"),
                      requires={"onnxruntime"})
    if scheme == "py":
        obj = import_attr(target)
        if callable(obj) and not inspect.isclass(obj) and not hasattr(obj, "parameters"):
            return _code(packer, node, "a plain function vocodes by itself: " + _CODE_WHY)
    executor = packer.load(node)
    return _weights(packer, node, executor, "streamed codes arrive in chunks whose shape is only known at run "
                                            "time, so there is no example to export with")


def _custom(packer: StagePacker, node: StageNode) -> Packed:
    return _code(packer, node, "a custom stage is " + _CODE_WHY)


def _code(packer: StagePacker, node: StageNode, reason: str) -> Packed:
    shipped = packer.ship_code(node.model or "")
    files: dict[str, str] = {}
    if len(shipped) == 1:
        files["code"] = shipped[0]
    elif shipped:  # a package: its folder
        files["code"] = f"{CODE_DIR}/{_top_module(node.model or '')}"
    where = f" (source in {', '.join(shipped)})" if shipped else " (an installed module: not shipped)"
    return Packed(StageProgram(form="code", files=files, reason=reason + where))


PACKERS: dict[str, Callable[[StagePacker, StageNode], Packed]] = {
    "encoder": _torch_stage,
    "projector": _torch_stage,
    "decoder": _torch_stage,
    "diffusion": _torch_stage,
    "moe": _torch_stage,
    "ar_llm": _ar_llm,
    "tts": _tts,
    "vocoder": _vocoder,
    "custom": _custom,
}


# helpers --------------------------------------------------------------------------------
def _module_ref(node: StageNode) -> str:
    """The class a weights-form stage is rebuilt from: the model, or the arch of a weights file."""
    scheme, _ = split_ref(node.model or "")
    if scheme in ("safetensors", "pth"):
        return node.params.get("arch") or (node.params.get("config") or {}).get("arch") or ""
    return node.model or ""


def _library_of(ref: str) -> set[str]:
    scheme, _ = split_ref(ref)
    return {scheme} if scheme in ("transformers", "diffusers") else set()


def _top_module(ref: str) -> str:
    return split_ref(ref)[1].partition(":")[0].split(".")[0]


def _user_module(ref: str, module_paths: list[str]) -> tuple[Path, list[Path]] | None:
    """(the folder it is found in, its .py files) for a `py:` target's top-level module when
    it comes from the spec's folder rather than from an installed package."""
    scheme, target = split_ref(ref)
    if scheme != "py":
        return None
    top = _top_module(ref)
    spec = importlib.util.find_spec(top)
    for folder in (Path(p).resolve() for p in module_paths):
        if spec is not None and spec.origin and not Path(spec.origin).resolve().is_relative_to(folder):
            continue  # installed: an installed module wins over the spec's folder at run time too
        found = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
        if found is None or not found.origin:
            continue
        origin = Path(found.origin)
        if found.submodule_search_locations:  # a package: all of its Python files
            files = sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
            return folder, files
        return folder, [origin]
    return None


def _gguf_tokenizer(path: Path) -> object:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def _copy_tokenizer(packer: StagePacker, node: StageNode, ref: str) -> str:
    scheme, target = split_ref(ref)
    if scheme == "gguf":
        path = resolve_file(target, ".gguf")
        return packer.copy(path, f"tokenizers/{node.name}/{path.name}")
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise OmnigraphError(f"tokenizer '{ref}' is not a directory", where=f"stage '{node.name}'")
    rel = f"tokenizers/{node.name}"
    for path in sorted(folder.iterdir()):
        if path.is_file():  # tokenizer.json, tokenizer_config.json, vocab files: no subfolders
            packer.copy(path, f"{rel}/{path.name}")
    return rel
