"""Dependants: released when what they wait for is done, failed when it fails for good.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    exists,
    select,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.queue.transitions import (
    DEPENDENCY_FAIL,
    DEPENDENCY_FAILED,
    UNBLOCK,
    S,
    deps,
    jobs,
)


# --------------------------------------------------------------------------- dependencies
def release_dependants(session: Session, done_ids: Sequence[int]) -> list[int]:
    """``blocked -> pending`` for dependants of ``done_ids`` whose dependencies are all done.

    The dependants are locked first (in id order, so concurrent completions queue up on the
    same rows instead of deadlocking) and only then re-checked by a new statement: under READ
    COMMITTED that statement sees a concurrent completion of the other dependency, so a job
    with two dependencies finishing at once is never left blocked.
    """
    if not done_ids:
        return []
    dependants = select(deps.c.job_id).where(deps.c.depends_on_id.in_(list(done_ids)))
    locked = session.execute(
        select(jobs.c.id).where(jobs.c.id.in_(dependants), jobs.c.status == S.blocked)
        .order_by(jobs.c.id).with_for_update()
    ).scalars().all()
    if not locked:
        return []
    dep, parent = deps.alias("dep"), jobs.alias("parent")
    unfinished = exists().where(dep.c.job_id == jobs.c.id, dep.c.depends_on_id == parent.c.id, parent.c.status != S.done)
    stmt = UNBLOCK.update(jobs.c.id.in_(locked), ~unfinished).returning(jobs.c.id)
    return sorted(session.execute(stmt).scalars().all())


def fail_dependants(session: Session, failed_id: int, reason: str) -> list[int]:
    """Fail every blocked job that (transitively) waits on ``failed_id``, naming the reason."""
    failed: list[int] = []
    frontier = [(failed_id, reason)]
    dialect = dialect_of(session)
    while frontier:
        parent_id, parent_reason = frontier.pop()
        key = session.execute(select(jobs.c.job_key).where(jobs.c.id == parent_id)).scalar_one()
        message = f"dependency job {parent_id} ({key}) failed: {parent_reason}"
        children = select(deps.c.job_id).where(deps.c.depends_on_id == parent_id)
        locked = session.execute(  # in id order, like release_dependants, so the two never deadlock
            select(jobs.c.id).where(jobs.c.id.in_(children), jobs.c.status == S.blocked)
            .order_by(jobs.c.id).with_for_update()
        ).scalars().all()
        if not locked:
            continue
        stmt = DEPENDENCY_FAIL.update(
            jobs.c.id.in_(list(locked)),
            error_type=DEPENDENCY_FAILED, error_message=message, error_traceback=None,
            finished_at=db_now(dialect),
        ).returning(jobs.c.id)
        for child in sorted(session.execute(stmt).scalars().all()):
            failed.append(child)
            frontier.append((child, f"{DEPENDENCY_FAILED}: {message}"))
    return failed
