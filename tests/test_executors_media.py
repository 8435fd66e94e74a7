"""The model-backed batch executors (encoder, projector, diffusion, decoder, moe) through
the LocalBackend, with tiny seeded-random models: outputs have the types infer-types
predicts, batches form, seeds reproduce, CFG branches run, MoE routes as configured.
(ar_llm has its own tests; these pipelines have none.)"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import omnigraph
from omnigraph.runtime.engine import RequestFailed
from omnigraph.runtime.plan import Batching, PortType, RuntimePlan, StageNode
from omnigraph.runtime.values import Audio
from omnigraph.runtime.local import StageLoadError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "u8": torch.uint8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core box: OpenMP's second thread only adds barrier waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(tmp_path: Path, text: str, *, batch: int | None = None, suffix: str = ".og") -> omnigraph.Pipeline:
    """Compile a spec; with `batch`, every stage waits until it holds exactly that many items."""
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    plan = omnigraph.compile_plan(path)
    if batch:
        for node in plan.stages():
            node.batching = Batching(max_batch=batch, max_wait_ms=5000)
    return omnigraph.load(plan)


def run_all(p: omnigraph.Pipeline, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    handles = [p.submit(r) for r in requests]
    return [h.result(timeout=120) for h in handles]


def assert_type(value: Any, ptype: PortType) -> None:
    """A value has the dtype and shape a plan's port type says (None: any size)."""
    if ptype.modality == "audio":
        assert isinstance(value, Audio) and value.samples.dtype == np.float32
        shape = value.samples.shape
    else:
        assert value.dtype == TORCH_DTYPES[ptype.dtype], (value.dtype, ptype)
        shape = tuple(value.shape)
    assert ptype.shape is not None and len(shape) == len(ptype.shape), (shape, ptype)
    assert all(d is None or d == s for d, s in zip(ptype.shape, shape)), (shape, ptype)


def batch_sizes(module: Any) -> list[int]:
    """Records the batch size of each forward of `module`."""
    sizes: list[int] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        sizes.append(next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)).shape[0])

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes


def model(p: omnigraph.Pipeline, stage: str) -> Any:
    return p.backend.workers[stage].executor.model


def image(h: int, w: int, seed: int) -> Any:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


SIGLIP = """{ model: "transformers:SiglipVisionModel", weights: random, hidden_size: 32,
    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
             image_size: 32, patch_size: 8} }"""

VISION = f"""
pipeline vision(image: image<u8, [3, ?, ?]>) -> (siglip: embedding, fused: embedding,
                                                 projected: embedding, patches: embedding) {{
  siglip = encoder(image) {SIGLIP}
  vit = encoder(image) {{ model: "transformers:ViTModel", weights: random, hidden_size: 32,
    config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
             image_size: 32, patch_size: 16}} }}
  conv = encoder(image) {{ model: "py:torch.nn:Conv2d", hidden_size: 32,
    config: {{in_channels: 3, out_channels: 32, kernel_size: 16, stride: 16}} }}
  fuse = projector(x = [siglip.embeds, vit.embeds]) {{ model: "py:torch.nn:Identity", in_dim: 32, out_dim: 32 }}
  proj = projector(siglip.embeds) {{ model: "py:torch.nn:Linear", in_dim: 32, out_dim: 48 }}
  return siglip = siglip.embeds, fused = fuse.embeds, projected = proj.embeds, patches = conv.embeds
}}
"""


