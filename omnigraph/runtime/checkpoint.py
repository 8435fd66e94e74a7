"""Checkpoint folders (Hugging Face / diffusers): found, checked and sized without reading tensors.

    transformers:./ckpt            a folder with config.json and safetensors (sharded with an index)
    transformers:Class@./ckpt      the same, the class named rather than read from `architectures`
    transformers:Org/Name          a Hub id: the snapshot in the local Hugging Face cache only
    diffusers:./pipeline           a pipeline folder (model_index.json): the stage's component
                                   (its kind says which: a denoiser's transformer/unet, a decoder's vae)
    diffusers:./pipeline/unet      one component folder (config.json with `_class_name`)

Everything here reads JSON and safetensors headers only: the compiler plans a 30B checkpoint
as fast as its config, and `check` reports a truncated shard, an index naming a missing file or
tensor, a folder with only pickled `.bin` weights, or a class that is not a model class — each
before anything is loaded. The runtime (loaders.py) then loads with the library's own
`from_pretrained`, offline, safetensors only.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnigraph import model_ref
from omnigraph.errors import OmnigraphError

MAX_HEADER = 100 << 20  # a safetensors header is JSON; anything larger is not one
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PICKLED = ("pytorch_model.bin", "diffusion_pytorch_model.bin", "model.ckpt")
# Files a loaded stage may need beside its weights (config, tokenizer, processor, generation
# config, chat template, vocabularies), copied into bundles as they are. Never code (.py).
SIDE_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")
_DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32", "F64": "f64", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(OmnigraphError, ValueError):
    """A checkpoint that cannot be used as it is; says which file and why."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the model's folder (a diffusers component's own folder)
    library: str
    class_name: str
    config: dict[str, Any]
    weights: tuple[Path, ...]  # safetensors files
    params: int  # elements over all tensors, from the headers
    dtype: str | None  # the weights' float dtype, when they have one
    root: Path  # the pipeline folder for a diffusers component, else `path`
    files: tuple[Path, ...] = field(default=())  # config, tokenizer, processor files beside the weights

    @property
    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


location_of = model_ref.location_of


def resolve(location: str, bases: list[Path] | None = None) -> Path:
    """A checkpoint folder: a path (relative ones against `bases`, then the working directory),
    or a Hub id found in the local Hugging Face cache. Never the network."""
    looked: list[str] = []
    path = Path(location).expanduser()
    candidates = [path] if path.is_absolute() else [b / path for b in (bases or [])] + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
        looked.append(str(candidate))
    if HUB_ID.fullmatch(location) and not location.startswith("."):
        found = _hub_snapshot(location)
        if found is not None:
            return found
        from huggingface_hub import constants

        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (models--{location.replace('/', '--')})")
        raise CheckpointError(f"no checkpoint for '{location}': looked in {'; '.join(looked)}",
                              hint=f"omnigraph never downloads; on a machine with network run "
                                   f"`huggingface-cli download {location}` (or point at a folder)")
    raise CheckpointError(f"no checkpoint folder '{location}': looked in {'; '.join(looked)}")


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers brings it
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def open_checkpoint(ref: str, components: tuple[str, ...] = (), bases: list[Path] | None = None,
                    allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint a reference names, checked (headers only). `components`: which part of a
    diffusers pipeline folder the stage loads, in order of preference."""
    scheme, _ = model_ref.split(ref)
    named, location = location_of(ref)
    if location is None:
        raise CheckpointError(f"'{ref}' names no checkpoint")
    root = resolve(location, bases)
    folder = _component(root, components) if scheme == "diffusers" else root
    config = _json(folder / "config.json", required=True)
    class_name = named or _class_from(config, scheme, folder)
    if named is None:
        class_name = _in_family(class_name, config, scheme)
    found = model_ref.problem(f"{scheme}:{class_name}")
    if found is not None:
        raise CheckpointError(f"{folder / 'config.json'}: {found}")
    weights = _weights(folder, allow_pickle)
    headers = {shard: _header(shard) for shard in weights}
    _check_index(folder, headers)
    params, dtype = _count(headers)
    files = tuple(sorted(p for p in folder.iterdir()
                         if p.suffix in SIDE_SUFFIXES and not p.name.startswith(".") and p.is_file()))
    return Checkpoint(folder, scheme, class_name, config, tuple(weights), params, dtype, root, files)


def _component(root: Path, components: tuple[str, ...]) -> Path:
    index = _json(root / "model_index.json", required=False)
    if index is None:
        return root  # a component folder itself
    for name in components:
        if name in index and (root / name).is_dir():
            return root / name
    have = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)]
    raise CheckpointError(f"{root}: the pipeline has no {' or '.join(components) or 'such'} component "
                          f"(it has {', '.join(have) or 'none'})",
                          hint="point at the component's folder, e.g. diffusers:./pipeline/unet")


def _class_from(config: dict[str, Any], library: str, folder: Path) -> str:
    if library == "diffusers":
        name = config.get("_class_name")
    else:
        archs = config.get("architectures")
        name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if not isinstance(name, str) or not name:
        key = "_class_name" if library == "diffusers" else "architectures"
        raise CheckpointError(f"{folder / 'config.json'}: no '{key}' says which class to load",
                              hint=f"name it in the reference: {library}:ClassName@{folder}")
    return name


def _in_family(name: str, config: dict[str, Any], library: str) -> str:
    """A class from `architectures` that transformers does not export at its top level (an
    encoder tower such as WhisperEncoder) is looked up in its model family's module."""
    if library != "transformers" or model_ref.problem(f"{library}:{name}") is None:
        return name
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return name
    try:
        from transformers.models.auto.configuration_auto import model_type_to_module_name

        family = model_type_to_module_name(model_type)
    except (ImportError, KeyError, ValueError):
        return name
    return f"{family}.{name}" if model_ref.problem(f"{library}:{family}.{name}") is None else name


def _json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path.parent}: not a checkpoint folder (no {path.name})")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _index(folder: Path) -> tuple[Path, dict[str, str]] | None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return None
    index = _json(indexes[0], required=True)
    weight_map = index.get("weight_map") if index else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{indexes[0]}: no weight_map of tensor -> shard file")
    return indexes[0], weight_map


