"""Checkpoint folders (transformers / diffusers), written here with save_pretrained, loaded
through specs: the same outputs as the module they were saved from, located errors for broken
ones, planning from headers alone, and bundles that carry them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

import checkpoint_models as cm  # noqa: E402
import omnigraph  # noqa: E402
from omnigraph.cli import main  # noqa: E402
from omnigraph.runtime.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from omnigraph.runtime.values import Audio  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, (3, 40, 48), dtype=np.uint8)
SOUND = Audio((np.sin(np.linspace(0, 900, 16_000)) * 0.3).astype(np.float32), 16_000)
SD3 = {"sample_size": 4, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
       "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 32,
       "caption_projection_dim": 32, "pooled_projection_dim": 32, "pos_embed_max_size": 8}
VAE16 = {**cm.VAE, "latent_channels": 16}


@pytest.fixture(scope="module")
def ck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every checkpoint the tests load, written once."""
    from transformers import SiglipImageProcessor, WhisperFeatureExtractor

    root = tmp_path_factory.mktemp("checkpoints")
    cm.save_llm(root / "llama", max_shard_size="40KB")
    cm.save_llm(root / "moe", "Qwen2MoeForCausalLM", cm.QWEN2_MOE)
    cm.save_llm(root / "thinker", "Qwen2_5OmniThinkerForConditionalGeneration", cm.QWEN2_5_OMNI_THINKER)
    cm.save_encoder(root / "hifigan", "SpeechT5HifiGan", cm.HIFIGAN)
    cm.save_encoder(root / "siglip", "SiglipVisionModel", cm.SIGLIP,
                    SiglipImageProcessor(size={"height": 32, "width": 32}))
    cm.save_encoder(root / "whisper", "whisper.WhisperEncoder", cm.WHISPER,
                    WhisperFeatureExtractor(feature_size=80, chunk_length=1))
    cm.save_encoder(root / "qwen2_audio", "Qwen2AudioEncoder", cm.QWEN2_AUDIO)
    cm.save_pipeline(root / "sd")
    cm.save_pipeline(root / "sd3", "SD3Transformer2DModel", SD3, "transformer", VAE16, scheduler="flow_match_euler")
    return root