def test_image_encoders_and_projectors_batch(tmp_path: Path) -> None:
    sizes = [(32, 32), (48, 64), (32, 64), (20, 36)]
    with load(tmp_path, VISION, batch=4) as p:
        siglip_batches, proj_batches = batch_sizes(model(p, "siglip")), batch_sizes(model(p, "proj"))
        outs = run_all(p, [{"image": image(h, w, i)} for i, (h, w) in enumerate(sizes)])
        assert siglip_batches == [4] and proj_batches == [4]  # resized to 32x32: one forward each
        linear = model(p, "proj")
        for (h, w), out in zip(sizes, outs):
            for name, value in out.items():
                assert_type(value, p.plan.output_types[name])
            assert out["siglip"].shape == (16, 32)
            assert out["fused"].shape == (16 + 5, 32)  # SigLIP's 16 patches, then ViT's CLS + 4
            assert torch.equal(out["fused"][:16], out["siglip"])
            assert torch.allclose(out["projected"], linear(out["siglip"]), atol=1e-5)
            assert out["patches"].shape == ((h // 16) * (w // 16), 32)  # generic module: native size


MEDIA = f"""
pipeline media(sound: audio, words: text, clip: video) -> (heard: embedding, read: embedding, seen: embedding) {{
  ear = encoder(sound) {{ model: "transformers:Qwen2AudioEncoder", weights: random, hidden_size: 32,
    config: {{num_mel_bins: 16, d_model: 32, encoder_layers: 1, encoder_attention_heads: 2,
             encoder_ffn_dim: 64, max_source_positions: 50}} }}
  reader = encoder(words) {{ model: "transformers:BertModel", weights: random, max_tokens: 8,
    config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
             vocab_size: 300}} }}
  eye = encoder(clip) {SIGLIP}
  return heard = ear.embeds, read = reader.embeds, seen = eye.embeds
}}
"""


def test_audio_text_and_video_encoders(tmp_path: Path) -> None:
    tone = np.sin(np.linspace(0, 2000, 12000)).astype(np.float32)
    with load(tmp_path, MEDIA) as p:
        out = p.run({"sound": Audio(tone, 24000), "words": "héllo", "clip": torch.stack([image(24, 24, 0)] * 3)})
        for name, value in out.items():
            assert_type(value, p.plan.output_types[name])
        assert out["heard"].shape == (25, 32)  # a 1 s window: 100 mel frames, 25 tokens
        assert out["read"].shape == (6, 32)  # 6 UTF-8 bytes
        assert out["seen"].shape == (3 * 16, 32)  # 3 frames' tokens, concatenated
        short = p.run({"sound": Audio(tone[:100], 24000), "words": "a long sentence, cut",
                       "clip": image(8, 8, 1)[None]})
        assert short["heard"].shape == (25, 32) and short["read"].shape == (8, 32)  # max_tokens: 8


UNET = """model: "diffusers:UNet2DConditionModel", weights: random, height: 32, width: 32, latent_channels: 4, downsample: 8,
    config: {sample_size: 4, in_channels: 4, out_channels: 4, block_out_channels: [32, 64],
             down_block_types: [CrossAttnDownBlock2D, DownBlock2D],
             up_block_types: [UpBlock2D, CrossAttnUpBlock2D],
             layers_per_block: 1, attention_head_dim: 8, cross_attention_dim: 32}"""

TEXT_TO_IMAGE = f"""
pipeline t2i(prompt: text) -> (image: image, guided: latent, plain: latent) {{
  text = custom(prompt) {{ model: "py:media_stages:TextEmbedding", width: 32, outputs: {{embeds: embedding}} }}
  unet = diffusion(text.embeds) {{ {UNET}, steps: 3, guidance_scale: 4.0, cfg_branches: 2, scheduler: ddim }}
  plain = diffusion(text.embeds) {{ {UNET}, steps: 3, scheduler: ddim }}
  vae = decoder(unet.latents) {{
    model: "diffusers:AutoencoderKL", weights: random, modality: image, upsample: 8,
    config: {{in_channels: 3, out_channels: 3, latent_channels: 4, block_out_channels: [32, 32, 32, 32],
             down_block_types: [DownEncoderBlock2D, DownEncoderBlock2D, DownEncoderBlock2D, DownEncoderBlock2D],
             up_block_types: [UpDecoderBlock2D, UpDecoderBlock2D, UpDecoderBlock2D, UpDecoderBlock2D],
             layers_per_block: 1, sample_size: 32}} }}
  return image = vae.image, guided = unet.latents, plain = plain.latents
}}
"""


def test_text_to_image_batches_guides_and_reproduces(tmp_path: Path) -> None:
    prompts = [{"prompt": f"a red cat {i}"} for i in range(4)]
    with load(tmp_path, TEXT_TO_IMAGE, batch=4) as p:
        guided, plain = batch_sizes(model(p, "unet")), batch_sizes(model(p, "plain"))
        vae = batch_sizes(model(p, "vae").decoder)  # the VAE runs decode(), not forward()
        first = run_all(p, prompts)
        assert guided == [8] * 3  # 4 requests x (conditional + unconditional), every step
        assert plain == [4] * 3 and vae == [4]
        again = run_all(p, prompts)
    for out in first:
        for name, value in out.items():
            assert_type(value, p.plan.output_types[name])
        assert not torch.allclose(out["guided"], out["plain"])  # guidance changed the result
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))
    assert not torch.equal(first[0]["guided"], first[1]["guided"])  # different prompts, different noise
    with load(tmp_path, TEXT_TO_IMAGE) as fresh:  # a fresh load, alone in its batch
        alone = fresh.run(prompts[0])
    assert torch.allclose(alone["guided"], first[0]["guided"], atol=1e-4)
    assert (alone["image"].int() - first[0]["image"].int()).abs().max() <= 1


