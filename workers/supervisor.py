"""Running workers: one in this process, or ``--concurrency N`` child processes.

Children are plain ``pgclip worker`` processes (each loads its own model and
claims its own batches), so running N here is no different from running one
on each of N hosts. Signals are forwarded: the first asks every child to
finish its batch and exit; a second one kills them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("pgclip.worker")


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once (leases then expire)."""
    received = threading.Event()

    def handler(signum, frame):
        if received.is_set():
            log.warning("second signal: exiting now; claimed jobs return when their leases expire")
            os._exit(128 + signum)
        received.set()
        log.warning("stopping: finishing the batch in hand (signal again to exit at once)")
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_children(concurrency: int, child_args: list[str], *, threads_per_child: int) -> int:
    """Start ``concurrency`` worker processes and wait for all; returns the worst exit status."""
    env = dict(os.environ)
    env.setdefault("PGCLIP_TORCH_THREADS", str(threads_per_child))
    children = [
        subprocess.Popen([sys.executable, "-m", "pgclip.cli", "worker", *child_args], env=env)
        for _ in range(concurrency)
    ]
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        sig = signal.SIGKILL if len(received) > 1 else signum
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if received and all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes):
        return 0
    return max(codes, key=abs)
