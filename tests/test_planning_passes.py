"""Each planning pass on its own, before and expected IR (TVM Relax style): the input names only
what the pass reads, and the attributes it writes are compared in full.

The modules are hand-written IR for h100x8 (one node, eight 80 GB H100s in one NVLink domain),
with `py:` models so that sizes come from `params.config` alone (nothing is imported).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnigraph.compiler import compile_path
from omnigraph.dialect.textio import print_module
from omnigraph.errors import OmnigraphError

GIB = 1 << 30

LLM_TYPES = ("(prompt = %prompt : !omni.tensor<text, utf8, [?]>) -> (text : !omni.tensor<text, utf8, [?]>, "
             "tokens : !omni.tensor<tokens, i64, [?]>, hidden : !omni.tensor<embedding, bf16, [?, 1024]>)")
ENC_TYPES = ("(x = %writer_text : !omni.tensor<text, utf8, [?]>) -> "
             "(embeds : !omni.tensor<embedding, f32, [?, 384]>)")
LLM_CONFIG = ("config = {hidden_size = 1024 : i64, intermediate_size = 2816 : i64, num_hidden_layers = 8 : i64, "
              "num_attention_heads = 16 : i64, num_key_value_heads = 4 : i64, vocab_size = 32000 : i64}")


def plan_attr(batch: int, devices: int, shared: bool, weights: int, kv: int, activations: int, in_bytes: int) -> str:
    return (f"#omni.plan<batch = {batch}, device_type = \"h100\", devices_per_replica = {devices}, "
            f"shared = {'true' if shared else 'false'}, visits = 1.0, rate = 10.0, latency_s = 0.5, "
            f"first_output_s = 0.1, mem_per_device = {weights + kv + activations}, weights_per_device = {weights}, "
            f"kv_per_device = {kv}, activations = {activations}, offload = 0, forward_tokens = 256, "
            f"in_bytes = {in_bytes}, pipeline_rate = 10.0, solver = \"HiGHS\">")


def module(writer: str, embed: str) -> str:
    return f"""builtin.module {{
  omni.pipeline @chat target "h100x8" {{
    %prompt = omni.input "prompt" : !omni.tensor<text, utf8, [?]>
    %writer_text, %writer_tokens, %writer_hidden = omni.stage @writer "ar_llm" {LLM_TYPES} attributes {{model = "py:m:Llama", params = {{max_new_tokens = 64 : i64, {LLM_CONFIG}}}{writer}}}
    %embed_embeds = omni.stage @embed "encoder" {ENC_TYPES} attributes {{model = "py:m:Embedder"{embed}}}
    omni.output "reply" %writer_text : !omni.tensor<text, utf8, [?]>
    omni.output "vec" %embed_embeds : !omni.tensor<embedding, f32, [?, 384]>
  }}
}}
"""


def run(tmp_path: Path, text: str, passes: str) -> str:
    path = tmp_path / "in.mlir"
    path.write_text(text)
    return print_module(compile_path(path, pass_pipeline=passes).module)


def attr(ir: str, stage: str, name: str) -> str:
    line = next(l for l in ir.splitlines() if f"@{stage} " in l)
    found = re.search(rf"{name} = (#omni\.\w+<.*?>|\{{[^}}]*\}})(?=, \w+ = |\}}$)", line)
    assert found, f"no {name} on {stage}:\n{line}"
    return found.group(1)


# -- place-devices -------------------------------------------------------------------------
def test_place_devices_keeps_each_group_on_nvlink_and_packs_the_shared_pool(tmp_path: Path) -> None:
    writer = (", parallel = #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 1, replicas = 2>, plan = "
              + plan_attr(32, 2, False, 1 * GIB, 2 * GIB, GIB // 4, 0))
    embed = (", parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 1, replicas = 1>, plan = "
             + plan_attr(8, 1, True, 50 << 20, 0, 1 << 20, 4096))
    after = run(tmp_path, module(writer, embed), "place-devices")
    # Biggest groups first, each into the fullest domain that holds it; the shared pool takes
    # what is left, one instance of each shared stage per pool device.
    assert attr(after, "writer", "place") == '#omni.place<["node0:gpu0", "node0:gpu1", "node0:gpu2", "node0:gpu3"]>'
    assert attr(after, "embed", "place") == '#omni.place<["node0:gpu4"]>'
    assert "mem = " not in after  # plan-memory's, not this pass's


def test_place_devices_needs_the_plan(tmp_path: Path) -> None:
    bare = module(", parallel = #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 1, replicas = 1>", "")
    with pytest.raises(OmnigraphError, match="place-devices needs plan-parallel to run first"):
        run(tmp_path, bare, "place-devices")


# -- plan-memory ---------------------------------------------------------------------------
def test_plan_memory_lays_out_each_device(tmp_path: Path) -> None:
    writer = (", parallel = #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 1, replicas = 1>, plan = "
              + plan_attr(32, 2, False, 1 * GIB, 2 * GIB, GIB // 4, 0)
              + ', place = #omni.place<["node0:gpu0", "node0:gpu1"]>')
    embed = (", parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 1, replicas = 1>, plan = "
             + plan_attr(8, 1, False, 50 << 20, 0, 1 << 20, 4096)
             + ', place = #omni.place<["node0:gpu0"]>')
    after = run(tmp_path, module(writer, embed), "plan-memory")
    usable = int(80 * GIB * 0.92)  # cost_rules.MEMORY_UTILIZATION of an 80 GiB H100
    embed_used = (50 << 20) + (1 << 20) + 2 * 8 * 4096  # weights, arena, double-buffered inputs
    writer_kv = usable - (GIB + GIB // 4) - embed_used  # the KV pool takes what gpu0 has left
    assert attr(after, "writer", "mem") == (
        f"#omni.mem<weights = {GIB}, kv = {writer_kv}, arena = {GIB // 4}, buffers = 0, offload = 0>")
    assert attr(after, "embed", "mem") == f"#omni.mem<weights = {50 << 20}, kv = 0, arena = {1 << 20}, " \
                                          f"buffers = {2 * 8 * 4096}, offload = 0>"


def test_plan_memory_says_which_device_is_short(tmp_path: Path) -> None:
    writer = (", parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 1, replicas = 1>, plan = "
              + plan_attr(32, 1, False, 60 * GIB, 0, GIB, 0) + ', place = #omni.place<["node0:gpu3"]>')
    embed = (", parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 1, replicas = 1>, plan = "
             + plan_attr(8, 1, False, 20 * GIB, 0, GIB, 0) + ', place = #omni.place<["node0:gpu3"]>')
    with pytest.raises(OmnigraphError, match=r"device node0:gpu3 is \d+\.\d GiB short: it holds 'writer'"):
        run(tmp_path, module(writer, embed), "plan-memory")


# -- estimate-cost and plan-parallel -------------------------------------------------------
def test_estimate_cost_counts_from_the_config(tmp_path: Path) -> None:
    after = run(tmp_path, module("", ""), "estimate-cost")
    cost = attr(after, "writer", "cost")
    # 8 layers x (attention 2*1024*64*(16+4) + MLP 3*1024*2816 + norms 2*1024) + 2 x vocab*hidden
    layer = 2 * 1024 * 64 * (16 + 4) + 3 * 1024 * 2816 + 2 * 1024
    params = 8 * layer + 2 * 32000 * 1024
    assert cost.startswith(f"{{params = {params} : i64, param_bytes = {2 * params} : i64")
    assert 'source = "config"' in cost
    assert 'source = "guess"' in attr(after, "embed", "cost")  # no sizes at all: said so


def test_plan_parallel_writes_a_choice_per_stage(tmp_path: Path) -> None:
    after = run(tmp_path, module("", ""), "plan-parallel")
    par = attr(after, "writer", "parallel")
    assert re.fullmatch(r"#omni\.parallel<tp = [1248], pp = 1, dp = 1, ep = 1, replicas = [1-8]>", par)
    plan = attr(after, "writer", "plan")
    assert re.match(r'#omni\.plan<batch = \d+, device_type = "h100", devices_per_replica = [1248], shared = ', plan)
    assert "place = " not in after and "mem = " not in after  # the later passes' attributes
