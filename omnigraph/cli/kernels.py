"""`omnigraph compile SPEC --emit kernels` / `--dump-kernels DIR`: the generated Triton kernels.

Compiles with capture-stages and fuse-ops in the pipeline, then prints each stage entry's
kernel file (its kernels and the fused graph calling them), or writes one file per entry
plus index.json (and the graph's constant tensors, as safetensors) into DIR.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omnigraph.errors import OmnigraphError


def compile_kernels(spec: str, target: str | None, plan_options: dict[str, dict[str, Any]] | None = None) -> tuple[
        list[Any], list[str]]:
    """The kernel files of every stage entry fusion reached, and a note for each it did not."""
    from omnigraph.api import compile_spec_plan
    from omnigraph.codegen.kernel_module import kernel_files

    comp, _ = compile_spec_plan(spec, target, plan_options, fused=True)
    return kernel_files(comp)


def is_kernel_dump(path: Path) -> bool:
    """A folder `--dump-kernels` wrote: its index.json lists kernel files (and nothing else
    may be replaced by a later dump)."""
    import json

    try:
        index = json.loads((path / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index, list) and all(isinstance(e, dict) and {"stage", "entry", "file"} <= e.keys()
                                           for e in index)


def kernels_command(spec: str, target: str | None, plan_options: dict[str, dict[str, Any]] | None,
                    emit: bool, dump_dir: str | None, output: str | None, force: bool = False) -> int:
    from omnigraph.output_paths import put_in_place, refuse_unowned, staging_beside

    if dump_dir is not None:
        refuse_unowned(Path(dump_dir), is_kernel_dump, "kernel dump", force)
    files, notes = compile_kernels(spec, target, plan_options)
    if dump_dir is not None:
        from omnigraph.codegen.kernel_module import write

        try:
            with staging_beside(Path(dump_dir), "kernels") as tmp:
                written = write(files, tmp / "kernels")
                put_in_place(tmp / "kernels", Path(dump_dir), is_kernel_dump, "kernel dump", force)
        except OSError as exc:
            raise OmnigraphError(f"cannot write kernels to {dump_dir}: {exc.strerror}") from None
        n = sum(len(f.kernels) for f in files)
        sys.stderr.write(f"wrote {n} kernel(s) in {len(files)} file(s) to {dump_dir} ({len(written)} files)\n")
    if emit:
        parts = [f"# ===== {f.filename}: {len(f.kernels)} kernel(s) =====\n{f.source}" for f in files]
        parts += [f"# {note}\n" for note in notes]
        text = "\n".join(parts) if parts else "# no stage has a torch module to fuse\n"
        if output and output != "-":
            Path(output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    return 0
