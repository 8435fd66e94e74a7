"""One Ray cluster for a test session, inside a fresh network namespace.

Ray binds to the machine's addresses; in a namespace of its own with only loopback up,
it can reach nothing and nothing can reach it. The pytest process is not in that
namespace, so the cluster lives in a child process (`ray_scenarios.py`, started under
`unshare -n`) that runs named scenarios on request and answers with JSON: the tests
send a name, wait (bounded) for the answer and assert on it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARK = "@@omnigraph-ray@@"
START_TIMEOUT_S = 120.0


def unavailable() -> str | None:
    """Why a Ray session cannot run here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed to run Ray in a network namespace"
    if os.geteuid() != 0:
        return "a network namespace needs root"
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'omnigraph[ray]')"
    return None


class RaySession:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("RAY_DEDUP_LOGS", "0")
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
               sys.executable, "-u", str(HERE / "ray_scenarios.py")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=ROOT, env=env)
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: deque[str] = deque(maxlen=60)  # the child's other output, shown when something fails
        threading.Thread(target=self._read, daemon=True).start()
        self._wait("start", START_TIMEOUT_S)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.answers.put(json.loads(line[len(MARK):]))
            else:
                self.log.append(line.rstrip())
        self.answers.put({"error": f"the Ray session exited (code {self.proc.wait()})"})

    def _wait(self, what: str, timeout: float) -> dict[str, Any]:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{what}: no answer within {timeout:.0f}s\n" + "\n".join(self.log)) from None
        if "error" in answer:
            raise AssertionError(f"{what} failed:\n{answer['error']}\n--- session output ---\n" + "\n".join(self.log))
        return answer

    def run(self, scenario: str, timeout: float = 180.0, **args: Any) -> dict[str, Any]:
        """Run `scenario` in the session; its answer (raises with its traceback if it failed)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"scenario": scenario, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self._wait(scenario, timeout)

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"scenario": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=30)
