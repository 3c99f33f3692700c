"""Results computed and not yet written, backend failures, and the backend contract check.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from tracker.db.schema import JobKind
from tracker.queue import ClaimedJob

# --------------------------------------------------------------------------- the loop
FLUSH_SECONDS = 10.0  # results computed longer ago than this are written before the next group


class ComputedResults:
    """Results computed in this batch and not yet written, in the order they were computed."""

    def __init__(self) -> None:
        self._items: list[tuple[JobKind, ClaimedJob, Any]] = []
        self.seconds: dict[int, float] = {}  # scoring time per job
        self._since: float | None = None

    def add(self, kind: JobKind, job: ClaimedJob, result: Any, seconds: float) -> None:
        if self._since is None:
            self._since = time.monotonic()
        self._items.append((kind, job, result))
        self.seconds[job.id] = seconds

    def age(self) -> float:
        return 0.0 if self._since is None else time.monotonic() - self._since

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> list[tuple[JobKind, list[ClaimedJob], list]]:
        """Empty the buffer: (kind, jobs, results) per kind."""
        by_kind: dict[JobKind, tuple[list, list]] = {}
        for kind, job, result in self._items:
            jobs, results = by_kind.setdefault(kind, ([], []))
            jobs.append(job)
            results.append(result)
        self._items, self._since = [], None
        return [(kind, jobs, results) for kind, (jobs, results) in by_kind.items()]


@dataclass
class BackendFailure:
    error_type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, err: BaseException) -> BackendFailure:
        kind = type(err)
        name = kind.__name__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__name__}"
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return cls(name, str(err), text)


def check_results(tasks: list, results: list) -> list:
    """The backend contract: one result per task, same order."""
    got = [r.job_id for r in results]
    want = [t.job_id for t in tasks]
    if got != want:
        raise RuntimeError(f"backend returned results for jobs {got}, expected {want}")
    for r in results:
        if hasattr(r, "token_nlls") and len(r.token_nlls) != len(r.answer_ids):
            raise RuntimeError(f"job {r.job_id}: {len(r.token_nlls)} token NLLs for {len(r.answer_ids)} answer tokens")
    return results