def spec(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pipeline": name, **doc}, sort_keys=False))
    return path


def run(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """Unplanned (f32, like the modules the folders were saved from, and the bundles)."""
    with omnigraph.load(path, target=None) as pipe:
        return pipe.run(inputs)


def llm_doc(model: str, **params: Any) -> dict[str, Any]:
    return {"inputs": {"prompt": "text"},
            "outputs": {"reply": "thinker.text", "hidden": "thinker.hidden"},
            "stages": {"thinker": {"kind": "ar_llm", "model": model, "inputs": ["prompt"],
                                   "params": {"max_new_tokens": 6, **params}}}}


# outputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder, cls, config", [
    ("llama", "LlamaForCausalLM", cm.LLAMA),
    ("moe", "Qwen2MoeForCausalLM", cm.QWEN2_MOE),
    ("thinker", "Qwen2_5OmniThinkerForConditionalGeneration", cm.QWEN2_5_OMNI_THINKER),
])
def test_llm_folder_answers_as_the_module_it_was_saved_from(ck: Path, folder: str, cls: str,
                                                          config: dict[str, Any]) -> None:
    prompt = {"prompt": "The capital of France is"}
    loaded = run(spec(ck, f"{folder}_ckpt", llm_doc(f"transformers:./{folder}")), prompt)
    built = run(spec(ck, f"{folder}_built", llm_doc(f"transformers:{cls}", weights="random",
                                                    tokenizer=f"./{folder}", config=config)), prompt)
    assert loaded["reply"] == built["reply"]
    assert torch.allclose(loaded["hidden"], built["hidden"], atol=1e-5)
    if "Thinker" in cls:  # transformers' generate() on a thinker wants its multimodal token ids
        return
    # and as transformers itself generates from the folder, greedy, with its chat template
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(ck / folder))
    model = getattr(transformers, cls).from_pretrained(str(ck / folder))
    ids = tok.apply_chat_template([{"role": "user", "content": prompt["prompt"]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)
    assert loaded["reply"] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_sharded_checkpoint_is_read_shard_by_shard(ck: Path) -> None:
    found = open_checkpoint(f"transformers:{ck / 'llama'}")
    assert len(found.weights) == 3 and found.class_name == "LlamaForCausalLM"
    assert found.params == sum(p.numel() for p in cm.build("transformers", "LlamaForCausalLM", cm.LLAMA)
                               .state_dict().values()) - cm.LLAMA["vocab_size"] * cm.LLAMA["hidden_size"]
    assert found.dtype == "f32"  # tied embeddings are stored once


def test_class_named_in_the_reference_wins(ck: Path) -> None:
    prompt = {"prompt": "hello"}
    named = run(spec(ck, "named", llm_doc("transformers:LlamaForCausalLM@./llama")), prompt)
    read = run(spec(ck, "read", llm_doc("transformers:./llama")), prompt)
    assert torch.allclose(named["hidden"], read["hidden"], atol=1e-5)


def encoder_doc(model: str, modality: str, **params: Any) -> dict[str, Any]:
    return {"inputs": {"x": modality}, "outputs": {"emb": "enc.embeds"},
            "stages": {"enc": {"kind": "encoder", "model": model, "inputs": ["x"], "params": params}}}


@pytest.mark.parametrize("folder, cls, config, modality, value", [
    ("siglip", "SiglipVisionModel", cm.SIGLIP, "image", IMAGE),
    ("whisper", "whisper.WhisperEncoder", cm.WHISPER, "audio", SOUND),
    ("qwen2_audio", "Qwen2AudioEncoder", cm.QWEN2_AUDIO, "audio", SOUND),
])
def test_encoder_folder_embeds_as_the_module_it_was_saved_from(ck: Path, folder: str, cls: str,
                                                             config: dict[str, Any], modality: str,
                                                             value: Any) -> None:
    loaded = run(spec(ck, f"{folder}_ckpt", encoder_doc(f"transformers:./{folder}", modality)), {"x": value})
    built = run(spec(ck, f"{folder}_built", encoder_doc(f"transformers:{cls}", modality, weights="random",
                                                        config=config)), {"x": value})
    assert loaded["emb"].shape == built["emb"].shape and loaded["emb"].shape[-1] == 32
    assert torch.allclose(loaded["emb"], built["emb"], atol=1e-5)


def test_vocoder_folder_speaks_as_the_module_it_was_saved_from(ck: Path) -> None:
    mel = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))

    def doc(model: str, **params: Any) -> dict[str, Any]:
        return {"inputs": {"mel": "latent"}, "outputs": {"audio": "voc.audio"},
                "stages": {"voc": {"kind": "vocoder", "model": model, "inputs": ["mel"],
                                   "params": {"sample_rate": 16000, **params}}}}

    loaded = run(spec(ck, "voc_ckpt", doc("transformers:./hifigan")), {"mel": mel})["audio"]
    built = run(spec(ck, "voc_built", doc("transformers:SpeechT5HifiGan", weights="random", config=cm.HIFIGAN)),
                {"mel": mel})["audio"]
    assert loaded.sample_rate == 16000 and len(loaded.samples) == 12 * 16  # upsampled 4 x 4
    assert np.allclose(loaded.samples, built.samples, atol=1e-6)


