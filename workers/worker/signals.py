"""Stop signals (procrastinate's ``signals.py`` shape): first SIGINT/SIGTERM = graceful, second = now.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("tracker.worker")
T = TypeVar("T")



# --------------------------------------------------------------------------- stop control
class WorkerInterrupted(BaseException):
    """A second stop signal: give the batch back now."""


class StopControl:
    """SIGINT/SIGTERM handling: first signal = graceful stop, second = hard stop.

    A hard stop raises :class:`WorkerInterrupted` only while the main thread is inside an
    ``interruptible()`` section (a backend call or an idle wait), so a database write is
    never cut in half; elsewhere it is noticed at the next safe point.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hard = False
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            self.hard = True
            log.warning("%s again: giving the batch back now", name)
            if self._interruptible:
                raise WorkerInterrupted(name)
            return
        log.info("%s: finishing the group in hand, then giving the rest back and stopping", name)
        self.requested.set()

    def check(self) -> None:
        """Raise at a safe point if a hard stop arrived meanwhile."""
        if self.hard:
            raise WorkerInterrupted("stop")

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` so that a hard stop may interrupt it."""
        self.check()
        self._interruptible = True
        try:
            return fn()
        finally:
            self._interruptible = False

    def wait(self, seconds: float) -> None:
        """Sleep, waking early on any stop request."""
        self.call(lambda: self.requested.wait(seconds))
