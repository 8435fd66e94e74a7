"""Large stage outputs stay in Ray's object store: the producing actor puts them there and
the driver passes only the reference on, so a tensor goes from actor to actor without
passing through the driver. The driver fetches a value only when it reads it itself (a
pipeline output, a route key, a loop condition)."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

INLINE_BYTES = 256 * 1024  # smaller values travel inside the messages


@dataclass(frozen=True)
class RemoteValue:
    ref: Any  # ray.ObjectRef

    def get(self, timeout: float | None = None) -> Any:
        import ray

        return ray.get(self.ref, timeout=timeout)


def pack(value: Any) -> Any:
    """`value`, or a RemoteValue when it is a large tensor or array."""
    nbytes = _nbytes(value)
    if nbytes is None or nbytes < INLINE_BYTES:
        return value
    import ray

    return RemoteValue(ray.put(value))


def resolve(value: Any, timeout: float | None = None) -> Any:
    """The value itself, fetching RemoteValues (also inside lists)."""
    if isinstance(value, RemoteValue):
        return value.get(timeout)
    if isinstance(value, list):
        return [resolve(v, timeout) for v in value]
    return value


def portable(exc: BaseException) -> BaseException:
    """An exception that survives pickling to the driver (its text, when it does not)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _nbytes(value: Any) -> int | None:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
    except ImportError:  # pragma: no cover
        pass
    nbytes = getattr(value, "nbytes", None)  # numpy
    return nbytes if isinstance(nbytes, int) else None
