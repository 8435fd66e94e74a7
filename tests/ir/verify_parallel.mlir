// RUN: not omnigraph check %s 2>&1 | filecheck %s
// Parallel degrees must divide what they split.
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %llm_text, %llm_tokens, %llm_hidden = omni.stage @llm "ar_llm" (prompt = %prompt : !omni.tensor<text>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "transformers:Qwen3MoeForCausalLM", params = {config = {num_attention_heads = 32 : i64, num_key_value_heads = 4 : i64, num_experts = 128 : i64}}, parallel = #omni.parallel<tp = 4, pp = 1, dp = 1, ep = 3, replicas = 1>}
    omni.output "reply" %llm_text : !omni.tensor<text>
  }
}
// CHECK: error: stage 'llm': ep=3 does not divide its 128 experts