DIT = """model: "diffusers:SD3Transformer2DModel", weights: random, height: 32, width: 32, latent_channels: 4, downsample: 8,
    config: {sample_size: 4, patch_size: 2, in_channels: 4, out_channels: 4, num_layers: 1,
             attention_head_dim: 8, num_attention_heads: 2, joint_attention_dim: 32,
             caption_projection_dim: 16, pooled_projection_dim: 32, pos_embed_max_size: 8}"""


@pytest.mark.parametrize("denoiser, scheduler", [(UNET, "euler"), (UNET, "dpm"), (DIT, "flow_match_euler")])
def test_schedulers_and_text_conditioning(tmp_path: Path, denoiser: str, scheduler: str) -> None:
    text = f"""
pipeline gen(prompt: text) -> (latents: latent) {{
  d = diffusion(prompt) {{ {denoiser}, steps: 2, guidance_scale: 2.0, scheduler: {scheduler} }}
  return latents = d.latents
}}
"""
    with load(tmp_path, text) as p:
        a, b = p.run({"prompt": "a boat"}), p.run({"prompt": "a boat"})
    assert_type(a["latents"], p.plan.output_types["latents"])
    assert torch.isfinite(a["latents"]).all() and torch.equal(a["latents"], b["latents"])


def test_decoder_audio_and_video_from_generic_modules(tmp_path: Path) -> None:
    text = """
pipeline dec(z: latent<f32, [8, 40]>, v: latent<f32, [4, 2, 6, 6]>) -> (sound: audio, movie: video) {
  voc = decoder(z) { model: "py:torch.nn:Conv1d", modality: audio, sample_rate: 16000,
                     config: {in_channels: 8, out_channels: 1, kernel_size: 1} }
  vid = decoder(v) { model: "py:torch.nn:Conv3d", modality: video,
                     config: {in_channels: 4, out_channels: 3, kernel_size: 1} }
  return sound = voc.audio, movie = vid.video
}
"""
    with load(tmp_path, text) as p:
        out = p.run({"z": torch.randn(8, 40), "v": torch.randn(4, 2, 6, 6)})
    for name, value in out.items():
        assert_type(value, p.plan.output_types[name])
    assert out["sound"].sample_rate == 16000 and out["sound"].samples.shape == (40,)
    assert out["movie"].shape == (2, 3, 6, 6)


MOE = """
pipeline mix(x: embedding<f32, [?, 32]>) -> (y: embedding, p: embedding) {
  moe = moe(x) { model: "py:omnigraph.runtime.executors.moe:MoeBlock", num_experts: 4, top_k: 2,
                 shared_experts: 1, null_experts: 2, hidden_size: 32, seed: 3, config: {intermediate_size: 48} }
  topp = moe(x) { model: "py:omnigraph.runtime.executors.moe:MoeBlock", num_experts: 6, top_k: 4, routing: top_p,
                  hidden_size: 32, config: {top_p: 0.5} }
  return y = moe.y, p = topp.y
}
"""


def reference_moe(block: Any, x: Any) -> Any:
    """Token by token: the routed real experts, weighted, plus the shared expert."""
    weights = block.gates(x)
    rows = []
    for t in range(x.shape[0]):
        row = block.shared(x[t]) if block.shared is not None else torch.zeros_like(x[t])
        for e in weights[t].nonzero().flatten().tolist():
            if e < block.num_experts:  # a null expert adds nothing
                row = row + weights[t, e] * block.experts[e](x[t])
        rows.append(row)
    return torch.stack(rows)


def test_moe_routes_top_k_and_null_experts_add_nothing(tmp_path: Path) -> None:
    xs = [torch.randn(n, 32, generator=torch.Generator().manual_seed(n)) for n in (3, 5, 7, 9)]
    with load(tmp_path, MOE, batch=4) as p:
        block, topp = model(p, "moe"), model(p, "topp")
        shapes: list[tuple[int, ...]] = []
        block.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
        outs = run_all(p, [{"x": x} for x in xs])
        assert shapes == [(1, 24, 32)]  # all 24 tokens of the 4 requests in one forward
        with torch.inference_mode():
            x = torch.cat(xs)
            chosen = (block.gates(x) > 0).sum(-1)
            assert (chosen == 2).all()  # top_k experts per token, null slots included
            assert (block.gates(x)[:, 4:] > 0).any()  # some tokens did pick a null expert
            kept = topp.gates(x) > 0
            assert ((kept.sum(-1) >= 1) & (kept.sum(-1) <= 4)).all() and kept.sum(-1).unique().numel() > 1
            for xi, out in zip(xs, outs):
                assert_type(out["y"], p.plan.output_types["y"])
                assert torch.allclose(out["y"], reference_moe(block, xi), atol=1e-5)
                assert torch.allclose(out["p"], reference_moe(topp, xi), atol=1e-5)
            # Route every token to the null slots alone: only the shared expert is left.
            block.router.weight[:4] = 0
            block.router.weight[4:] = 1
        positive = [x.abs() + 0.1 for x in xs]
        for x, out in zip(positive, run_all(p, [{"x": x} for x in positive])):
            with torch.inference_mode():
                assert torch.allclose(out["y"], block.shared(x), atol=1e-6)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_projector_weights_from_a_file(tmp_path: Path, fmt: str) -> None:
    linear = torch.nn.Linear(32, 16)
    path = tmp_path / f"proj.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(linear.state_dict(), str(path))
    else:
        torch.save(linear.state_dict(), path)
    text = f"""
pipeline w(x: embedding<f32, [?, 32]>) -> (y: embedding) {{
  proj = projector(x) {{ model: "{fmt}:{path}", in_dim: 32, out_dim: 16, config: {{arch: "py:torch.nn:Linear"}} }}
  return y = proj.embeds
}}
"""
    x = torch.randn(5, 32)
    with load(tmp_path, text) as p:
        y = p.run({"x": x})["y"]
    with torch.inference_mode():
        assert torch.allclose(y, linear(x), atol=1e-6)


