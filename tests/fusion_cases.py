"""Modules the fusion tests (and benchmarks/fusion_kernels.py) capture, fuse and run.

Each case is a real architecture's block or one fusion pattern from it, at a size the
Triton interpreter runs in well under a second (`scale` makes it bigger for a GPU),
with the number of kernels fusion must turn it into.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

AUTO = Dim.AUTO


@dataclass
class Case:
    name: str
    build: Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], tuple[Any, ...]]]  # scale -> module, args, dims
    kernels: int  # what fusion must make of it
    checks: str = ""  # FileCheck lines over the kernel file, beyond the kernel count


def _seeded(module: nn.Module) -> nn.Module:
    """Norm weights away from 1 and biases away from 0, so a dropped affine term shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    return module.eval()


def _llama_config(hidden: int, attn: str = "sdpa") -> Any:
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1, vocab_size=128)
    cfg._attn_implementation = attn
    return cfg


# -- patterns -------------------------------------------------------------------------
class RmsNormResidual(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.norm = LlamaRMSNorm(hidden)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + residual
        return self.norm(h), h


class LayerNormResidual(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm(x + residual)


class Rotary(nn.Module):
    """Llama's rotary embedding applied to queries and keys (GQA: fewer key heads)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        return apply_rotary_pos_emb(q, k, cos, sin)


class MaskedSoftmax(nn.Module):
    def forward(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (scores * 0.125 + mask).softmax(-1)


class LinearEpilogue(nn.Module):
    """Bias, activation and residual after a matmul."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x)) + x


class AdaLNModulate(nn.Module):
    """Flux's single-block adaLN: LayerNorm(x) * (1 + scale) + shift, from silu(emb)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        from diffusers.models.normalization import AdaLayerNormZeroSingle

        self.norm = AdaLayerNormZeroSingle(hidden)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm(x, emb)


class MoeGate(nn.Module):
    """Qwen2-MoE's router: logits, softmax, top-k, renormalized."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        from transformers import Qwen2MoeConfig
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

        self.router = Qwen2MoeTopKRouter(Qwen2MoeConfig(hidden_size=hidden, num_experts=8, num_experts_per_tok=2,
                                                        norm_topk_prob=True))
        nn.init.normal_(self.router.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, scores, experts = self.router(x)
        return scores, experts


def _xr(hidden: int, s: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * s, 6 * s, hidden, generator=g), torch.randn(2 * s, 6 * s, hidden, generator=g)


def rmsnorm_residual(scale: int = 1):
    h = 32 * scale
    return _seeded(RmsNormResidual(h)), _xr(h, scale), ({0: AUTO, 1: AUTO},) * 2


def layernorm_residual(scale: int = 1):
    h = 32 * scale
    return _seeded(LayerNormResidual(h)), _xr(h, scale), ({0: AUTO, 1: AUTO},) * 2


def swiglu_mlp(scale: int = 1):
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = _llama_config(32 * scale)
    torch.manual_seed(0)
    return LlamaMLP(cfg).eval(), _xr(32 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


def gelu_mlp(scale: int = 1):
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMLP

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=32 * scale, intermediate_size=64 * scale)
    return _seeded(SiglipMLP(cfg)), _xr(32 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


def rotary(scale: int = 1):
    g = torch.Generator().manual_seed(2)
    b, s, d = 2 * scale, 6 * scale, 16
    args = (torch.randn(b, 4, s, d, generator=g), torch.randn(b, 2, s, d, generator=g),
            torch.randn(b, s, d, generator=g), torch.randn(b, s, d, generator=g))
    dyn = ({0: AUTO, 2: AUTO}, {0: AUTO, 2: AUTO}, {0: AUTO, 1: AUTO}, {0: AUTO, 1: AUTO})
    return Rotary(), args, dyn


def softmax(scale: int = 1):
    g = torch.Generator().manual_seed(3)
    s = 6 * scale
    scores = torch.randn(2 * scale, 4, s, s, generator=g)
    mask = torch.triu(torch.full((s, s), -1e4), 1)[None, None].expand(2 * scale, 1, s, s).contiguous()
    return MaskedSoftmax(), (scores, mask), ({0: AUTO, 2: AUTO, 3: AUTO}, {0: AUTO, 2: AUTO, 3: AUTO})


def linear_epilogue(scale: int = 1):
    torch.manual_seed(0)
    return _seeded(LinearEpilogue(32 * scale)), _xr(32 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


def adaln_modulate(scale: int = 1):
    torch.manual_seed(0)
    h = 32 * scale
    g = torch.Generator().manual_seed(4)
    return _seeded(AdaLNModulate(h)), (torch.randn(2 * scale, 6 * scale, h, generator=g),
                                        torch.randn(2 * scale, h, generator=g)), ({0: AUTO, 1: AUTO}, {0: AUTO})


def moe_gate(scale: int = 1):
    return MoeGate(32 * scale).eval(), _xr(32 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


# -- whole blocks of real architectures ---------------------------------------------------
class LlamaBlock(nn.Module):
    """A Llama decoder layer with its rotary embedding, as a prefill runs it."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        cfg = _llama_config(hidden)
        self.layer = LlamaDecoderLayer(cfg, 0)
        self.rope = LlamaRotaryEmbedding(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        out = self.layer(x, position_embeddings=self.rope(x, positions), attention_mask=None)
        return out[0] if isinstance(out, tuple) else out


class SiglipBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        cfg = SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2)
        cfg._attn_implementation = "sdpa"
        self.layer = SiglipEncoderLayer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out


class DitBlock(nn.Module):
    """PixArt's DiT block: adaLN-single modulation around attention and a GELU MLP."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock

        self.block = BasicTransformerBlock(hidden, 4, hidden // 4, norm_type="ada_norm_single",
                                           activation_fn="gelu-approximate")
        with torch.no_grad():
            self.block.scale_shift_table.normal_(generator=torch.Generator().manual_seed(5))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.block(x, timestep=t)


def llama_block(scale: int = 1):
    torch.manual_seed(0)
    return _seeded(LlamaBlock(64 * scale)), _xr(64 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


def siglip_block(scale: int = 1):
    torch.manual_seed(0)
    return _seeded(SiglipBlock(64 * scale)), _xr(64 * scale, scale)[:1], ({0: AUTO, 1: AUTO},)


def dit_block(scale: int = 1):
    torch.manual_seed(0)
    h = 64 * scale
    g = torch.Generator().manual_seed(6)
    return _seeded(DitBlock(h)), (torch.randn(2 * scale, 6 * scale, h, generator=g),
                                  torch.randn(2 * scale, 6 * h, generator=g)), ({0: AUTO, 1: AUTO}, {0: AUTO})


PATTERNS = [
    Case("rmsnorm_residual", rmsnorm_residual, 1, "CHECK: tl.sum\nCHECK: tl.rsqrt"),
    Case("layernorm_residual", layernorm_residual, 1, "CHECK-COUNT-2: tl.sum\nCHECK: tl.rsqrt"),
    Case("swiglu_mlp", swiglu_mlp, 1, "CHECK: tl.dot\nCHECK: tl.sigmoid"),
    Case("gelu_mlp", gelu_mlp, 1, "CHECK: tl.dot\nCHECK: tl.sigmoid"),
    Case("rotary", rotary, 2, "CHECK: tl.where\nCHECK: tl.where"),
    Case("softmax", softmax, 1, "CHECK: tl.max\nCHECK: tl.exp\nCHECK: tl.sum"),
    Case("linear_epilogue", linear_epilogue, 1, "CHECK: tl.dot\nCHECK: tl.maximum"),
    Case("adaln_modulate", adaln_modulate, 2, "CHECK: tl.sigmoid\nCHECK: tl.sum\nCHECK: tl.rsqrt"),
    Case("moe_gate", moe_gate, 1, "CHECK: tl.exp\nCHECK: tl.sum\nCHECK-COUNT-2: tl.max(t"),
]
BLOCKS = [
    Case("llama_block", llama_block, 10),
    Case("siglip_block", siglip_block, 5),
    Case("dit_block", dit_block, 6),
]


# -- compile and run ------------------------------------------------------------------
def export(module: nn.Module, args: tuple[Any, ...], dynamic: tuple[Any, ...]) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic)


def compile_case(module: nn.Module, args: tuple[Any, ...], dynamic: tuple[Any, ...], name: str = "case") -> Any:
    """The kernel file fusion makes of `module` (codegen.kernel_module.KernelFile)."""
    from omnigraph.codegen.kernel_module import assemble
    from omnigraph.passes.fusion.fuse import fuse_program

    fused = fuse_program(export(module, args, dynamic))
    return assemble(name, "forward", fused.program, fused.kernels, fused.compute_ops)


def run_fused(kernel_file: Any, module: nn.Module, args: tuple[Any, ...], interpret: bool = True) -> Any:
    from omnigraph.runtime.fused_stage import FusedProgram, load_kernels

    kernels = load_kernels(kernel_file.source, kernel_file.filename, interpret)
    device = args[0].device
    with torch.no_grad():
        return FusedProgram(kernels, module, kernel_file.constants, device, interpret)(*args)


def filecheck(text: str, checks: str) -> None:
    """FileCheck `checks` against `text`; AssertionError with its report if they fail."""
    with tempfile.TemporaryDirectory() as tmp:
        check_file = Path(tmp, "checks.txt")
        check_file.write_text(checks + "\n")
        exe = Path(sys.executable).parent / "filecheck"
        proc = subprocess.run([str(exe), str(check_file)], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