def _weights(folder: Path, allow_pickle: bool) -> list[Path]:
    """The safetensors files: the shards an index names (each present), or every one there."""
    indexed = _index(folder)
    if indexed is not None:
        path, weight_map = indexed
        names = sorted(set(weight_map.values()))
        for name in names:
            if "/" in name or not (folder / name).is_file():
                raise CheckpointError(f"{path}: names shard '{name}', which is not in {folder}")
        for name in _series(names):  # a shard of the series the index forgot: its tensors would be lost
            if name not in names:
                raise CheckpointError(f"{path}: shard '{name}' is not in the index (its tensors would be missing)")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickled = [p for p in folder.iterdir() if p.name in PICKLED or p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickled:
        if allow_pickle:
            return []
        raise CheckpointError(f"{folder}: only pickled weights ({pickled[0].name}); omnigraph loads safetensors, "
                              f"which cannot run code", hint="convert them to safetensors, or pass allow_pickle "
                                                             "(params.allow_pickle: true) if you trust the file")
    raise CheckpointError(f"{folder}: no weights (no .safetensors files)")


def _series(names: list[str]) -> list[str]:
    """Every shard name of the numbered series (model-00001-of-00003.safetensors, …) the index uses."""
    out: list[str] = []
    for prefix, width, total in {(m[1], len(m[3]), m[3]) for m in map(_SHARD.fullmatch, names) if m}:
        out += [f"{prefix}-{k:0{width}d}-of-{total}.safetensors" for k in range(1, min(int(total), 100_000) + 1)]
    return out


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's header, checked against the file's size (a truncated shard fails)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(MAX_HEADER, size - 8):
                raise ValueError("header length past the end of the file")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors header")
    end = 0
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        try:
            start, stop = entry["data_offsets"]
            elems = 1
            for d in entry["shape"]:
                elems *= int(d)
            want = elems * _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has a malformed entry") from None
        if stop - start != want:
            raise CheckpointError(f"{path}: tensor '{name}' takes {stop - start} bytes, its shape needs {want}")
        end = max(end, stop)
    if 8 + length + end > size:
        raise CheckpointError(f"{path}: truncated ({size} bytes; its tensors need {8 + length + end})")
    return tensors


def _check_index(folder: Path, headers: dict[Path, dict[str, Any]]) -> None:
    """Every tensor the index lists is in its shard, and every stored tensor is listed."""
    indexed = _index(folder)
    if indexed is None:
        return
    path, weight_map = indexed
    for tensor, shard in weight_map.items():
        if tensor not in headers.get(folder / shard, {}):
            raise CheckpointError(f"{path}: tensor '{tensor}' is not in {shard}")
    for shard, header in headers.items():
        for tensor in header:
            if weight_map.get(tensor) != shard.name:
                raise CheckpointError(f"{path}: tensor '{tensor}' of {shard.name} is missing from the index")


def _count(headers: dict[Path, dict[str, Any]]) -> tuple[int, str | None]:
    params, dtypes = 0, {}
    for header in headers.values():
        for entry in header.values():
            n = 1
            for d in entry["shape"]:
                n *= int(d)
            params += n
            dtypes[entry["dtype"]] = dtypes.get(entry["dtype"], 0) + n
    floats = {k: v for k, v in dtypes.items() if k in _DTYPES}
    return params, (_DTYPES[max(floats, key=floats.__getitem__)] if floats else None)