def test_bad_requests_fail_alone_and_bad_configs_fail_at_load(tmp_path: Path) -> None:
    with load(tmp_path, MOE, batch=4) as p:
        handles = [p.submit({"x": torch.randn(2, 32 if i != 2 else 31)}) for i in range(4)]
        for i, h in enumerate(handles):
            if i == 2:
                with pytest.raises(RequestFailed, match=r"stage '(moe|topp)' failed.*expected \[seq, 32\]"):
                    h.result(timeout=60)
            else:
                assert h.result(timeout=60)["y"].shape == (2, 32)
    bad = TEXT_TO_IMAGE.replace("scheduler: ddim", "scheduler: heun")
    with pytest.raises(StageLoadError, match="stage 'unet'.*unknown scheduler 'heun'"):
        load(tmp_path, bad)


# -- the tiny examples -------------------------------------------------------------------
def without_llms(plan: RuntimePlan) -> RuntimePlan:
    """The plan minus its ar_llm stages: what they emit becomes inputs, what they read outputs."""
    llms = {n.name: n for n in plan.nodes if isinstance(n, StageNode) and n.kind == "ar_llm"}
    producers = {n.name: n for n in plan.nodes if isinstance(n, StageNode)}
    nodes, inputs, outputs = [], {}, {k: v for k, v in plan.outputs.items() if v.split(".")[0] not in llms}
    for node in plan.nodes:
        assert isinstance(node, StageNode)  # the tiny examples have no routes or loops
        reads = []
        for b in node.inputs:
            stage, _, port = b.source.partition(".")
            if node.name in llms:
                if port and stage not in llms:
                    outputs[f"{stage}_{port}"] = b.source
                continue
            if stage in llms:
                inputs[f"{stage}_{port}"] = llms[stage].outputs[port]
                b = b.model_copy(update={"source": f"{stage}_{port}"})
            elif not port:
                inputs[stage] = plan.inputs[stage]
            reads.append(b)
        if node.name not in llms:
            nodes.append(node.model_copy(update={"inputs": reads}))
    types = {k: plan.output_types.get(k) or producers[v.split(".")[0]].outputs[v.split(".")[1]]
             for k, v in outputs.items()}
    return plan.model_copy(update={"nodes": nodes, "inputs": inputs, "outputs": outputs, "output_types": types})


TINY_INPUTS = {
    "vision_chat_tiny": {"image": image(40, 30, 0)},
    "text_to_image_tiny": {"text_encoder_hidden": torch.randn(7, 32)},
    "moe_tiny": {"image": image(32, 32, 1), "audio": Audio(np.zeros(8000, np.float32), 16000)},
}


@pytest.mark.parametrize("name", sorted(TINY_INPUTS))
def test_tiny_example_checks_and_runs_without_its_llms(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from omnigraph.cli import main
    from omnigraph.frontend import load_spec

    yaml_path, dsl_path = TINY / f"{name}.yaml", TINY / f"{name}.og"
    assert load_spec(yaml_path).spec == load_spec(dsl_path).spec
    for path in (yaml_path, dsl_path):
        assert main(["check", str(path)]) == 0, capsys.readouterr()
    plan = without_llms(omnigraph.compile_plan(yaml_path))
    with omnigraph.load(plan) as p:
        out = p.run(TINY_INPUTS[name], timeout=120)
    assert set(out) == set(plan.outputs)
    for key, value in out.items():
        assert_type(value, plan.output_types[key])
