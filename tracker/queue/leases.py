"""Heartbeats: extend the leases a worker still holds (fenced by token) and stamp its row.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import (
    Engine,
    update,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    WorkerRow,
)
from tracker.queue.transitions import S, in_transaction, jobs


# --------------------------------------------------------------------------- heartbeat
def extend_leases(bind: Session | Engine, tokens: Collection[str], lease_seconds: float) -> set[int]:
    """Push the leases of ``tokens`` to db now + ``lease_seconds``; return the job ids still held.

    A job missing from the answer was reclaimed (or finished) under another token: fenced.
    """
    if not tokens:
        return set()

    def op(session: Session) -> set[int]:
        dialect = dialect_of(session)
        stmt = (
            update(jobs)
            .where(jobs.c.lease_token.in_(list(tokens)), jobs.c.status == S.running)
            .values(lease_expires_at=db_now(dialect, lease_seconds))
            .returning(jobs.c.id)
        )
        return set(session.execute(stmt).scalars().all())

    return in_transaction(bind, op)


def heartbeat(bind: Session | Engine, worker_id: int, tokens: Collection[str], lease_seconds: float,
              *, jobs_done: int | None = None) -> set[int]:
    """One heartbeat: stamp the worker row with db time (and its job count) and extend its
    leases, in one transaction. Returns the ids of the jobs still held."""

    def op(session: Session) -> set[int]:
        values: dict[str, Any] = {"heartbeat_at": db_now(dialect_of(session))}
        if jobs_done is not None:
            values["jobs_done"] = jobs_done
        session.execute(update(WorkerRow.__table__).where(WorkerRow.__table__.c.id == worker_id).values(**values))
        return extend_leases(session, tokens, lease_seconds)

    return in_transaction(bind, op)
