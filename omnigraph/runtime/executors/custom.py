"""`custom`: any Python callable or torch module, named `py:module:attr`.

A class is instantiated with the stage's extra params; a function is used as is.
It is called once per request with the input ports as keyword arguments and
returns a dict of output ports (or a single value, for a one-output stage).
"""
from __future__ import annotations

import inspect
from typing import Any

from omnigraph.runtime.executor import BatchExecutor, WorkItem
from omnigraph.runtime.loaders import import_attr, split_ref

_COMMON = {"dtype", "seed", "arch", "config"}  # the fields every kind takes (kinds.Params)


class CustomExecutor(BatchExecutor):
    def load(self) -> None:
        scheme, target = split_ref(self.node.model or "")
        if scheme != "py":
            raise ValueError(f"custom stages take a `py:module:attr` model, not '{self.node.model}'")
        obj = import_attr(target)
        if inspect.isclass(obj):
            kwargs = {k: v for k, v in self.params.items() if k not in _COMMON}
            obj = obj(**kwargs)
        self.fn = obj
        if hasattr(obj, "eval"):
            obj.eval()

    def run(self, items: list[WorkItem]) -> list[dict[str, Any] | BaseException]:
        import torch

        results: list[dict[str, Any] | BaseException] = []
        with torch.inference_mode():
            for item in items:
                try:
                    results.append(self._call(item))
                except Exception as exc:  # fails this request, not its batch mates
                    results.append(exc)
        return results

    def _call(self, item: WorkItem) -> dict[str, Any]:
        out = self.fn(**item.inputs)
        if not isinstance(out, dict):
            (port,) = self.node.outputs  # one output: a bare value is it
            out = {port: out}
        missing = [p for p in item.wanted if p not in out]
        if missing:
            raise ValueError(f"returned no value for output(s) {', '.join(missing)}")
        return out
