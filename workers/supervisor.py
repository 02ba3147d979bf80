"""Running workers: one in this process, or ``--concurrency N`` child processes.

Children are plain ``pgclip worker`` processes (each loads its own model and
claims its own batches), so running N here is no different from running one
on each of N hosts. Each child runs in its own session, so that Ctrl-C in a
terminal (which signals the terminal's whole process group) reaches the
parent alone, and the parent forwards it exactly once; a child stops by
itself when its parent dies (``PR_SET_PDEATHSIG`` on Linux, else it notices
that its parent process changed).

Stopping: the first SIGTERM/SIGINT asks a worker to finish the batch in hand,
give back the rest and exit 0; if that takes longer than ``STOP_TIMEOUT_SECONDS``,
or a second signal comes, it gives back everything it holds in one statement
and exits at once. A child that dies any other way (killed, crashed, hung and
stopped by its watchdog) is started again, after a backoff that grows while
children keep dying young.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pgclip.worker")

STOP_TIMEOUT_SECONDS = 30.0  # after a stop signal, the longest a worker takes before giving back what it holds
KILL_AFTER_SECONDS = 15.0  # the parent kills a child still running this long after that
PARENT_ENV = "PGCLIP_SUPERVISOR_PID"  # tells a child which process supervises it
RESTART_FIRST_SECONDS = 1.0  # wait before restarting a child that died; doubles while children die young
RESTART_MAX_SECONDS = 60.0
HEALTHY_SECONDS = 60.0  # a child that ran this long resets the backoff
GIVE_UP_AFTER = 5  # restarts in a row of children that died within START_FAILURE_SECONDS: stop restarting
START_FAILURE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def install_signal_handlers(stop: Callable[[], None], give_back: Callable[[], bool]) -> None:
    """First SIGTERM/SIGINT: ``stop()`` (finish the batch in hand, give back the rest).
    A second one, or ``STOP_TIMEOUT_SECONDS`` without having exited: ``give_back()`` what is
    held in one statement and exit (0 when nothing was left held, else 1)."""
    received = threading.Event()
    lock = threading.Lock()

    def exit_now(why: str) -> None:
        if not lock.acquire(blocking=False):
            return  # already on its way out
        log.warning("%s: giving back the jobs in hand and exiting now", why)
        ok = give_back()
        sys.stderr.flush()
        os._exit(0 if ok else 1)

    def handler(signum, frame):
        if received.is_set():
            # Not in the handler itself: the main thread may be anywhere (inside the model).
            threading.Thread(target=exit_now, args=("second signal",), daemon=True).start()
            return
        received.set()
        log.warning("stopping: finishing the batch in hand, giving back the rest (signal again to exit at once)")
        timer = threading.Timer(STOP_TIMEOUT_SECONDS, exit_now, args=(f"not stopped after {STOP_TIMEOUT_SECONDS:.0f}s",))
        timer.daemon = True
        timer.start()
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def supervising_parent() -> int | None:
    """In a child of ``--concurrency``: its parent's pid, after asking the kernel to send SIGTERM
    when that parent dies. Exits at once if the parent is already gone."""
    value = os.environ.pop(PARENT_ENV, None)
    if not value:
        return None
    parent = int(value)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog thread notices the parent's death within a second anyway
    if os.getppid() != parent:  # died before the request above
        sys.exit(0)
    return parent


class _Slot:
    """One child position: the running process and its restart history."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0  # deaths in a row of children that did not run HEALTHY_SECONDS
        self.restart_at: float | None = None
        self.code: int | None = None  # the final exit status, once the slot is finished


def run_children(concurrency: int, child_args: list[str], *, threads_per_child: int,
                 slot_args: Callable[[int], list[str]] | None = None) -> int:
    """Run ``concurrency`` worker processes, restarting those that die abnormally, until all
    have ended; returns 0 when they ended well (or were stopped by a signal), else the worst status.

    ``slot_args(i)``: arguments of the i-th child (from 0) alone, the same for each child
    that takes its place (its metrics port, say)."""
    env = dict(os.environ)
    env.setdefault("PGCLIP_TORCH_THREADS", str(threads_per_child))
    env[PARENT_ENV] = str(os.getpid())
    # -P: the current folder is not put first on the children's sys.path, where a folder named
    # pgclip (a checkout, say ~/pgclip run from ~) would shadow the installed package.
    command = [sys.executable, "-P", "-m", "pgclip.cli", "worker", *child_args]
    slots = [_Slot(i) for i in range(concurrency)]
    signals: list[int] = []
    wake = threading.Event()

    def start(slot: _Slot) -> None:
        own = slot_args(slot.index) if slot_args else []
        slot.proc = subprocess.Popen([*command, *own], env=env, start_new_session=True)
        slot.started = time.monotonic()
        slot.restart_at = None

    def forward(signum, frame):
        signals.append(signum)
        # Every signal once to each child: the first asks for a clean stop, a second cuts it short.
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        wake.set()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in slots:
        start(slot)
    first_signal_at: float | None = None
    while any(slot.code is None for slot in slots):
        wake.wait(0.2)
        wake.clear()
        now = time.monotonic()
        if signals and first_signal_at is None:
            first_signal_at = now
        if first_signal_at is not None and now - first_signal_at > STOP_TIMEOUT_SECONDS + KILL_AFTER_SECONDS:
            for slot in slots:  # a child stuck past its own stop timeout (it never is, but bounded is bounded)
                if slot.proc is not None and slot.proc.poll() is None:
                    log.error("worker process %d did not stop; killing it", slot.proc.pid)
                    slot.proc.kill()
        for slot in slots:
            if slot.code is not None:
                continue
            if slot.proc is None:  # waiting to be restarted
                if signals:
                    slot.code = 0
                elif now >= slot.restart_at:
                    start(slot)
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            if signals or code == 0:
                slot.code = code  # stopped, or done (--until-empty)
                continue
            ran = now - slot.started
            slot.failures = 0 if ran >= HEALTHY_SECONDS else slot.failures + 1
            if ran < START_FAILURE_SECONDS and slot.failures >= GIVE_UP_AFTER:
                log.error("worker process %d keeps failing at start-up (%s); not restarting it",
                          slot.proc.pid, _describe(code))
                slot.code = code
                continue
            delay = min(RESTART_FIRST_SECONDS * 2 ** max(slot.failures - 1, 0), RESTART_MAX_SECONDS)
            log.warning("worker process %d %s after %.0fs; starting another in %.0fs",
                        slot.proc.pid, _describe(code), ran, delay)
            slot.proc = None
            slot.restart_at = now + delay
    codes = [slot.code or 0 for slot in slots]
    if all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes):
        return 0
    return max(codes, key=abs)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    from pgclip.workers.liveness import EXIT_HUNG

    return "was hung (its watchdog stopped it)" if code == EXIT_HUNG else f"exited with status {code}"