def test_siglip_folder_uses_its_own_image_processor(ck: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionModel

    emb = run(spec(ck, "siglip_direct", encoder_doc("transformers:./siglip", "image")), {"x": IMAGE})["emb"]
    model = SiglipVisionModel.from_pretrained(str(ck / "siglip")).eval()
    pixels = SiglipImageProcessor.from_pretrained(str(ck / "siglip"))(IMAGE, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = model(pixel_values=pixels).last_hidden_state[0]
    assert torch.allclose(emb, want, atol=1e-5)


def image_doc(llm: str, denoiser: str, vae: str, llm_params: dict[str, Any], net: dict[str, Any],
              dec: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": {"prompt": "text"}, "outputs": {"image": "vae.image"},
            "stages": {
                "text_encoder": {"kind": "ar_llm", "model": llm, "inputs": ["prompt"],
                                 "params": {"max_new_tokens": 1, "chat": False, **llm_params}},
                "denoiser": {"kind": "diffusion", "model": denoiser, "inputs": ["text_encoder.hidden"],
                             "params": {"steps": 3, "guidance_scale": 4.0, "height": 32, "width": 32,
                                        "downsample": 8, **net}},
                "vae": {"kind": "decoder", "model": vae, "inputs": ["denoiser.latents"],
                        "params": {"modality": "image", "upsample": 8, **dec}}}}


@pytest.mark.parametrize("pipe, cls, config, vae, channels, scheduler", [
    ("sd", "UNet2DConditionModel", cm.UNET, cm.VAE, 4, "ddim"),
    ("sd3", "SD3Transformer2DModel", SD3, VAE16, 16, "flow_match_euler"),
])
def test_pipeline_folder_draws_as_the_modules_it_was_saved_from(ck: Path, pipe: str, cls: str,
                                                              config: dict[str, Any], vae: dict[str, Any],
                                                              channels: int, scheduler: str) -> None:
    prompt = {"prompt": "a red fox"}
    loaded = run(spec(ck, f"{pipe}_ckpt", image_doc(
        "transformers:./llama", f"diffusers:./{pipe}", f"diffusers:./{pipe}", {},
        {"latent_channels": channels}, {})), prompt)  # the folder's own scheduler
    built = run(spec(ck, f"{pipe}_built", image_doc(
        "transformers:LlamaForCausalLM", f"diffusers:{cls}", "diffusers:AutoencoderKL",
        {"weights": "random", "tokenizer": "./llama", "config": cm.LLAMA},
        {"weights": "random", "config": config, "latent_channels": channels, "scheduler": scheduler},
        {"weights": "random", "config": vae})), prompt)
    assert loaded["image"].shape == (3, 32, 32) and loaded["image"].dtype == torch.uint8
    assert torch.equal(loaded["image"], built["image"])


def test_component_folder_loads_alone(ck: Path) -> None:
    component = open_checkpoint(f"diffusers:{ck / 'sd' / 'vae'}")
    whole = open_checkpoint(f"diffusers:{ck / 'sd'}", ("vae",))
    assert component.path == whole.path and component.class_name == "AutoencoderKL"
    assert whole.root == ck / "sd" and component.root == component.path


def test_pipeline_scheduler_comes_with_its_config(ck: Path, tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    from omnigraph.runtime.executors.diffusion import pipeline_scheduler
    from omnigraph.runtime.plan import StageNode

    shutil.copytree(ck / "sd", tmp_path / "sd")
    DDIMScheduler(beta_schedule="scaled_linear", num_train_timesteps=500).save_pretrained(str(tmp_path / "sd" / "scheduler"))
    node = StageNode.model_construct(name="d", kind="diffusion", model=f"diffusers:{tmp_path / 'sd'}")
    made = pipeline_scheduler(node)()
    assert type(made).__name__ == "DDIMScheduler" and made.config.beta_schedule == "scaled_linear"
    assert made.config.num_train_timesteps == 500


# errors -----------------------------------------------------------------------------------------
def broken(ck: Path, tmp_path: Path, name: str = "llama") -> Path:
    return Path(shutil.copytree(ck / name, tmp_path / name))


def check_fails(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path.name}:" in err and "Traceback" not in err, err  # located in the spec
    return " ".join(err.split())


def break_shard(folder: Path) -> str:
    shard = folder / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    return "model-00002-of-00003.safetensors: truncated"


def drop_index_entry(folder: Path) -> str:
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"].pop(sorted(doc["weight_map"])[0])
    index.write_text(json.dumps(doc))
    return "is not in the index (its tensors would be missing)"


def name_unknown_class(folder: Path) -> str:
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "architectures": ["LlamaForTeleportation"]}))
    return "transformers has no model class 'LlamaForTeleportation'"


