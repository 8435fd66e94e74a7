"""An ar_llm stage runs through its fused prefill and decode-step graphs: the same logits,
hidden states and KV caches as the module's own forward, row by row in a left-padded batch,
and the same generated tokens through the runtime while requests join and leave the
running batch. Kernels run under the Triton interpreter here (OMNIGRAPH_TRITON_INTERPRET=1)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("transformers")

from omnigraph.api import compile_plan, load  # noqa: E402
from omnigraph.runtime.executor import ExecContext, executor_class  # noqa: E402
from omnigraph.runtime.executors.kv_pool import KvPool, Seq  # noqa: E402
from omnigraph.runtime.executors.llm_batch import forward_rows  # noqa: E402
from omnigraph.runtime.executors.llm_calls import FusedCalls, ModuleCalls  # noqa: E402
from omnigraph.runtime.fused_stage import INTERPRET_ENV, FusedProgram  # noqa: E402
from omnigraph.runtime.plan import RuntimePlan  # noqa: E402

SPEC = """\
pipeline: talk
inputs: {prompt: tokens}
outputs:
  ids: {from: llm.tokens, modality: tokens}
  hidden: {from: llm.hidden, modality: embedding}
stages:
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    params:
      weights: random
      max_new_tokens: MAX
      fusion: FUSION
      config: {hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
               num_key_value_heads: 2, vocab_size: 300, max_position_embeddings: 128}
"""
TOL = {"atol": 2e-4, "rtol": 2e-4}


def _spec(tmp: Path, fusion: bool = True, max_new_tokens: int = 8) -> Path:
    path = tmp / f"talk_{fusion}_{max_new_tokens}.yaml"
    path.write_text(SPEC.replace("MAX", str(max_new_tokens)).replace("FUSION", str(fusion).lower()))
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RuntimePlan]:
    root = tmp_path_factory.mktemp("fused_llm")
    spec = _spec(root)
    return spec, compile_plan(spec, kernels_dir=root / "kernels")


def _loaded(plan: RuntimePlan, monkeypatch: pytest.MonkeyPatch, interpret: bool = True):  # noqa: ANN202
    if interpret:
        monkeypatch.setenv(INTERPRET_ENV, "1")
    else:
        monkeypatch.delenv(INTERPRET_ENV, raising=False)
    ex = executor_class("ar_llm")(plan.stages()[0], ExecContext())
    ex.load()
    return ex


def _prompts(lengths: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen) for n in lengths]


def test_the_llm_stage_gets_prefill_and_decode_kernels(compiled: tuple[Path, RuntimePlan]) -> None:
    node = compiled[1].stages()[0]
    assert node.kernels is not None and set(node.kernels.files) == {"prefill", "decode_step"}
    for entry in ("prefill", "decode_step"):
        source = Path(node.kernels.files[entry]).read_text()
        assert source.count("@triton.jit") >= 10  # norms, rotary, SwiGLU, matmul epilogues per layer
        assert "def forward(self," in source and "omnigraph.passes" not in source
    decode = Path(node.kernels.files["decode_step"]).read_text()
    assert "kv_0, kv_1, kv_2, kv_3):" in decode  # the KV cache goes in as tensors, 2 layers x (k, v)
    # Each RMSNorm is one kernel also where the sequence dim is 1 (two per layer, and the
    # final one), and the DynamicCache's empty starting tensors leave no copy kernels behind.
    assert decode.count('"""pow -> mean -> add -> rsqrt -> mul -> mul"""') == 5
    assert not re.search(r"self\.k\d+\(c_lifted_tensor", decode) and "cat.default([getitem" not in decode


def test_the_executor_binds_the_fused_graphs_only_where_they_apply(
        compiled: tuple[Path, RuntimePlan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = compiled[1]
    fused = _loaded(plan, monkeypatch)
    assert isinstance(fused.calls, FusedCalls)
    assert isinstance(_loaded(plan, monkeypatch, interpret=False).calls, ModuleCalls)  # a CPU, no interpreter
    off = compile_plan(_spec(tmp_path, fusion=False), kernels_dir=tmp_path / "kernels")
    assert off.stages()[0].kernels is None  # fuse-ops left the stage alone
    off.stages()[0].kernels = plan.stages()[0].kernels  # and kernels that are there are not run
    assert isinstance(_loaded(off, monkeypatch).calls, ModuleCalls)
    fused.unfuse()  # before sharding: the graphs were bound to the whole model's weights
    assert isinstance(fused.calls, ModuleCalls)


def _pool(model: torch.nn.Module) -> KvPool:
    return KvPool(model.config.num_hidden_layers, 4, 64, model.dtype, "cpu", token_bytes=1)


def _rows(pool: KvPool, seqs: list[Seq]) -> list[list[torch.Tensor]]:
    """Each row's keys and values as the pool holds them, layer by layer."""
    out = []
    for seq in seqs:
        slots = pool.slots(seq, 0, seq.length)
        out.append([t[slots] for layer in range(len(pool.keys)) for t in (pool.keys[layer], pool.values[layer])])
    return out


