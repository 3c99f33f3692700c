"""SIGINT and SIGTERM cancel a running statement on the database before the client exits.

Without this, SIGTERM (what ``timeout``, ``kill`` and job schedulers send) ends the client
at once and leaves the server still running its query, and SQLite never sees Ctrl-C
because no Python code runs while it steps a statement.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CancelRequest:
    """Which signal asked to stop (if any) and the callback that stops the running statement."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._callback: Callable[[], None] | None = None
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else ""

    def on_cancel(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (from a thread) when a signal arrives; at once if one already has."""
        with self._lock:
            self._callback = callback
            fire = callback is not None and self.requested
        if fire:
            _run_detached(callback)

    def trigger(self, signal_number: int) -> None:
        with self._lock:
            if self.requested:
                return
            self.signal_number = signal_number
            callback = self._callback
        if callback is not None:
            _run_detached(callback)


def _run_detached(callback: Callable[[], None]) -> None:
    # A thread, not the handler itself: the handler runs between two bytecodes of the main
    # thread, which may be inside the driver waiting on the very connection to cancel.
    threading.Thread(target=callback, name="cancel-statement", daemon=True).start()


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[CancelRequest]:
    """While active, the first SIGINT/SIGTERM triggers the request instead of ending the process.

    The previous handlers come back after the first signal, so a second one acts as usual
    (Ctrl-C twice raises KeyboardInterrupt, SIGTERM twice ends the process). Outside the
    main thread (no signals there) the request simply never triggers.
    """
    request = CancelRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in CANCEL_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def handler(signal_number: int, _frame) -> None:
        restore()
        request.trigger(signal_number)

    for sig in CANCEL_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        restore()
