"""q/k/v and gate/up merged into one matmul each (fused_linears.py, what the runtime does on a
CPU before packing the linears): the runtime's paged forward gives the logits of the unmerged
model for Llama-, Qwen2- (biases) and Qwen3-style (q/k norms) layers, in a padded prefill and
the decode steps after it; a tensor-parallel shard and tied weights are left alone."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from omnigraph.runtime.executors.cpu_linear import PackedLinear, can_pack, optimize_linears, pack_linears  # noqa: E402
from omnigraph.runtime.executors.fused_linears import FusedProjection, ProjectionSlice, fuse_projections  # noqa: E402
from omnigraph.runtime.executors.kv_pool import KvPool, Seq  # noqa: E402
from omnigraph.runtime.executors.llm_batch import forward_rows  # noqa: E402
from omnigraph.runtime.executors.llm_calls import ModuleCalls  # noqa: E402

# initializer_range 0.1: attention peaked enough that a wrong rotation or head grouping shows in the logits
SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300, head_dim=16, initializer_range=0.1)
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM", {}),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v with biases
            "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"attention_bias": True})}  # q/k norms, biases


def tiny(family: str, dtype: torch.dtype) -> torch.nn.Module:
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**SIZES, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).to(dtype).eval()
    with torch.no_grad():  # biases are zero when built: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def run(model: torch.nn.Module, prompts: list[torch.Tensor], steps: int,
        lean: bool = False) -> tuple[list[torch.Tensor], ModuleCalls]:
    """Logits of a padded prefill group and of `steps` greedy decode steps after it, through
    the runtime's paged forward (decode steps the lean way only if `lean`)."""
    config = model.config
    token_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    pool = KvPool(config.num_hidden_layers, 4, 32, model.dtype, "cpu", token_bytes)
    calls, seqs = ModuleCalls(model), [Seq() for _ in prompts]
    if not lean:
        calls._lean = None
    for seq, p in zip(seqs, prompts):
        assert pool.grow(seq, len(p) + steps)
    out = []
    with torch.no_grad():
        fwd = forward_rows(calls, pool, seqs, prompts, False)
        out.append(fwd.logits.float())
        for _ in range(steps):
            tokens = [fwd.logits[r].argmax()[None] for r in range(len(seqs))]
            fwd = forward_rows(calls, pool, seqs, tokens, False)
            out.append(fwd.logits.float())
    return out, calls


def prompts() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 300, (n,), generator=gen) for n in (9, 4, 6)]  # rows of a padded batch


def assert_same_logits(got: list[torch.Tensor], want: list[torch.Tensor], tol: float) -> None:
    for g, w in zip(got, want):  # tolerances relative to the largest logit
        torch.testing.assert_close(g, w, atol=tol * w.abs().max().item(), rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("packed", [False, True])
def test_merged_projections_give_the_unmerged_logits(family: str, dtype: torch.dtype, tol: float,
                                                     packed: bool) -> None:
    if packed and not can_pack(torch.nn.Linear(2, 2)):
        pytest.skip("torch built without oneDNN")
    plain = tiny(family, dtype)
    merged = copy.deepcopy(plain)
    assert fuse_projections(merged) == 2 * SIZES["num_hidden_layers"]  # q/k/v and gate/up per layer
    if packed:  # as the runtime does: both packed, one merged
        pack_linears(plain), pack_linears(merged)
    attn = merged.model.layers[0].self_attn
    assert isinstance(attn.q_proj, ProjectionSlice) and attn.v_proj.fused is attn.k_proj.fused
    want, _ = run(plain, prompts(), 4)
    got, _ = run(merged, prompts(), 4)  # the module's own forward through the slices
    assert_same_logits(got, want, tol)
    assert attn.fused_q_k_v.held.output is None  # nothing held past the forward


def test_a_slice_fed_another_input_computes_its_own_product() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 5), torch.nn.Linear(8, 3, bias=False)
    fused = FusedProjection([a, b])
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused.part(x, 0), a(x))
        torch.testing.assert_close(fused.part(y, 1), b(y))  # not x's product
        torch.testing.assert_close(fused.part(x, 1), b(x))
        x.mul_(2)  # edited in place since: computed again
        torch.testing.assert_close(fused.part(x, 0), a(x))


def test_a_tensor_parallel_shard_is_left_alone() -> None:
    from omnigraph.runtime.tp.shard import ColumnParallelLinear, shard_transformer

    model = tiny("llama", torch.float32)
    assert shard_transformer(model, SimpleNamespace(world=2, rank=0)) == 4  # type: ignore[arg-type]
    merged, packed = optimize_linears(model)
    assert merged == 0
    layer = model.model.layers[0]
    for part in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.up_proj):
        assert isinstance(part, ColumnParallelLinear)
    assert not any(isinstance(m, (FusedProjection, ProjectionSlice)) for m in model.modules())
    assert packed == (1 if can_pack(model) else 0)  # the LM head alone: the shards stay as they are


def test_tied_weights_are_not_merged() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
            self.other = torch.nn.Linear(8, 4)
            self.other.weight = self.up_proj.weight

    model = Tied()
    assert fuse_projections(model) == 0 and type(model.up_proj) is torch.nn.Linear


def test_optimize_linears_merges_then_packs() -> None:
    if not can_pack(torch.nn.Linear(2, 2)):
        pytest.skip("torch built without oneDNN")
    model = tiny("llama", torch.float32)
    layers = SIZES["num_hidden_layers"]
    assert optimize_linears(model) == (2 * layers, 4 * layers + 1)  # qkv, o, gate_up, down; the head
    assert isinstance(model.model.layers[0].self_attn.fused_q_k_v.linear, PackedLinear)
