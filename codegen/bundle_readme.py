"""The README.md inside a bundle: how to run it and what each file is, for whoever receives it."""
from __future__ import annotations

from omnigraph.runtime.bundle import torch_minor
from omnigraph.runtime.bundle_manifest import Manifest
from omnigraph.runtime.plan import RuntimePlan

_FORMS = {
    "pt2": "a `torch.export` program (`torch.export.load`); its weights are inside as raw tensors",
    "weights": "safetensors weights loaded strictly into the class named in plan.json, rebuilt from its config",
    "file": "a model file kept as it is (GGUF for llama.cpp-style LLMs, ONNX for onnxruntime)",
    "checkpoint": "a Hugging Face / diffusers checkpoint folder kept as it is (config, safetensors shards "
                  "hashed in the manifest, tokenizer and processor files), loaded offline with `from_pretrained`",
    "code": "Python source (or an installed module) the stage calls; it runs only with `--trust-code`",
}


def render_readme(manifest: Manifest, plan: RuntimePlan) -> str:
    b = manifest.built_with
    example = " ".join(f"--input {name}={'TEXT' if t.modality == 'text' else '@FILE'}"
                       for name, t in plan.inputs.items())
    trust = " --trust-code" if manifest.code or any(s.form == "code" for s in manifest.stages) else ""
    pt2 = any(s.form == "pt2" for s in manifest.stages)
    lines = [
        f"# {manifest.pipeline}: an omnigraph bundle",
        "",
        f"Compiled by omnigraph {b.omnigraph} with torch {b.torch} on Python {b.python}"
        + (f" for target `{manifest.target}`." if manifest.target else "."),
        "",
        "## Run it",
        "",
        "It needs the omnigraph runtime, not the compiler (no xdsl, lark, pulp or jinja2):",
        "",
        "```bash",
        f"pip install {' '.join(manifest.requires)}",
        "pip install --no-deps omnigraph",
        f"omnigraph run BUNDLE {example} --output-dir out/{trust}",
        f"python -m omnigraph.runtime BUNDLE {example} --output-dir out/{trust}",
        "omnigraph inspect BUNDLE",
        "```",
        "",
        "BUNDLE is this directory, or the `.ogb` file it came in. Inputs: "
        + ", ".join(f"`{n}` ({t.modality})" for n, t in plan.inputs.items())
        + "; outputs: " + ", ".join(f"`{n}` ({t.modality})" for n, t in plan.output_types.items()) + ".",
        "",
    ]
    if pt2:
        lines += [f"Its `.pt2` programs load only in torch {torch_minor(b.torch)}.x; another version is refused "
                  f"with a message.", ""]
    if trust:
        lines += ["**It runs Python code** (listed below): read it before passing `--trust-code`.", ""]
    noise = [s.name for s in manifest.stages if s.random_weights]
    if noise:
        lines += [f"**Random weights**: {', '.join(noise)} {'was' if len(noise) == 1 else 'were'} built with seeded "
                  f"random weights (`weights: random`): {'its' if len(noise) == 1 else 'their'} outputs are noise.",
                  ""]
    lines += ["## Stages", "", "| stage | kind | form | files | why this form |", "|---|---|---|---|---|"]
    for s in manifest.stages:
        files = "<br>".join(f"`{f}`" for f in s.files) or "-"
        lines.append(f"| {s.name} | {s.kind} | {s.form} | {files} | {s.reason.replace('|', '/')} |")
    lines += ["", "Forms:", ""]
    lines += [f"- **{form}**: {text}" for form, text in _FORMS.items()
              if any(s.form == form for s in manifest.stages)]
    lines += [
        "",
        "## Files and checks",
        "",
        "- `manifest.json`: the format version, what built the bundle, and the sha256 and size of every",
        "  other file. Before loading anything the runtime checks each file against it and refuses a",
        "  changed, missing or extra file, a link, or a path outside the bundle.",
        "- `plan.json`: the runtime plan (stages, channels, batching, devices).",
        "- `programs/`, `weights/`, `tokenizers/`: the stages' programs and weights (table above).",
    ]
    if manifest.code:
        lines.append("- `code/`: Python source: " + ", ".join(f"`{c}`" for c in manifest.code) + ".")
    if manifest.kernels:
        lines += ["- `kernels/`: generated Triton kernels (Python) that run stages fused: "
                  + ", ".join(f"`{k}`" for k in manifest.kernels) + ".",
                  "  They run only with `--trust-code`; without it the stages run unfused (same results)."]
    lines += [
        "",
        "Nothing is unpickled: weights load through safetensors (or `torch.load(weights_only=True)`),",
        "and a `.pt2` is loaded only when it holds no pickled objects or native code and its graph calls",
        "only torch operators. The sha256s catch a damaged or edited file, not a malicious author:",
        "run bundles from people you trust.",
        "",
    ]
    return "\n".join(lines)
