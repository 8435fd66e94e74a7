"""Running omnigraph in a subprocess where the compiler is not installed, as far as Python can tell.

A `sitecustomize` wraps every import finder so that xdsl, lark, pulp, jinja2 and the
compiler's own packages (omnigraph.dialect, .passes, .codegen, .frontend, .compiler)
are not found: `import` raises ModuleNotFoundError and `importlib.util.find_spec`
returns None, exactly as in an environment without them (so libraries that merely
probe for jinja2, as transformers does, behave as they would there). Every lookup of a
hidden name is logged, so a test can tell which code asked for what.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HIDDEN = ("xdsl", "lark", "pulp", "jinja2", "omnigraph.dialect", "omnigraph.passes", "omnigraph.codegen",
          "omnigraph.frontend", "omnigraph.compiler")

SITECUSTOMIZE = '''
import os, sys

_HIDDEN = {hidden!r}
_LOG = os.environ.get("OMNIGRAPH_HIDDEN_LOG")


def _hidden(name):
    return any(name == h or name.startswith(h + ".") for h in _HIDDEN)


def _requester():
    """The module whose code asked for the name (past the import machinery)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib"))
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


class _Hide:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if _hidden(name):
            if _LOG:
                with open(_LOG, "a") as f:
                    f.write(f"{{name}} {{_requester()}}\\n")
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.inner, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def runtime_only_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment, log of hidden lookups) for a subprocess without the compiler."""
    site = tmp_path / "runtime_only_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=HIDDEN))
    log = tmp_path / "hidden_lookups.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMNIGRAPH_HIDDEN_LOG": str(log), "PYTHONWARNINGS": "ignore"}
    return env, log


def run_runtime_only(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python ARGS…` with the compiler hidden (see runtime_only_env)."""
    env, _ = runtime_only_env(tmp_path)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


def hidden_lookups(tmp_path: Path) -> set[tuple[str, str]]:
    """(hidden name, module that looked it up) for every lookup the subprocesses made."""
    log = tmp_path / "hidden_lookups.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return {tuple(line.split(" ", 1)) for line in lines}  # type: ignore[misc]
