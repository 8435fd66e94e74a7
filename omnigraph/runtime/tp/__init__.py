"""Tensor and expert parallelism inside one stage instance, with torch.distributed.

An instance with `ranks > 1` runs one process per rank. Rank 0 (the leader) owns the stage's
executor as a single-rank instance would; every other rank (a follower) runs an identical
executor in lockstep: before each step the leader sends what that step will see (its
items, their new stream chunks, which are dead or blocked), every rank steps on that same
view, and the sharded layers all-reduce inside the forward passes (SPMD, as Megatron).
Only the leader's outputs leave the instance.

    comm.py         a gloo (CPU) or nccl (GPU) process group of one instance's ranks
    shard.py        Megatron column/row sharding of attention and MLP layers (tp)
    experts.py      expert parallelism for MoeBlock (ep)
    mirror.py       the per-step view every rank's executor steps on
    spmd.py         the leader's executor wrapper and the followers' loop
    local_ranks.py  followers as processes of this machine (LocalBackend)
"""
