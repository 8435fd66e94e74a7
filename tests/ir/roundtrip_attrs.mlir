// RUN: omnigraph compile %s --pass-pipeline= | filecheck %s
// Pass-filled attributes print and parse back in their custom forms.
builtin.module {
  omni.pipeline @p target "cpu-local" {
    %x = omni.input "x" : !omni.tensor<embedding, bf16, [?, 2048]>
    %moe_y = omni.stage @moe "moe" (x = %x : !omni.tensor<embedding, bf16, [?, 2048]>) -> (y : !omni.tensor<embedding, bf16, [?, 2048]>) attributes {model = "py:m:Moe", params = {num_experts = 8 : i64}, parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 4, replicas = 2>, plan = #omni.plan<batch = 4, device_type = "h100", devices_per_replica = 1, shared = false, visits = 0.5, rate = 12.5, latency_s = 0.25, first_output_s = 0.125, mem_per_device = 2048, weights_per_device = 1024, kv_per_device = 0, activations = 64, offload = 512, forward_tokens = 16, in_bytes = 32, pipeline_rate = 6.25, solver = "CBC \"x\"">, place = #omni.place<["node0:gpu0", "node0:gpu1"]>, mem = #omni.mem<weights = 1024, kv = 0, arena = 64, buffers = 256, offload = 512>}
    %moe2_y = omni.stage @moe2 "moe" (x = %moe_y : !omni.tensor<embedding, bf16, [?, 2048]>) -> (y : !omni.tensor<embedding, bf16, [?, 2048]>) attributes {model = "py:m:Moe", params = {num_experts = 8 : i64}, parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 4, replicas = 2>, plan = #omni.plan<batch = 4, device_type = "h100", devices_per_replica = 1, shared = false, visits = 0.5, rate = 12.5, latency_s = 0.25, first_output_s = 0.125, mem_per_device = 2048, weights_per_device = 1024, kv_per_device = 0, activations = 64, offload = 512, forward_tokens = 16, in_bytes = 32, pipeline_rate = 6.25, solver = "CBC \"x\"", dtype = "bf16", gap = 0.031>, cores = #omni.cores<[0, 1]>, place = #omni.place<["node0:gpu0", "node0:gpu1"]>, mem = #omni.mem<weights = 1024, kv = 0, arena = 64, buffers = 256, offload = 512>}
    omni.output "y" %moe_y : !omni.tensor<embedding, bf16, [?, 2048]>
  }
}
// CHECK: omni.pipeline @p target "cpu-local" {
// CHECK: parallel = #omni.parallel<tp = 1, pp = 1, dp = 1, ep = 4, replicas = 2>, plan = #omni.plan<batch = 4, device_type = "h100", devices_per_replica = 1, shared = false, visits = 0.5, rate = 12.5, latency_s = 0.25, first_output_s = 0.125, mem_per_device = 2048, weights_per_device = 1024, kv_per_device = 0, activations = 64, offload = 512, forward_tokens = 16, in_bytes = 32, pipeline_rate = 6.25, solver = "CBC \22x\22">, place = #omni.place<["node0:gpu0", "node0:gpu1"]>, mem = #omni.mem<weights = 1024, kv = 0, arena = 64, buffers = 256, offload = 512>}
// CHECK: solver = "CBC \22x\22", dtype = "bf16", gap = 0.031>
// CHECK-SAME: cores = #omni.cores<[0, 1]>
