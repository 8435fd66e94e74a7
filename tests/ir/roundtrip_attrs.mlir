// RUN: omnigraph compile %s --pass-pipeline= | filecheck %s
// Pass-filled attributes print and parse back in their custom forms.
builtin.module {
  omni.pipeline @p target "cpu-local" {
    %x = omni.input "x" : !omni.tensor<embedding, bf16, [?, 2048]>
    %moe_y = omni.stage @moe "moe" (x = %x : !omni.tensor<embedding, bf16, [?, 2048]>) -> (y : !omni.tensor<embedding, bf16, [?, 2048]>) attributes {model = "py:m:Moe", params = {num_experts = 8 : i64}, parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 4, replicas = 2>, place = #omni.place<["node0:gpu0", "node0:gpu1"]>, mem = #omni.mem<weights = 1024, kv = 0, arena = 64, offload = 512>}
    omni.output "y" %moe_y : !omni.tensor<embedding, bf16, [?, 2048]>
  }
}
// CHECK: omni.pipeline @p target "cpu-local" {
// CHECK: parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 4, replicas = 2>, place = #omni.place<["node0:gpu0", "node0:gpu1"]>, mem = #omni.mem<weights = 1024, kv = 0, arena = 64, offload = 512>}
