"""The one way tests wait: poll a condition under a timeout, never a bare sleep."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60, interval: float = 0.05, what: str = "condition",
             processes: Sequence[subprocess.Popen] = ()) -> T:
    """Return ``condition()``'s first truthy value; fail if none comes within ``timeout`` seconds.

    ``processes``: what the condition waits on (a server starting, say). One of them exiting
    fails the wait at once, and the failure carries their output (they are terminated first)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        exited = [p for p in processes if p.poll() is not None]
        if exited or time.monotonic() >= deadline:
            why = f"a process exited with status {exited[0].returncode}" if exited else f"not met within {timeout} s"
            raise AssertionError(f"{what}: {why}{_output(processes)}")
        time.sleep(interval)


def _output(processes: Sequence[subprocess.Popen]) -> str:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    text = "\n".join(proc.communicate(timeout=30)[0] or "" for proc in processes)
    return f"\n{text}" if text else ""
