"""A job's failure (retried while attempts are left) and giving a batch back on shutdown.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import (
    Engine,
    case,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.queue.dependencies import fail_dependants
from tracker.queue.transitions import (
    FAIL,
    RELEASE,
    RETRY,
    UNLOADABLE,
    in_transaction,
    jobs,
)


# --------------------------------------------------------------------------- fail / release
@dataclass(frozen=True)
class FailOutcome:
    """``status``: "pending" (will be retried), "failed" (for good) or "lost" (not our lease)."""

    status: str
    dependants_failed: tuple[int, ...] = ()


def fail_job(
    bind: Session | Engine,
    job_id: int,
    token: str,
    error_type: str,
    message: str,
    traceback_text: str | None = None,
) -> FailOutcome:
    """Record an error on a job held under ``token``; retry it while attempts are left, else
    hold it as failed and fail its dependants with the reason."""

    def op(session: Session) -> FailOutcome:
        dialect = dialect_of(session)
        error = {"error_type": error_type[:256], "error_message": message, "error_traceback": traceback_text}
        mine = (jobs.c.id == job_id, jobs.c.lease_token == token)
        retried = session.execute(
            RETRY.update(*mine, jobs.c.attempts < jobs.c.max_attempts,
                         lease_token=None, lease_expires_at=None, worker_id=None, **error).returning(jobs.c.id)
        ).first()
        if retried is not None:
            return FailOutcome("pending")
        failed = session.execute(
            FAIL.update(*mine, lease_token=None, lease_expires_at=None, finished_at=db_now(dialect), **error)
            .returning(jobs.c.id)
        ).first()
        if failed is None:
            return FailOutcome("lost")
        children = fail_dependants(session, job_id, f"{error_type}: {message}")
        return FailOutcome("failed", tuple(children))

    return in_transaction(bind, op)


def release_batch(bind: Session | Engine, token: str, job_ids: Collection[int] | None = None) -> list[int]:
    """Give back jobs still held under ``token`` (shutdown): pending again, attempt not counted."""

    def op(session: Session) -> list[int]:
        where = [jobs.c.lease_token == token]
        if job_ids is not None:
            where.append(jobs.c.id.in_(list(job_ids)))
        stmt = RELEASE.update(
            *where, lease_token=None, lease_expires_at=None, worker_id=None, started_at=None,
            attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
        ).returning(jobs.c.id)
        return sorted(session.execute(stmt).scalars().all())

    return in_transaction(bind, op)


def fail_model_jobs(bind: Session | Engine, model_id: int, error_type: str, message: str) -> list[int]:
    """Fail every pending or blocked job of a model that cannot be loaded anywhere (a folder
    with a broken config or without weights), and their dependants; returns the ids failed."""

    def op(session: Session) -> list[int]:
        now = db_now(dialect_of(session))
        ids = sorted(session.execute(
            UNLOADABLE.update(jobs.c.model_id == model_id, lease_token=None, lease_expires_at=None, finished_at=now,
                              error_type=error_type[:256], error_message=message, error_traceback=None)
            .returning(jobs.c.id)).scalars())
        out = list(ids)
        for job_id in ids:
            out += fail_dependants(session, job_id, f"{error_type}: {message}")
        return sorted(set(out))

    return in_transaction(bind, op)
