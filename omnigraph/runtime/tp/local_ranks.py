"""A tensor/expert-parallel instance on this machine: rank 0 in the backend's process,
ranks 1.. as processes spawned with torch.multiprocessing, each loading the stage and
keeping its shard. Step messages go to the followers over pipes; a follower exits when
its pipe closes or its parent is gone, so none outlives the backend.

A rank that dies fails the requests the instance was working on (RankFailed, naming the
stage); then the instance rebuilds itself: what is left of it goes (the other followers,
the process group and its store), a new rendezvous, new followers and a newly loaded and
sharded leader take its place, and later requests are served as before. After
`MAX_REBUILD_FAILURES` rebuilds in a row that fail (or break before a step completes) the
stage stays failed, saying so.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from omnigraph.runtime.devices import pin_process
from omnigraph.runtime.executor import ExecContext, Executor, WorkItem, executor_class
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.tp.comm import JOIN_TIMEOUT_S, RankComm, Rendezvous
from omnigraph.runtime.tp.mirror import STATE_KEY, Mirror, Snapshots, StepMessage
from omnigraph.runtime.tp.spmd import (
    RankFailed,
    SpmdLeader,
    check_shardable,
    follow,
    rank_cores,
    rank_device,
    shard_executor,
)

log = logging.getLogger(__name__)

_STOP_WAIT_S = 5.0
MAX_REBUILD_FAILURES = 3  # rebuilds in a row that fail, or break before a step completes, before giving up


class LocalFollowers:
    """Ranks 1..world-1 of one instance, as child processes."""

    def __init__(self, node: StageNode, ctx: ExecContext, rendezvous: Rendezvous, module_paths: list[str],
                 index: int = 0) -> None:
        spawn = mp.get_context("spawn")
        instance = node.instances[index]
        threads = max(1, torch.get_num_threads() // rendezvous.world)  # the ranks share this machine's cores
        self.world = rendezvous.world
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        try:
            for rank in range(1, rendezvous.world):
                ours, theirs = spawn.Pipe()
                device = rank_device(instance, rank)
                cores = rank_cores(instance, rank)
                proc = spawn.Process(target=_follower_main, name=f"omnigraph-{node.name}-rank{rank}", daemon=True,
                                     args=(node.model_dump_json(), rank, rendezvous, device, ctx.seed, module_paths,
                                           len(cores) if cores else threads, theirs, cores, index))
                self.conns.append(ours)
                proc.start()
                theirs.close()
                self.procs.append(proc)
        except BaseException:
            self.close()  # the ranks started so far
            raise

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


def start_local_instance(node: StageNode, ctx: ExecContext, module_paths: list[str], index: int = 0) -> SpmdLeader:
    """Rank 0 of one of the stage's instances, its followers started and loaded."""
    check_shardable(node, node.instances[index])

    def start(started: Callable[[LocalFollowers], None]) -> tuple[Executor, RankComm, LocalFollowers]:
        return _start_ranks(node, ctx, module_paths, started, index)

    inner, comm, followers = start(lambda followers: None)
    return LocalLeader(inner, comm, followers, start)


def _start_ranks(node: StageNode, ctx: ExecContext, module_paths: list[str],
                 started: Callable[[LocalFollowers], None], index: int = 0,
                 ) -> tuple[Executor, RankComm, LocalFollowers]:
    """A new group (its own rendezvous), its followers spawned and loaded, and rank 0's
    executor loaded and sharded. `started` sees the followers as soon as they are spawned
    (and may raise to stop the start). Nothing is left running if this raises."""
    instance = node.instances[index]
    rendezvous, store = RankComm.lead(instance.ranks)
    followers = LocalFollowers(node, ctx, rendezvous, module_paths, index)
    comm: RankComm | None = None
    try:
        started(followers)
        device = rank_device(instance, 0)
        comm = _join(lambda: RankComm(rendezvous, 0, device, store=store), followers)
        inner = executor_class(node.kind)(node, ExecContext(device=device, seed=ctx.seed, planned=ctx.planned,
                                                           cores=rank_cores(instance, 0)))
        inner.load()
        shard_executor(inner, comm, instance)
        followers.wait_ready(JOIN_TIMEOUT_S)
    except BaseException:
        followers.close()
        if comm is not None:
            comm.close()
        raise
    return inner, comm, followers


