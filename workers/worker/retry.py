"""Database calls that outlive an outage: retried with backoff while the database is away.

A lost connection (:class:`DatabaseUnavailable`) is retried until it comes back or
``max_outage_seconds`` pass; a lost race (:class:`TransientDatabaseError`: deadlock,
serialization failure, SQLite lock) is retried a few times. Which is which is decided once,
by error code, in :mod:`tracker.db.errors`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tracker.errors import DatabaseUnavailable, TransientDatabaseError
from workers.worker.logs import first_line
from workers.worker.signals import StopControl

log = logging.getLogger("tracker.worker")
T = TypeVar("T")
TRANSIENT_TRIES = 5


def retry_database(what: str, op: Callable[[], T], *, stop: StopControl, patient: bool = True,
                   default: Any = ..., max_outage_seconds: float = 900.0) -> T:
    """Run a database operation, retrying a lost connection with backoff.

    ``patient`` operations (writing results in hand) keep trying through a stop request
    for up to ``max_outage_seconds``; impatient ones (claims, releases) give up on a stop
    and return ``default``.
    """
    delay, started, transient_tries = 0.25, time.monotonic(), 0
    while True:
        try:
            return op()
        except DatabaseUnavailable as err:
            reason = first_line(err)
        except TransientDatabaseError as err:
            if transient_tries >= TRANSIENT_TRIES:
                raise
            transient_tries += 1
            reason = first_line(err)
        gave_up = (not patient and stop.requested.is_set()) or (time.monotonic() - started > max_outage_seconds)
        if gave_up:
            if default is not ...:
                log.warning("database unavailable during %s (%s); giving up", what, reason)
                return default
            raise DatabaseUnavailable(f"The database stayed unavailable during {what}: {reason}")
        log.warning("database unavailable during %s (%s); retrying in %.2fs", what, reason, delay)
        if patient:
            time.sleep(delay)
        else:
            stop.wait(delay)
        delay = min(delay * 2, 10.0)
