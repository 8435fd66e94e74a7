"""The leader's executor wrapper and the followers' loop: every rank steps the same executor
on the same view (see mirror.py), so the sharded layers' collectives line up.

A rank that dies makes the leader's next collective raise (or `check` notice first): the
step's items fail, naming the stage, and so does every later step of that instance, with
`RankFailed`; the backends replace the instance (local_ranks.LocalLeader rebuilds its ranks,
the Ray backend its actors). The backend's other stages are not affected.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from omnigraph.kinds import KINDS
from omnigraph.runtime.devices import placed, torch_device
from omnigraph.runtime.executor import Executor, WorkItem
from omnigraph.runtime.plan import Instance, StageNode
from omnigraph.runtime.tp.comm import RankComm, RankFailed
from omnigraph.runtime.tp.mirror import Mirror, Snapshots, StepMessage

log = logging.getLogger(__name__)

_DEATH_GRACE_S = 1.0  # after a failed step: time for a crashed rank's exit to show


class Followers(Protocol):
    """How a leader reaches the other ranks of its instance."""

    def send(self, message: StepMessage) -> None: ...

    def check(self) -> None:
        """Raise RankFailed if a rank is gone."""

    def settle(self) -> None:
        """After the leader's own step: raise RankFailed if a rank died during it."""

    def close(self) -> None: ...


def check_shardable(node: StageNode, instance: Instance) -> None:
    """Fail before any rank starts if this stage cannot run on `instance.ranks` ranks."""
    problem = KINDS[node.kind].parallel_problem(instance.tp, instance.ep, instance.pp)
    if problem is not None:
        raise ValueError(problem)


def shard_executor(executor: Executor, comm: RankComm, instance: Instance | None = None) -> None:
    """Replace the loaded executor's model by this rank's shard of it (unfused: the
    captured graphs are the whole model's): its pipeline stage's layers (pp), then its
    tensor-parallel or expert-parallel slice of them, over its stage's ranks."""
    executor.unfuse()
    model = getattr(executor, "model", None)
    if model is None:
        raise ValueError(f"a {executor.node.kind} executor without a torch model cannot be sharded")
    instance = instance or executor.node.instances[0]
    if instance.pp > 1:
        from omnigraph.runtime.tp.pipeline import PipeComm, PipelineCalls, shard_pipeline

        width = max(instance.tp, instance.ep)
        pipe = PipeComm(comm, instance.pp, width)
        shard_pipeline(model, pipe)
        if not hasattr(executor, "calls"):
            raise ValueError(f"pp={instance.pp}: {executor.node.kind} stages are not pipeline-parallel")
        executor.calls = PipelineCalls(model, pipe)  # type: ignore[attr-defined]
        if width == 1:
            return
        comm = comm.subgroup([pipe.stage * width + i for i in range(width)], f"pp-stage{pipe.stage}/")
    if KINDS[executor.node.kind].traits.shardable_ep:
        from omnigraph.runtime.tp.experts import shard_experts

        executor.model = shard_experts(model, comm)  # type: ignore[attr-defined]
        return
    from omnigraph.runtime.tp.shard import shard_transformer

    if shard_transformer(model, comm) == 0:
        raise ValueError(f"{type(model).__name__} has no attention or MLP layers this runtime can shard")


def rank_device(instance: Instance, rank: int) -> str:
    """The torch device of one rank: its plan device (cuda:N on a GPU, else cpu), after
    OMNIGRAPH_DEVICE_MAP (runtime/devices.py)."""
    return placed(torch_device(instance.devices[rank % len(instance.devices)]))


def rank_cores(instance: Instance, rank: int) -> list[int] | None:
    """The share of the instance's CPU cores one rank computes on (every rank gets one)."""
    if not instance.cores:
        return None
    return instance.cores[rank % instance.ranks::instance.ranks] or [instance.cores[rank % len(instance.cores)]]


class SpmdLeader(Executor):
    """Rank 0: steps the real items through the mirror, the followers on the same view."""

    def __init__(self, inner: Executor, comm: RankComm, followers: Followers) -> None:
        super().__init__(inner.node, inner.ctx)
        self.inner = inner
        self.comm = comm
        self.followers = followers
        self.mirror = Mirror()
        self.snapshots = Snapshots()
        self.broken: str | None = None

    @property
    def model(self):
        return getattr(self.inner, "model", None)

    def bundle_facts(self) -> dict:
        return self.inner.bundle_facts()

    def step(self, items: list[WorkItem]) -> bool:
        if self.broken is not None:
            raise RankFailed(self.broken)
        try:
            self.followers.check()
        except RankFailed as exc:
            self.broken = str(exc)
            raise
        whole = 0 if self.continuous else self.node.batching.max_batch
        message = self.snapshots.message(items, read_whole=whole)
        try:
            self.followers.send(message)
        except Exception as exc:  # a broken pipe or a dead actor: a rank is gone
            self.broken = f"a tensor-parallel rank is unreachable: {exc}"
            raise RankFailed(self.broken) from exc
        views = self.mirror.apply(message, items)
        try:
            progressed = self.inner.step(views)
        except Exception:
            # A collective that failed because a rank died: name the rank, not the socket.
            self._settle(grace=_DEATH_GRACE_S)
            raise
        self._settle()
        return progressed

    def _settle(self, grace: float = 0.0) -> None:
        deadline = time.monotonic() + grace
        while True:
            try:
                self.followers.settle()
                if time.monotonic() >= deadline:
                    return
            except RankFailed as exc:
                self.broken = str(exc)
                raise
            time.sleep(0.05)

    def close(self) -> None:
        self.followers.close()
        self.comm.close()


def follow(executor: Executor, receive: Callable[[], StepMessage | None]) -> None:
    """A follower's loop: step on each message until `receive` returns None (stop)."""
    mirror = Mirror()
    while (message := receive()) is not None:
        step(executor, mirror, message)


def step(executor: Executor, mirror: Mirror, message: StepMessage) -> None:
    """One follower step. Its outputs go nowhere; an error is the leader's to report (the
    leader raises it too, on the same view)."""
    views = mirror.apply(message)
    try:
        executor.step(views)
    except Exception as exc:
        log.debug("follower step failed: %s", exc)