def _step(calls: object, pool: KvPool, seqs: list[Seq], inputs: list[torch.Tensor], hidden: bool):
    for seq, x in zip(seqs, inputs):
        assert pool.grow(seq, len(x))
    return forward_rows(calls, pool, seqs, inputs, hidden)  # type: ignore[arg-type]


def test_fused_prefill_and_decode_match_the_module_row_by_row(
        compiled: tuple[Path, RuntimePlan], monkeypatch: pytest.MonkeyPatch) -> None:
    ex = _loaded(compiled[1], monkeypatch)
    module = ModuleCalls(ex.model)
    embed = ex.model.get_input_embeddings()
    with torch.no_grad():
        for batch in (_prompts((5, 1, 9)), _prompts((1,)), [embed(p) for p in _prompts((4, 7))]):
            pool_got, pool_want = _pool(ex.model), _pool(ex.model)
            seqs_got, seqs_want = [Seq() for _ in batch], [Seq() for _ in batch]
            want = _step(module, pool_want, seqs_want, batch, True)
            got = _step(ex.calls, pool_got, seqs_got, batch, True)
            torch.testing.assert_close(got.logits, want.logits, **TOL)
            torch.testing.assert_close(got.hidden, want.hidden, **TOL)
            torch.testing.assert_close(_rows(pool_got, seqs_got), _rows(pool_want, seqs_want), **TOL)
            # decode together from caches of different lengths, three steps
            tokens = [int(t) for t in want.logits.argmax(-1)]
            for _ in range(3):
                ids = [torch.tensor([t]) for t in tokens]
                g = _step(ex.calls, pool_got, seqs_got, ids, False)
                w = _step(module, pool_want, seqs_want, ids, True)
                assert g.hidden is None  # asked for none
                torch.testing.assert_close(g.logits, w.logits, **TOL)
                tokens = [int(t) for t in w.logits.argmax(-1)]
            torch.testing.assert_close(_rows(pool_got, seqs_got), _rows(pool_want, seqs_want), **TOL)


def test_the_pipeline_generates_the_same_tokens_fused(
        compiled: tuple[Path, RuntimePlan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, plan = compiled
    prompts = _prompts((3, 7, 1, 5), seed=1)

    def generate(target: Path | RuntimePlan) -> list[dict]:
        with load(target, target=None) as pipe:  # unplanned, f32: as the compiled plan runs
            first = [pipe.submit({"prompt": p}) for p in prompts[:2]]
            rest = [pipe.submit({"prompt": p}) for p in prompts[2:]]  # join the running batch
            return [h.result(timeout=300) for h in first + rest]

    monkeypatch.delenv(INTERPRET_ENV, raising=False)
    want = generate(spec)
    monkeypatch.setenv(INTERPRET_ENV, "1")
    calls: list[int] = []
    forward = FusedProgram.forward
    monkeypatch.setattr(FusedProgram, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    got = generate(plan)
    assert len(calls) >= 2, "the fused graphs did not run"
    for g, w in zip(got, want):
        assert g["ids"].tolist() == w["ids"].tolist() and len(w["ids"]) > 0
        torch.testing.assert_close(g["hidden"], w["hidden"], **TOL)
