"""The jobs a worker holds, by lease token, shared between the loop and the heartbeat.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

from tracker.queue import ClaimedJob


# --------------------------------------------------------------------------- leases
class LeaseBook:
    """The jobs this worker holds, by lease token, shared with the heartbeat thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}  # job id -> lease token
        self._finishing: set[int] = set()
        self.lost: set[int] = set()

    def hold(self, claimed: Sequence[ClaimedJob]) -> None:
        with self._lock:
            self._held.update({job.id: job.lease_token for job in claimed})

    def finishing(self, job_ids: Sequence[int]) -> None:
        """Jobs whose completion is being written: the heartbeat must not call them lost."""
        with self._lock:
            self._finishing.update(job_ids)

    def drop(self, job_ids: Sequence[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._held.pop(job_id, None)
                self._finishing.discard(job_id)

    def held(self) -> dict[int, str]:
        with self._lock:
            return dict(self._held)

    def tokens(self) -> set[str]:
        with self._lock:
            return set(self._held.values())

    def note_alive(self, before: dict[int, str], alive: set[int]) -> list[int]:
        """After a heartbeat: jobs held before it that the database no longer gives us."""
        with self._lock:
            newly = [j for j in before if j not in alive and j in self._held
                     and j not in self._finishing and j not in self.lost]
            self.lost.update(newly)
            return newly

    def is_lost(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self.lost
