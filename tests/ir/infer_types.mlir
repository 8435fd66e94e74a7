// RUN: omnigraph compile %s --pass-pipeline=infer-types | filecheck %s
// infer-types fills element types and shapes from each kind's rule and the
// stage parameters; stream-ness and declared shapes are kept.

builtin.module {
  omni.pipeline @vision_chat {
    %image = omni.input "image" : !omni.tensor<image, u8, [3, ?, ?]>
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %vit_embeds = omni.stage @vit "encoder" (x = %image : !omni.tensor<image, u8, [3, ?, ?]>) -> (embeds : !omni.tensor<embedding>) attributes {model = "transformers:SiglipVisionModel", params = {weights = "random", hidden_size = 768 : i64, dtype = "bf16"}}
    %proj_embeds = omni.stage @proj "projector" (x = %vit_embeds : !omni.tensor<embedding>) -> (embeds : !omni.tensor<embedding>) attributes {model = "py:mods:Proj", params = {in_dim = 768 : i64, out_dim = 576 : i64}}
    %llm_text, %llm_tokens, %llm_hidden = omni.stage @llm "ar_llm" (prompt = %prompt : !omni.tensor<text>, context = %proj_embeds : !omni.tensor<embedding>) -> (text : !omni.stream<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "transformers:LlamaForCausalLM", params = {weights = "random", config = {hidden_size = 576 : i64}}}
    omni.output "reply" %llm_text : !omni.stream<text>
  }
}

// CHECK:      %image = omni.input "image" : !omni.tensor<image, u8, [3, ?, ?]>
// CHECK-NEXT: %prompt = omni.input "prompt" : !omni.tensor<text, utf8, [?]>
// CHECK-NEXT: omni.stage @vit "encoder" {{.*}} -> (embeds : !omni.tensor<embedding, bf16, [?, 768]>)
// CHECK-NEXT: omni.stage @proj "projector" (x = %vit_embeds : !omni.tensor<embedding, bf16, [?, 768]>) -> (embeds : !omni.tensor<embedding, f32, [?, 576]>)
// CHECK-NEXT: omni.stage @llm "ar_llm" {{.*}} -> (text : !omni.stream<text, utf8, [?]>, tokens : !omni.tensor<tokens, i64, [?]>, hidden : !omni.tensor<embedding, f32, [?, 576]>)
// CHECK-NEXT: omni.output "reply" %llm_text : !omni.stream<text, utf8, [?]>
