// RUN: not omnigraph check %s 2>&1 | filecheck %s
// Parallel degrees must divide what they split (an ar_llm's heads; a moe block's experts).
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %llm_text, %llm_tokens, %llm_hidden = omni.stage @llm "ar_llm" (prompt = %prompt : !omni.tensor<text>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "transformers:Qwen3MoeForCausalLM", params = {weights = "random", config = {num_attention_heads = 32 : i64, num_key_value_heads = 4 : i64, num_experts = 128 : i64}}, parallel = #omni.parallel<tp = 4, pp = 1, dp = 1, ep = 1, replicas = 1>}
    %moe_y = omni.stage @moe "moe" (x = %llm_hidden : !omni.tensor<embedding>) -> (y : !omni.tensor<embedding>) attributes {model = "py:m:Moe", params = {num_experts = 128 : i64}, parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 3, replicas = 1>}
    omni.output "reply" %llm_text : !omni.tensor<text>
    omni.output "y" %moe_y : !omni.tensor<embedding>
  }
}
// CHECK: error: stage 'moe': ep=3 does not divide its 128 experts
