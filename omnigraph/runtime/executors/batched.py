"""Grouped batching for the model-backed batch executors.

Each item is prepared alone (its own errors fail it alone), then items whose
prepared inputs share a batch key — in practice, a shape — run in one forward.
A failed group is retried item by item, so one bad request does not fail the
requests it happened to be batched with.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import torch

from omnigraph.runtime.executor import BatchExecutor, WorkItem
from omnigraph.runtime.executors.output_cache import OutputCache, content_key

P = TypeVar("P")  # one item's prepared input


class GroupedExecutor(BatchExecutor, Generic[P]):
    output_cache: OutputCache | None = None  # outputs by the content of their input (encoders)

    @abstractmethod
    def prepare(self, item: WorkItem) -> P:
        """One item's model input (raise to fail this item only)."""

    @abstractmethod
    def batch_key(self, prepared: P) -> Hashable:
        """Items with equal keys can run in one forward."""

    @abstractmethod
    def forward(self, batch: list[P], items: list[WorkItem]) -> list[dict[str, Any]]:
        """Outputs (port -> value) for a group of items, in order."""

    def run(self, items: list[WorkItem]) -> list[dict[str, Any] | BaseException]:
        results: list[dict[str, Any] | BaseException | None] = [None] * len(items)
        prepared: dict[int, P] = {}
        groups: dict[Hashable, list[int]] = {}
        keys: dict[int, bytes] = {}
        for i, item in enumerate(items):
            try:
                prepared[i] = self.prepare(item)
                if self.output_cache is not None and isinstance(prepared[i], torch.Tensor):
                    keys[i] = content_key(prepared[i])
                    cached = self.output_cache.get(keys[i])
                    if cached is not None:  # seen before: no forward for it
                        results[i] = cached
                        continue
                groups.setdefault(self.batch_key(prepared[i]), []).append(i)
            except Exception as exc:
                results[i] = exc
        # no_grad, not inference_mode: outputs reach users, who may edit them in place.
        with torch.no_grad():
            for group in groups.values():
                self._run_group(group, prepared, items, results)
        if self.output_cache is not None:
            for i, key in keys.items():
                if isinstance(results[i], dict):
                    self.output_cache.put(key, results[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]  # every slot is filled above

    def _run_group(self, group: list[int], prepared: dict[int, P], items: list[WorkItem],
                   results: list[dict[str, Any] | BaseException | None]) -> None:
        try:
            outs = self.forward([prepared[i] for i in group], [items[i] for i in group])
        except Exception as exc:
            if len(group) == 1:
                results[group[0]] = exc
                return
            for i in group:  # find the culprit: the others still get their outputs
                self._run_group([i], prepared, items, results)
            return
        for i, out in zip(group, outs):
            results[i] = out
