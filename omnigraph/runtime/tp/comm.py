"""A process group for the ranks of one stage instance.

Built directly on a store (no `init_process_group`), so one process can be rank 0 of
several instances' groups: LocalBackend runs every TP stage's leader in its own process.
gloo on CPU, nccl on GPU. A peer that dies makes the next collective raise (gloo sees
the closed connection at once); `timeout` bounds the wait for a peer that hangs.
"""
from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 120.0  # a step's collectives; ranks enter them together, so only a hung peer waits this long
JOIN_TIMEOUT_S = 300.0  # ranks load their model before joining: allow for a slow load


class RankFailed(RuntimeError):
    """A rank of a tensor/expert-parallel instance died: the instance cannot compute."""


@dataclass(frozen=True)
class Rendezvous:
    """Where an instance's ranks meet: the leader's store."""

    host: str
    port: int
    world: int


def node_address() -> str:
    """This machine's address as the other ranks of a group reach it: inside a Ray worker,
    the address Ray knows its node by (Ray is not imported here unless it already is)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    return "127.0.0.1"


class RankComm:
    """One rank's membership in its instance's group."""

    def __init__(self, rendezvous: Rendezvous, rank: int, device: str, store: dist.Store | None = None) -> None:
        self.rank = rank
        self.world = rendezvous.world
        self.device = device
        if store is None:
            store = dist.TCPStore(rendezvous.host, rendezvous.port, rendezvous.world, False,
                                  timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
        self._store = store  # the leader's store must outlive the group
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        if device.startswith("cuda"):
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.group: dist.ProcessGroup = dist.ProcessGroupNCCL(store, rank, self.world, opts)
        else:
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=node_address())]
            self.group = dist.ProcessGroupGloo(store, rank, self.world, opts)

    @staticmethod
    def lead(world: int) -> tuple[Rendezvous, dist.TCPStore]:
        """Rank 0's store, opened before the other ranks start so they know where to meet."""
        host = node_address()
        store = dist.TCPStore(host, 0, world, True, timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S),
                              wait_for_workers=False)
        return Rendezvous(host, store.port, world), store

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place; RankFailed when a peer has gone."""
        try:
            self.group.allreduce([tensor]).wait()
        except RuntimeError as exc:
            raise RankFailed(f"a collective of the {self.world} tensor-parallel ranks failed: a rank is gone "
                             f"({_brief(exc)})") from exc
        return tensor

    def subgroup(self, members: list[int], tag: str) -> RankComm:
        """A group of some of the ranks (this one among them): a pipeline stage's tensor-
        parallel ranks, on the same store under its own prefix."""
        sub = object.__new__(RankComm)
        sub.rank, sub.world, sub.device, sub._store = members.index(self.rank), len(members), self.device, self._store
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        store = dist.PrefixStore(tag, self._store)
        if self.device.startswith("cuda"):
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            sub.group = dist.ProcessGroupNCCL(store, sub.rank, sub.world, opts)
        else:
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=node_address())]
            sub.group = dist.ProcessGroupGloo(store, sub.rank, sub.world, opts)
        return sub

    def send(self, tensor: torch.Tensor, dst: int) -> dist.Work:
        """Start sending `tensor` to rank `dst` (wait on the result before reusing it)."""
        return self._p2p(lambda: self.group.send([tensor], dst, 0), f"send to rank {dst}")

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Receive into `tensor` from rank `src`."""
        self._p2p(lambda: self.group.recv([tensor], src, 0).wait(), f"receive from rank {src}")
        return tensor

    def broadcast(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        """`root`'s tensor on every rank, in place."""
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        self._p2p(lambda: self.group.broadcast([tensor], opts).wait(), f"broadcast from rank {root}")
        return tensor

    def _p2p(self, start, what: str):  # noqa: ANN001, ANN202 - a Work, or what wait() gives
        try:
            return start()
        except RuntimeError as exc:
            raise RankFailed(f"a {what} between the instance's ranks failed: a rank is gone ({_brief(exc)})") from exc

    def close(self) -> None:
        try:
            self.group.shutdown()
        except Exception:  # a group whose peer died may refuse a clean shutdown
            pass


def _brief(exc: BaseException) -> str:
    """The gist of a gloo/nccl error ("Connection reset by peer"), without its source path."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split("] ", 1)[-1]  # gloo prefixes [file:line]
    return text.split(". ", 1)[0][:160]
