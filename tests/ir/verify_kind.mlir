// RUN: not omnigraph check %s 2>&1 | filecheck %s
// Unknown kinds and ports are refused by the stage verifier.
builtin.module {
  omni.pipeline @p {
    %prompt = omni.input "prompt" : !omni.tensor<text>
    %x_y = omni.stage @x "teleporter" (prompt = %prompt : !omni.tensor<text>) -> (y : !omni.tensor<text>)
    omni.output "out" %x_y : !omni.tensor<text>
  }
}
// CHECK: error: stage 'x': unknown stage kind 'teleporter'
