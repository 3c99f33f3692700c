"""The heartbeat thread (optuna's ``_heartbeat.py`` shape): beat, then wait on a stop event.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine

from tracker import queue
from tracker.errors import (
    DatabaseError,
)
from workers.worker.leases import LeaseBook
from workers.worker.logs import first_line

log = logging.getLogger("tracker.worker")


class HeartbeatThread:
    """Every ``interval`` seconds: stamp the worker row and extend every lease it holds."""

    def __init__(self, engine: Engine, worker_id: int, book: LeaseBook, lease_seconds: float, interval: float,
                 jobs_done: Callable[[], int] = lambda: 0, beat: Callable[..., set[int]] = queue.heartbeat) -> None:
        self.engine, self.worker_id, self.book, self.jobs_done = engine, worker_id, book, jobs_done
        self._beat = beat
        self.lease_seconds, self.interval = lease_seconds, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval * 2))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        before = self.book.held()
        try:
            alive = self._beat(self.engine, self.worker_id, set(before.values()), self.lease_seconds,
                                    jobs_done=self.jobs_done())
        except DatabaseError as err:
            log.warning("heartbeat failed (%s); retrying in %.1fs", first_line(err), self.interval)
            return
        except Exception:  # noqa: BLE001 - the thread must outlive any error; the lease is the safety net
            log.exception("heartbeat failed")
            return
        self.beats += 1
        for job_id in self.book.note_alive(before, alive):
            log.warning("lease lost on job %d: it was reclaimed by another worker; its result will be discarded",
                        job_id)