class LocalLeader(SpmdLeader):
    """Rank 0 of a local instance that rebuilds itself when a rank dies.

    The requests the instance was working on fail (once each, with the RankFailed that
    names the dead rank); the worker's next requests wait while the instance is rebuilt
    in the worker's thread, then run on it. The rebuilt ranks load the stage from scratch,
    as the first ones did, so they compute what those did.
    """

    def __init__(self, inner: Executor, comm: RankComm, followers: LocalFollowers,
                 start: Callable[[Callable[[LocalFollowers], None]], tuple[Executor, RankComm, LocalFollowers]]
                 ) -> None:
        super().__init__(inner, comm, followers)
        self._start = start
        self._lock = threading.Lock()  # close() against a rebuild in the worker's thread
        self._closed = False
        self._starting: LocalFollowers | None = None  # the followers of a rebuild under way
        self.rebuilds = 0  # rebuilds that succeeded
        self._failures = 0  # rebuilds in a row that failed, or broke before a step completed
        self._unproven = False  # rebuilt, and no step has completed since
        self.gave_up: str | None = None

    def step(self, items: list[WorkItem]) -> bool:
        if self.gave_up is not None:
            raise RankFailed(self.gave_up)
        if self.broken is None:
            try:
                self.followers.check()
            except RankFailed as exc:  # a rank died between steps
                self.broken = str(exc)
        if self.broken is not None:
            # The items this instance has seen fail; those it has not run on the rebuilt one.
            error = RankFailed(self.broken)
            fresh = []
            for item in items:
                if STATE_KEY in item.state:
                    item.fail(error)
                else:
                    fresh.append(item)
            self._rebuild()
            if not fresh:
                return True
            items = fresh
        try:
            progressed = super().step(items)
        except Exception as exc:
            if self.broken is None and not isinstance(exc, RankFailed):
                raise  # the stage failed these requests; the instance is whole
            if self.broken is None:  # a collective failed, the dead rank not yet visible: the group is unusable
                self.broken = str(exc)
            for item in items:  # the requests under way fail now, not after the rebuild
                item.fail(exc)
            self._rebuild()
            return True
        self._failures = 0
        self._unproven = False
        return progressed

    def _rebuild(self) -> None:
        """Tear down what is left of the instance and start it again (in this thread)."""
        name, world = self.node.name, self.comm.world
        cause = self.broken or "a tensor-parallel rank died"
        if self._unproven:  # the last rebuild broke before it completed a step
            self._failures += 1
        self._teardown()
        sys.stderr.write(f"omnigraph: stage '{name}': {cause}; rebuilding its {world} ranks\n")
        sys.stderr.flush()
        while True:
            if self._closed:
                raise RankFailed(f"{cause}; the backend is closing")
            if self._failures >= MAX_REBUILD_FAILURES:
                self.gave_up = (f"the tensor-parallel instance of stage '{name}' is down: rebuilding its {world} "
                                f"ranks failed {self._failures} times in a row; last cause: {cause}")
                sys.stderr.write(f"omnigraph: {self.gave_up}\n")
                sys.stderr.flush()
                raise RankFailed(self.gave_up)
            try:
                inner, comm, followers = self._start(self._started)
            except Exception as exc:
                self._failures += 1
                cause = f"rebuilding failed: {type(exc).__name__}: {exc}"
                continue
            finally:
                with self._lock:
                    self._starting = None
            with self._lock:
                if not self._closed:
                    self.inner, self.comm, self.followers = inner, comm, followers
                    self.mirror, self.snapshots = Mirror(), Snapshots()
                    self.broken = None
                    self.rebuilds += 1
                    self._unproven = True
                    return
            followers.close()  # closed while starting: these ranks go too
            comm.close()
            inner.close()

    def _started(self, followers: LocalFollowers) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the backend is closing")
            self._starting = followers

    def _teardown(self) -> None:
        """Stop the followers still running, leave the old group (its store goes with it when
        the new one replaces it) and drop rank 0's shard."""
        for part in (self.followers, self.comm, self.inner):
            try:
                if part is not None:
                    part.close()
            except Exception as exc:  # a half-dead instance: go on tearing down
                log.debug("tearing down a broken instance: %s", exc)
        self.inner = None  # type: ignore[assignment]  # its shard is freed before the new model loads

    def close(self) -> None:
        with self._lock:
            self._closed = True
            starting = self._starting
        if starting is not None:  # a rebuild under way: its followers go now, and the rebuild stops
            starting.close()
        super().close()


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
                   module_paths: list[str], threads: int, conn: Connection, cores: list[int] | None = None,
                   index: int = 0) -> None:
    for path in module_paths:
        if path not in sys.path:
            sys.path.append(path)
    pin_process(cores)  # a rank's own process: on the cores the plan gave it
    torch.set_num_threads(threads)
    try:
        node = StageNode.model_validate_json(node_json)
        comm = RankComm(rendezvous, rank, device)
        executor: Executor = executor_class(node.kind)(node, ExecContext(device=device, seed=seed, cores=cores))
        executor.load()
        shard_executor(executor, comm, node.instances[index])
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:  # the leader is gone or gave up on this start
            pass
        return
    try:
        conn.send(("ready", None))
    except OSError:  # the leader gave up on this start (its backend is closing)
        comm.close()
        return
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
