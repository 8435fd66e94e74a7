"""A tensor/expert-parallel instance on this machine: rank 0 in the backend's process,
ranks 1.. as processes spawned with torch.multiprocessing, each loading the stage and
keeping its shard. Step messages go to the followers over pipes; a follower exits when
its pipe closes or its parent is gone, so none outlives the backend.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from omnigraph.runtime.executor import ExecContext, Executor, executor_class
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.tp.comm import JOIN_TIMEOUT_S, RankComm, Rendezvous
from omnigraph.runtime.tp.mirror import StepMessage
from omnigraph.runtime.tp.spmd import (
    RankFailed,
    SpmdLeader,
    check_shardable,
    follow,
    rank_device,
    shard_executor,
)

_STOP_WAIT_S = 5.0


class LocalFollowers:
    """Ranks 1..world-1 of one instance, as child processes."""

    def __init__(self, node: StageNode, ctx: ExecContext, rendezvous: Rendezvous, module_paths: list[str]) -> None:
        spawn = mp.get_context("spawn")
        instance = node.instances[0]
        threads = max(1, torch.get_num_threads() // rendezvous.world)  # the ranks share this machine's cores
        self.world = rendezvous.world
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for rank in range(1, rendezvous.world):
            ours, theirs = spawn.Pipe()
            device = rank_device(ctx.device, instance, rank)
            proc = spawn.Process(target=_follower_main, name=f"omnigraph-{node.name}-rank{rank}", daemon=True,
                                 args=(node.model_dump_json(), rank, rendezvous, device, ctx.seed, module_paths,
                                       threads, theirs))
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    def check(self) -> None:
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), start=1):
            if not proc.is_alive():
                raise RankFailed(f"tensor-parallel rank {rank} of {self.world} {_last_words(conn, proc)}")

    settle = check

    def send(self, message: StepMessage) -> None:
        for conn in self.conns:
            conn.send(("step", message))

    def wait_ready(self, timeout: float) -> None:
        """Until every follower has loaded its shard; raises with a follower's error."""
        deadline = time.monotonic() + timeout
        for rank, conn in enumerate(self.conns, start=1):
            while not conn.poll(0.1):
                self.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tensor-parallel rank {rank} did not load within {timeout:.0f}s")
            kind, detail = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"tensor-parallel rank {rank}: {detail}")

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop", None))
                conn.close()
            except OSError:  # that rank is already gone
                pass
        for proc in self.procs:
            proc.join(_STOP_WAIT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(_STOP_WAIT_S)


def _last_words(conn: Connection, proc: Any) -> str:
    """Why a follower ended: the error it reported, else its exit code."""
    try:
        while conn.poll(0):
            kind, detail = conn.recv()
            if kind == "error":
                return f"failed: {detail}"
    except (EOFError, OSError):
        pass
    return f"died (exit code {proc.exitcode})"


def start_local_instance(node: StageNode, ctx: ExecContext, module_paths: list[str]) -> SpmdLeader:
    """Rank 0 of the stage's first instance, its followers started and loaded."""
    instance = node.instances[0]
    check_shardable(node, instance)
    rendezvous, store = RankComm.lead(instance.ranks)
    followers = LocalFollowers(node, ctx, rendezvous, module_paths)
    try:
        device = rank_device(ctx.device, instance, 0)
        comm = _join(lambda: RankComm(rendezvous, 0, device, store=store), followers)
        inner = executor_class(node.kind)(node, ExecContext(device=device, seed=ctx.seed))
        inner.load()
        shard_executor(inner, comm)
        followers.wait_ready(JOIN_TIMEOUT_S)
    except BaseException:
        followers.close()
        raise
    return SpmdLeader(inner, comm, followers)


def _join(make: Any, followers: LocalFollowers) -> RankComm:
    """Join the group, giving up as soon as a follower dies instead of at the store timeout."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(_capture(make)), daemon=True)
    thread.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while thread.is_alive():
        thread.join(0.1)
        if thread.is_alive():
            followers.check()
            if time.monotonic() > deadline:
                raise TimeoutError("the tensor-parallel ranks did not meet")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _capture(make: Any) -> Any:
    try:
        return make()
    except BaseException as exc:  # handed to the joining thread
        return exc


def _follower_main(node_json: str, rank: int, rendezvous: Rendezvous, device: str, seed: int,
                   module_paths: list[str], threads: int, conn: Connection) -> None:
    for path in module_paths:
        if path not in sys.path:
            sys.path.append(path)
    torch.set_num_threads(threads)
    try:
        node = StageNode.model_validate_json(node_json)
        comm = RankComm(rendezvous, rank, device)
        executor: Executor = executor_class(node.kind)(node, ExecContext(device=device, seed=seed))
        executor.load()
        shard_executor(executor, comm)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    parent = os.getppid()

    def receive() -> StepMessage | None:
        while True:
            try:
                if conn.poll(1.0):
                    kind, message = conn.recv()
                    return message if kind == "step" else None
            except (EOFError, OSError):  # the leader closed the pipe
                return None
            if os.getppid() != parent:
                return None

    follow(executor, receive)
    comm.close()
