"""Tiny checkpoint folders written with the libraries' own `save_pretrained`, for the tests.

Each model is built exactly as a `weights: random` stage builds it (the same builder, config
and seed), so a spec that loads the folder must give the same outputs as one that builds the
module from its config: the folder holds the module it was saved from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from omnigraph.runtime.loaders import build_from_config

SEED = 0

LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 256,
         "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
QWEN2_MOE = {"hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
             "shared_expert_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320,
             "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
QWEN2_5_OMNI_THINKER = {  # the thinker with its audio and vision towers; mrope sized to head_dim 8
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 256,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}},
    "audio_config": {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
                     "num_mel_bins": 80, "output_dim": 32, "max_source_positions": 50, "n_window": 50},
    "vision_config": {"hidden_size": 32, "depth": 1, "num_heads": 4, "intermediate_size": 64, "out_hidden_size": 32,
                      "fullatt_block_indexes": [0]},
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
HIFIGAN = {"model_in_dim": 16, "upsample_initial_channel": 32, "upsample_rates": [4, 4],
           "upsample_kernel_sizes": [8, 8], "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]],
           "sampling_rate": 16000}
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}
WHISPER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
           "num_mel_bins": 80, "max_source_positions": 50, "decoder_layers": 1, "decoder_attention_heads": 4,
           "decoder_ffn_dim": 64, "vocab_size": 320}
QWEN2_AUDIO = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
               "num_mel_bins": 80, "max_source_positions": 50}
UNET = {"sample_size": 4, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
        "attention_head_dim": 8, "cross_attention_dim": 32}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 32, 32, 32],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "layers_per_block": 1, "sample_size": 32, "scaling_factor": 0.18215}
DIT = {"sample_size": 4, "in_channels": 4, "out_channels": 4, "patch_size": 2, "num_layers": 2,
       "num_attention_heads": 2, "attention_head_dim": 16, "cross_attention_dim": 32, "caption_channels": 32}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build(library: str, cls: str, config: dict[str, Any], seed: int = SEED) -> torch.nn.Module:
    """The module a `weights: random` stage builds from this config and seed."""
    with torch.random.fork_rng(devices=[]):
        return build_from_config(library, cls, dict(config), seed)


def save_tokenizer(folder: Path, vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained here (no hub), with a chat template, saved into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The capital of France is Paris.", "What is in this picture?", "a red fox in the snow",
            "Say hello to the assistant.", "omnigraph compiles pipelines of models."] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def save_llm(folder: Path, cls: str = "LlamaForCausalLM", config: dict[str, Any] | None = None,
             max_shard_size: str | None = None) -> torch.nn.Module:
    """A causal LM checkpoint with its tokenizer and generation config."""
    model = build("transformers", cls, config or LLAMA)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), **kwargs)
    save_tokenizer(folder)
    return model


def save_pipeline(folder: Path, denoiser: str = "UNet2DConditionModel", config: dict[str, Any] | None = None,
                  denoiser_dir: str = "unet", vae_config: dict[str, Any] | None = None,
                  scheduler: str = "ddim") -> tuple[torch.nn.Module, torch.nn.Module]:
    """A diffusers pipeline folder: the denoiser, a VAE, a scheduler (its default config, as
    a spec's `scheduler:` builds it) and model_index.json."""
    import diffusers

    from omnigraph.runtime.executors.diffusion import SCHEDULERS

    net = build("diffusers", denoiser, config or UNET)
    vae = build("diffusers", "AutoencoderKL", vae_config or VAE)
    net.save_pretrained(str(folder / denoiser_dir))
    vae.save_pretrained(str(folder / "vae"))
    getattr(diffusers, SCHEDULERS[scheduler])().save_pretrained(str(folder / "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             denoiser_dir: ["diffusers", denoiser], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", SCHEDULERS[scheduler]]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return net, vae


def save_encoder(folder: Path, cls: str, config: dict[str, Any], processor: Any = None) -> torch.nn.Module:
    model = build("transformers", cls, config)
    model.save_pretrained(str(folder))
    if processor is not None:
        processor.save_pretrained(str(folder))
    return model
