"""The lean decode step (lean_decode.py, what the runtime's decode steps run on a CPU once q/k/v
and gate/up are merged) gives the module's logits for Llama-, Qwen2- and Qwen3-style models,
rows of a padded batch included; a lean step that computed something else is caught on its
first step and the module's forward kept; models it does not know keep their forward."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from omnigraph.runtime.executors import lean_decode  # noqa: E402
from omnigraph.runtime.executors.cpu_linear import can_pack, optimize_linears  # noqa: E402
from omnigraph.runtime.executors.fused_linears import fuse_projections  # noqa: E402
from omnigraph.runtime.executors.lean_decode import LeanDecode  # noqa: E402

from test_fused_linears import FAMILIES, SIZES, assert_same_logits, prompts, run, tiny  # noqa: E402


def optimized(model: torch.nn.Module) -> torch.nn.Module:
    """A copy as the runtime prepares it on this CPU: merged, and packed where oneDNN is."""
    model = copy.deepcopy(model)
    if can_pack(model):
        optimize_linears(model)
    else:
        fuse_projections(model)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_lean_decode_steps_give_the_module_logits(family: str, dtype: torch.dtype, tol: float) -> None:
    plain = tiny(family, dtype)
    want, _ = run(plain, prompts(), 5)
    got, calls = run(optimized(plain), prompts(), 5, lean=True)
    assert isinstance(calls._lean, LeanDecode) and calls._lean.checked  # it ran, and passed its check
    assert_same_logits(got, want, tol)


def _fails(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("a shape it did not expect")


@pytest.mark.parametrize("rotate", [lambda x, cos, sin: x, _fails], ids=["rope-forgotten", "raises"])
def test_a_lean_step_that_computes_otherwise_is_dropped_on_its_first_step(monkeypatch: pytest.MonkeyPatch,
                                                                          rotate: object) -> None:
    plain = tiny("llama", torch.float32)
    want, _ = run(plain, prompts(), 4)
    monkeypatch.setattr(lean_decode, "_rotate", rotate)
    got, calls = run(optimized(plain), prompts(), 4, lean=True)
    assert calls._lean is None  # the module's forward from then on
    assert_same_logits(got, want, 1e-5)  # and its logits, the first step's included


def test_hidden_states_come_from_the_module_forward() -> None:
    from omnigraph.runtime.executors.kv_pool import KvPool, Seq
    from omnigraph.runtime.executors.llm_batch import forward_rows
    from omnigraph.runtime.executors.llm_calls import ModuleCalls

    model = optimized(tiny("llama", torch.float32))
    pool = KvPool(2, 4, 8, torch.float32, "cpu", 1)
    calls, seq = ModuleCalls(model), Seq()
    pool.grow(seq, 6)
    with torch.no_grad():
        forward_rows(calls, pool, [seq], [torch.arange(3, 8)], False)
        fwd = forward_rows(calls, pool, [seq], [torch.tensor([9])], True)
    assert fwd.hidden is not None and fwd.hidden.shape == (1, SIZES["hidden_size"])


def test_models_it_does_not_know_keep_their_forward() -> None:
    from omnigraph.runtime.tp.shard import shard_transformer

    llama = tiny("llama", torch.float32)
    assert LeanDecode.build(llama) is None  # its projections are not merged
    sharded = copy.deepcopy(llama)
    shard_transformer(sharded, SimpleNamespace(world=2, rank=0))  # type: ignore[arg-type]
    assert LeanDecode.build(optimized(sharded)) is None  # a tensor-parallel shard: left unmerged
    eager = copy.deepcopy(llama)
    eager.config._attn_implementation = "eager"
    assert LeanDecode.build(optimized(eager)) is None  # not the attention it reproduces
    torch.manual_seed(0)
    sliding = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=1))
    assert LeanDecode.build(optimized(sliding)) is None  # a sliding-window layer
    olmo = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**SIZES))  # norms after, not before
    merged = optimized(olmo)
    assert merged.model.layers[0].self_attn.fused_q_k_v is not None and LeanDecode.build(merged) is None