def only_pickles(folder: Path) -> str:
    model = cm.build("transformers", "LlamaForCausalLM", cm.LLAMA)
    for f in [*folder.glob("*.safetensors"), *folder.glob("*.index.json")]:
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a legacy checkpoint
    return "only pickled weights (pytorch_model.bin)"


def index_names_missing_shard(folder: Path) -> str:
    (folder / "model-00003-of-00003.safetensors").unlink()
    return "names shard 'model-00003-of-00003.safetensors', which is not in"


def not_a_header(folder: Path) -> str:
    (folder / "model-00001-of-00003.safetensors").write_bytes(b"\xff" * 64)
    return "model-00001-of-00003.safetensors: not a safetensors file"


@pytest.mark.parametrize("damage", [break_shard, drop_index_entry, name_unknown_class, only_pickles,
                                    index_names_missing_shard, not_a_header])
def test_broken_checkpoint_is_a_located_error(ck: Path, tmp_path: Path, damage: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = broken(ck, tmp_path)
    message = damage(folder)
    err = check_fails(spec(tmp_path, "broken", llm_doc("transformers:./llama")), capsys)
    assert message in err and "thinker" in err


def test_pickles_load_only_when_allowed(ck: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = broken(ck, tmp_path)
    only_pickles(folder)
    err = check_fails(spec(tmp_path, "pickled", llm_doc("transformers:./llama")), capsys)
    assert "allow_pickle" in err
    prompt = {"prompt": "hello"}
    allowed = run(spec(tmp_path, "allowed", llm_doc("transformers:./llama", allow_pickle=True)), prompt)
    safe = run(spec(ck, "safe", llm_doc("transformers:./llama")), prompt)
    assert torch.allclose(allowed["hidden"], safe["hidden"], atol=1e-5)


def test_checkpoint_without_weights_random_and_class_without_weights(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    err = check_fails(spec(tmp_path, "nofolder", llm_doc("transformers:./nowhere")), capsys)
    assert "no checkpoint folder './nowhere'" in err and "looked in" in err
    err = check_fails(spec(tmp_path, "noweights", llm_doc("transformers:LlamaForCausalLM", config=cm.LLAMA)), capsys)
    assert "weights: random" in err


def test_hub_id_resolves_from_the_local_cache_only(ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = check_fails(spec(tmp_path, "hub", llm_doc("transformers:tiny-org/tiny-llama")), capsys)
    assert "no checkpoint for 'tiny-org/tiny-llama'" in err and "models--tiny-org--tiny-llama" in err
    assert "huggingface-cli download tiny-org/tiny-llama" in err
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    shutil.copytree(ck / "llama", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert main(["check", str(tmp_path / "hub.yaml")]) == 0
    out = run(tmp_path / "hub.yaml", {"prompt": "hello"})
    local = run(spec(ck, "local", llm_doc("transformers:./llama")), {"prompt": "hello"})
    assert torch.allclose(out["hidden"], local["hidden"], atol=1e-5)


# planning ---------------------------------------------------------------------------------------
def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_planning_a_checkpoint_reads_no_tensor_data(ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import safetensors
    import safetensors.torch
    import transformers

    big = dict(cm.LLAMA, vocab_size=32_000)  # 4 MB of embeddings in one shard
    cm.build("transformers", "LlamaForCausalLM", big).save_pretrained(str(tmp_path / "big"))
    data = sum(p.stat().st_size for p in (tmp_path / "big").glob("*.safetensors"))
    path = spec(tmp_path, "big", llm_doc("transformers:./big"))
    assert main(["plan", str(path), "--target", "cpu-local"]) == 0  # imports everything once
    capsys.readouterr()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("planning loaded tensors")

    for owner, name in [(safetensors, "safe_open"), (safetensors.torch, "load_file"), (torch, "load"),
                        (transformers.PreTrainedModel, "from_pretrained")]:
        monkeypatch.setattr(owner, name, refuse)
    before = _rchar()
    assert main(["plan", str(path), "--target", "cpu-local", "--json"]) == 0
    read = _rchar() - before
    assert read < data / 4, f"planning read {read} bytes of a {data}-byte checkpoint"
    report = json.loads(capsys.readouterr().out)
    stage = next(s for s in report["stages"] if s["stage"] == "thinker")
    assert stage["params"] == open_checkpoint(f"transformers:{tmp_path / 'big'}").params
    assert stage["counted"] == "checkpoint"


# bundles ----------------------------------------------------------------------------------------
def test_bundle_carries_the_folders_and_runs_alone(ck: Path, tmp_path: Path) -> None:
    from omnigraph.runtime.bundle import open_bundle
    from runtime_only import run_runtime_only

    path = spec(ck, "sd_bundle", image_doc("transformers:./llama", "diffusers:./sd", "diffusers:./sd", {},
                                           {"latent_channels": 4}, {}))
    assert main(["compile", str(path), "--emit", "bundle", "-o", str(tmp_path / "b")]) == 0
    with open_bundle(tmp_path / "b") as bundle:
        forms = {s.name: (s.form, s.random_weights) for s in bundle.manifest.stages}
        assert forms == {"text_encoder": ("checkpoint", False), "denoiser": ("checkpoint", False),
                         "vae": ("checkpoint", False)}
        files = set(bundle.manifest.files)
        assert {"programs/text_encoder/model-00001-of-00003.safetensors",
                "programs/text_encoder/model.safetensors.index.json", "programs/text_encoder/tokenizer.json",
                "programs/denoiser/unet/diffusion_pytorch_model.safetensors",
                "programs/denoiser/scheduler/scheduler_config.json", "programs/denoiser/model_index.json",
                "programs/vae/vae/config.json"} <= files
    want = run(path, {"prompt": "a red fox"})["image"]
    argv = ["-m", "omnigraph.runtime", str(tmp_path / "b"), "-i", "prompt=a red fox", "-o", str(tmp_path / "out")]
    proc = run_runtime_only(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "image.png")), want.permute(1, 2, 0).numpy())


def test_llm_and_encoder_bundles_answer_as_their_folders(ck: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from omnigraph.runtime.bundle import open_bundle
    from runtime_only import run_runtime_only

    llm = spec(ck, "llm_bundle", llm_doc("transformers:./llama"))
    assert main(["compile", str(llm), "--emit", "bundle", "-o", str(tmp_path / "llm")]) == 0
    with open_bundle(tmp_path / "llm") as bundle:
        thinker = bundle.plan.stages()[0]
        assert thinker.program is not None and thinker.program.facts.get("chat_frame")  # no jinja2 needed
    argv = ["-m", "omnigraph.runtime", str(tmp_path / "llm"), "-i", "prompt=hello", "-o", str(tmp_path / "out1")]
    proc = run_runtime_only(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out1" / "reply.txt").read_text() == run(llm, {"prompt": "hello"})["reply"]

    enc = spec(ck, "enc_bundle", encoder_doc("transformers:./siglip", "image"))
    assert main(["compile", str(enc), "--emit", "bundle", "-o", str(tmp_path / "enc")]) == 0
    with open_bundle(tmp_path / "enc") as bundle:
        assert "programs/enc/preprocessor_config.json" in bundle.manifest.files
    from PIL import Image

    Image.fromarray(IMAGE.transpose(1, 2, 0)).save(tmp_path / "in.png")
    argv = ["-m", "omnigraph.runtime", str(tmp_path / "enc"), "-i", f"x=@{tmp_path / 'in.png'}",
            "-o", str(tmp_path / "out2")]
    proc = run_runtime_only(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = next(iter(load_file(str(tmp_path / "out2" / "emb.safetensors")).values()))
    assert torch.allclose(got, run(enc, {"x": IMAGE})["emb"], atol=1e-5)
