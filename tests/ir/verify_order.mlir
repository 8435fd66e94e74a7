// RUN: not omnigraph check %s 2>&1 | filecheck %s
// A use before its definition: in SSA order this is how a cycle shows.
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %a_text, %a_tokens, %a_hidden = omni.stage @a "ar_llm" (prompt = %b_text : !omni.tensor<text>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "gguf:x"}
    %b_text, %b_tokens, %b_hidden = omni.stage @b "ar_llm" (prompt = %a_text : !omni.tensor<text>) -> (text : !omni.tensor<text>, tokens : !omni.tensor<tokens>, hidden : !omni.tensor<embedding>) attributes {model = "gguf:x"}
    omni.output "reply" %b_text : !omni.tensor<text>
  }
}
// CHECK: error: 'a' uses 'b.text' before it is computed (a cycle, or ops out of dependency order)
