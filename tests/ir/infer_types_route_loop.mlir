// RUN: omnigraph compile %s --pass-pipeline=infer-types | filecheck %s
// Route outputs take their data's type; loop block arguments and results take
// their initial values' types.

builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %mode = omni.input "mode" : !omni.tensor<text>
    %r_a, %r_b = omni.route @r (data = %prompt : !omni.tensor<text>, key = %mode : !omni.tensor<text>) -> (a : !omni.tensor<text>, b : !omni.tensor<text>) attributes {params = {cases = ["a", "b"]}}
    %w_text, %w_tokens, %w_hidden = omni.stage @w "ar_llm" (prompt = %r_a : !omni.tensor<text>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "gguf:x"}
    %polish_draft = omni.loop @polish max_iters 3 (draft = %w_text : !omni.tensor<text>) {
    ^bb0(%draft : !omni.tensor<text>):
      %check_ok = omni.stage @check "custom" (in0 = %draft : !omni.tensor<text>) -> (ok : !omni.tensor<scalar>) attributes {model = "py:m:Check"}
      omni.yield %check_ok, %draft : !omni.tensor<scalar>, !omni.tensor<text>
    }
    omni.output "answer" %polish_draft : !omni.tensor<text>
  }
}

// CHECK: omni.route @r {{.*}} -> (a : !omni.tensor<text, utf8, [?]>, b : !omni.tensor<text, utf8, [?]>)
// CHECK: omni.loop @polish max_iters 3 (draft = %w_text : !omni.tensor<text, utf8, [?]>)
// CHECK-NEXT: ^{{.*}}(%draft: !omni.tensor<text, utf8, [?]>):
// CHECK-NEXT: omni.stage @check "custom" {{.*}} -> (ok : !omni.tensor<scalar, f32, []>)
// CHECK: omni.output "answer" %polish_draft : !omni.tensor<text, utf8, [?]>
