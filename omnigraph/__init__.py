"""omnigraph: a declarative graph compiler for any-to-any multimodal ML pipelines."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "PipelineSpec", "QueueFull", "RequestFailed", "SettingsError", "compile", "compile_plan",
           "load", "__version__"]

# name -> the module it lives in; imported on first use, so `import omnigraph` stays cheap
_LAZY = {"load": "omnigraph.api", "compile": "omnigraph.api", "compile_plan": "omnigraph.api",
         "Pipeline": "omnigraph.api", "PipelineSpec": "omnigraph.spec", "RequestFailed": "omnigraph.runtime.engine",
         "QueueFull": "omnigraph.runtime.engine", "SettingsError": "omnigraph.runtime.request_settings"}

if TYPE_CHECKING:
    from omnigraph.api import Pipeline, compile, compile_plan, load
    from omnigraph.runtime.engine import QueueFull, RequestFailed
    from omnigraph.runtime.request_settings import SettingsError
    from omnigraph.spec import PipelineSpec


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnigraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
