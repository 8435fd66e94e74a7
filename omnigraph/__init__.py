"""omnigraph: a declarative graph compiler for any-to-any multimodal ML pipelines."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "compile_plan", "load", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import omnigraph` stays cheap for the CLI
    if name in ("load", "compile_plan", "Pipeline"):
        from omnigraph import api

        return getattr(api, name)
    raise AttributeError(name)
