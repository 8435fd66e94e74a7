"""Causal LMs and their tokenizers for `ar_llm` stages, offline.

    gguf:PKG_OR_PATH        dequantized by transformers (slow), then cached as safetensors
    transformers:./ckpt     a checkpoint folder (or Class@./ckpt, or a Hub id in the local cache),
                            with the tokenizer and chat template it carries
    transformers:Class      built from params.config with a fixed seed (`weights: random`)

A model built from a config has no tokenizer of its own: it gets `params.tokenizer`
(a directory of tokenizer files, or gguf:PKG_OR_PATH) or else `ByteTokenizer`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omnigraph.runtime.cache import content_hash, entry_dir, record_source
from omnigraph.runtime.executors.modules import checkpoint_folder, load_module, stage_dtype
from omnigraph.runtime.loaders import ModelNotFound, resolve_file, split_ref
from omnigraph.runtime.plan import StageNode



class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then BOS/EOS/PAD: any model with >= 259 ids can talk."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def gguf_cache_dir(path: Path, dtype: str = "f32") -> Path:
    """Where the dequantized copy of a GGUF file lives, in `dtype`: keyed by the file's full
    content hash (see omnigraph/runtime/cache.py), not by its path."""
    digest = content_hash(path)
    return entry_dir("gguf", digest if dtype == "f32" else f"{digest}-{dtype}")


def _load_pretrained(directory: Path, gguf_file: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # omnigraph shows its own loading progress
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    # transformers dequantizes a GGUF under its own tqdm bar, which hf_logging does not reach:
    # shown on a terminal, never as a wall of lines in a log (tqdm reads TQDM_DISABLE).
    quiet = {} if sys.stderr.isatty() and not os.environ.get("OMNIGRAPH_QUIET") else {"TQDM_DISABLE": "1"}
    with _environ(quiet):
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    return model, tokenizer


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_checkpoint(model: Any, tokenizer: Any, folder: Path) -> None:
    """A dequantized GGUF model as a plain checkpoint folder: config, safetensors, generation
    config, tokenizer and chat template."""
    # transformers refuses to save a model that still says it is GGUF-quantized; its
    # weights are already dequantized, so dropping the marker makes it a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _write_cache(model: Any, tokenizer: Any, target: Path, source: Path) -> None:
    """Save atomically (write aside, then rename) so a crash or a racing process never
    leaves a half-written cache that looks complete."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tokenizer, tmp)
    record_source(tmp, source, bytes=source.stat().st_size)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def load_gguf(target: str, dtype: Any = None) -> tuple[Any, Any]:
    """A GGUF file (or the one an installed package carries), via the safetensors cache, in
    `dtype` (a torch dtype; None: as transformers dequantizes it, f32). The cache keeps one
    copy per dtype: bf16 is half the f32 copy's size and loads in half the time."""
    import torch

    name = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype, "f32")
    path = resolve_file(target, ".gguf")
    cached = gguf_cache_dir(path, name)
    if (cached / "config.json").is_file():
        return _load_pretrained(cached)
    full = gguf_cache_dir(path)  # the f32 copy converts faster than the GGUF dequantizes
    if name != "f32" and (full / "config.json").is_file():
        model, tokenizer = _load_pretrained(full)
    else:
        model, tokenizer = _load_pretrained(path.parent, gguf_file=path.name)
    if name != "f32":
        model = model.to(dtype)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_cache(model, tokenizer, cached, path)
    except OSError:  # a read-only home is no reason to fail: we just stay slow
        pass
    return model, tokenizer


def load_tokenizer(ref: str | None) -> Any:
    if ref is None:
        return ByteTokenizer()
    scheme, target = split_ref(ref)
    if scheme == "gguf":
        return load_gguf(target)[1]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(ref).expanduser()), local_files_only=True)


def load_causal_lm(node: StageNode, device: str, default_seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) ready for inference on `device`, in the stage's dtype."""
    scheme, target = split_ref(node.model or "")
    if scheme == "gguf":
        model, tokenizer = load_gguf(target, stage_dtype(node))
        model = model.to(device=device, dtype=stage_dtype(node))
    elif scheme == "transformers":
        model = load_module(node, device, default_seed=default_seed)
        folder = checkpoint_folder(node)
        tokenizer = load_tokenizer(node.params.get("tokenizer") or (str(folder) if folder else None))
    else:
        raise ModelNotFound(f"ar_llm takes a gguf: or transformers: model, not '{node.model}'")
    vocab = model.get_input_embeddings().num_embeddings
    if getattr(tokenizer, "vocab_size", 0) > vocab:
        raise ModelNotFound(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab}")
    model.requires_grad_(False)
    return model.eval(), tokenizer
