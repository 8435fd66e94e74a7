"""The runtime runs a stage through its fused graph: generated kernels on a GPU, the Triton
interpreter on a CPU when asked (OMNIGRAPH_TRITON_INTERPRET=1), its own ops otherwise, and
always its own ops with `params.fusion: false`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from omnigraph.api import compile_plan, load
from omnigraph.runtime.executor import ExecContext, executor_class
from omnigraph.runtime.fused_stage import INTERPRET_ENV, FusedProgram

pytest.importorskip("triton")

SPEC = """\
pipeline: see
inputs: {image: image}
outputs:
  embeds: {from: vision.embeds, modality: embedding}
stages:
  vision:
    kind: encoder
    model: "transformers:SiglipVisionModel"
    inputs: [image]
    params:
      weights: random
      hidden_size: 32
      fusion: FUSION
      config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
               image_size: 16, patch_size: 8}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("fused")
    spec = root / "see.yaml"
    spec.write_text(SPEC.replace("FUSION", "true"))
    return spec, compile_plan(spec, kernels_dir=root / "kernels")


def _image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 20, 24), dtype=np.uint8))


def test_the_plan_points_at_the_stage_kernels(compiled: tuple[Path, object]) -> None:
    _, plan = compiled
    node = plan.stages()[0]
    assert node.kernels is not None and set(node.kernels.files) == {"forward"}
    source = Path(node.kernels.files["forward"]).read_text()
    assert "@triton.jit" in source and "def forward(self," in source
    assert "omnigraph.passes" not in source and "omnigraph.codegen" not in source  # runtime-only code


def test_on_a_cpu_the_stage_runs_unfused_unless_the_interpreter_is_asked_for(
        compiled: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    _, plan = compiled
    node = plan.stages()[0]
    monkeypatch.delenv(INTERPRET_ENV, raising=False)
    plain = executor_class("encoder")(node, ExecContext())
    plain.load()
    assert not isinstance(plain.model, FusedProgram)
    monkeypatch.setenv(INTERPRET_ENV, "1")
    fused = executor_class("encoder")(node, ExecContext())
    fused.load()
    assert isinstance(fused.model, FusedProgram)


def test_the_fused_stage_gives_the_eager_embeddings(compiled: tuple[Path, object],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec, plan = compiled
    with load(spec, target=None) as pipe:  # no kernels, unplanned like the plan: the module's own ops
        want = pipe.run({"image": _image()})["embeds"]
    monkeypatch.setenv(INTERPRET_ENV, "1")
    with load(plan) as pipe:
        got = pipe.run({"image": _image()})["embeds"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fusion_false_turns_a_stage_off(compiled: tuple[Path, object], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "see.yaml"
    spec.write_text(SPEC.replace("FUSION", "false"))
    plan = compile_plan(spec, kernels_dir=tmp_path / "kernels")
    node = plan.stages()[0]
    assert node.kernels is None  # fuse-ops left the stage alone
    node.kernels = compiled[1].stages()[0].kernels  # and kernels that are there are not run
    monkeypatch.setenv(INTERPRET_ENV, "1")
    ex = executor_class("encoder")(node, ExecContext())
    ex.load()
    assert not isinstance(ex.model, FusedProgram)


def test_unfuse_gives_back_the_module_before_sharding(compiled: tuple[Path, object],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, plan = compiled
    monkeypatch.setenv(INTERPRET_ENV, "1")
    ex = executor_class("encoder")(plan.stages()[0], ExecContext())
    ex.load()
    fused = ex.model
    assert isinstance(fused, FusedProgram)
    ex.unfuse()  # tp sharding replaces the weights the fused graph was bound to
    assert ex.model is fused.unfused and not isinstance(ex.model, FusedProgram)


def test_kernels_refuse_weights_unlike_those_they_were_generated_for(
        compiled: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from omnigraph.runtime.fused_stage import bind

    _, plan = compiled
    node = plan.stages()[0]
    monkeypatch.delenv(INTERPRET_ENV, raising=False)
    ex = executor_class("encoder")(node, ExecContext())
    ex.load()  # unfused: the module itself
    holder = nn.Module()
    holder.model = ex.model.double()  # as if the plan's kernels were for another model
    with pytest.raises(ValueError, match=r"is float64 \[.*\], but the kernels were generated for float32"):
        bind(node.kernels.files["forward"], holder, "cpu", node.kernels.constants.get("forward"), interpret=False)
