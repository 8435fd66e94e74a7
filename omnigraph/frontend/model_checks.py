"""What a stage's model reference must be: a known scheme, a model class and nothing else
(omnigraph/model_ref.py), and real weights unless the spec asks for random ones (a checkpoint,
checked here by its config and safetensors headers, no tensors read)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omnigraph import model_ref
from omnigraph.errors import SpecError
from omnigraph.frontend.messages import suggest
from omnigraph.frontend.source import DocPath
from omnigraph.kinds import MODEL_SCHEMES, StageKind
from omnigraph.spec import StageSpec


class ModelChecks:
    """The model checks of the resolver (resolve.py), which provides `err` and `bases`."""

    err: Callable[..., SpecError]
    bases: list[Path]  # folders relative checkpoint paths are looked up in (the spec's own first)

    def check_model(self, stage: StageSpec, kind: StageKind, path: DocPath) -> None:
        who = f"stage '{path[-1]}'"
        if stage.model is None:
            if kind.needs_model:
                raise self.err(f"{who}: {kind.name} stage needs a `model` reference", path, key=True,
                               hint="e.g. model: \"transformers:LlamaForCausalLM\" or \"gguf:<package>\"")
            return
        if not kind.needs_model:
            raise self.err(f"{who}: {kind.name} stages take no model", (*path, "model"), key=True)
        scheme, sep, target = stage.model.partition(":")
        if not sep or not target.strip():
            raise self.err(f"{who}: model reference '{stage.model}' must be `scheme:target`",
                           (*path, "model"), hint="schemes: " + ", ".join(MODEL_SCHEMES))
        if scheme not in MODEL_SCHEMES:
            raise self.err(f"{who}: unknown model scheme '{scheme}'", (*path, "model"),
                           hint=suggest(scheme, MODEL_SCHEMES) or "schemes: " + ", ".join(MODEL_SCHEMES))
        self.check_ref(stage.model, (*path, "model"), who)

    def check_weights(self, stage: StageSpec, kind: StageKind, path: DocPath) -> None:
        """A library model has real weights (a checkpoint) unless the spec asks for random ones;
        a checkpoint is checked here (its config and safetensors headers, no tensors read)."""
        scheme = (stage.model or "").partition(":")[0]
        if scheme not in model_ref.LIBRARIES:
            return
        who = f"stage '{path[-1]}'"
        _, location = model_ref.location_of(stage.model or "")
        random = stage.params.get("weights") == "random"
        if location is None and not random:
            raise self.err(f"{who}: '{stage.model}' names a class but no weights", (*path, "model"),
                           hint=f"point at a checkpoint ({scheme}:./folder, {scheme}:Class@./folder or a Hub id "
                                f"in the local cache), or say `weights: random` for seeded random weights")
        if location is not None and random:
            raise self.err(f"{who}: `weights: random`, but the model is a checkpoint", (*path, "params", "weights"))
        if location is not None:
            from omnigraph.runtime.checkpoint import CheckpointError, open_checkpoint

            try:
                open_checkpoint(stage.model or "", kind.traits.components, self.bases,
                                allow_pickle=bool(stage.params.get("allow_pickle")))
            except CheckpointError as exc:
                raise self.err(f"{who}: {exc.message}", (*path, "model"), hint=exc.hint) from None

    def check_ref(self, ref: str, path: DocPath, who: str) -> None:
        """A reference the compiler may build (on `meta`) names a model class and nothing else."""
        found = model_ref.problem(ref)
        if found is not None:
            raise self.err(f"{who}: {found}", path)
