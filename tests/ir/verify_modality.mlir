// RUN: not omnigraph check %s 2>&1 | filecheck %s
// An edge whose modality the consuming port does not accept.
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %tts_audio = omni.stage @tts "tts" (text = %prompt : !omni.tensor<text>) -> (audio : !omni.tensor<audio>) attributes {model = "onnx:v"}
    %llm_text, %llm_tokens, %llm_hidden = omni.stage @llm "ar_llm" (prompt = %tts_audio : !omni.tensor<audio>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "gguf:x"}
    omni.output "reply" %llm_text : !omni.tensor<text>
  }
}
// CHECK: error: stage 'llm' port 'prompt': expects text or tokens, got audio from 'tts.audio'
