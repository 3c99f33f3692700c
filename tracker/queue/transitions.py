"""The job lifecycle written once, as data: each allowed edge is a :class:`Transition`.

Every change of a job's status is Transition.update(...): an UPDATE that checks the
current status, so a job can only move along these edges (the package docstring draws them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Engine,
    Update,
    and_,
    or_,
    update,
)
from sqlalchemy.orm import Session

from tracker.db import session_scope
from tracker.db.schema import (
    Job,
    JobDependency,
    JobStatus,
)

DEFAULT_LEASE_SECONDS = 60.0
DEPENDENCY_FAILED = "DependencyFailed"

jobs = Job.__table__
deps = JobDependency.__table__
T = TypeVar("T")


# --------------------------------------------------------------------------- transitions
@dataclass(frozen=True)
class Transition:
    """One allowed edge of the job lifecycle: ``sources`` -> ``target``."""

    name: str
    sources: tuple[JobStatus, ...]
    target: JobStatus

    def update(self, *where: ColumnElement[bool], **values: Any) -> Update:
        """``UPDATE jobs SET status=target, ... WHERE status IN sources AND <where>``."""
        return (
            update(jobs)
            .where(jobs.c.status.in_(self.sources), *where)
            .values(status=self.target, **values)
        )


S = JobStatus
UNBLOCK = Transition("unblock", (S.blocked,), S.pending)
CLAIM = Transition("claim", (S.pending, S.running), S.running)  # running: expired lease only
COMPLETE = Transition("complete", (S.running,), S.done)
RETRY = Transition("retry", (S.running,), S.pending)
FAIL = Transition("fail", (S.running,), S.failed)
RELEASE = Transition("release", (S.running,), S.pending)
DEPENDENCY_FAIL = Transition("dependency_failed", (S.blocked,), S.failed)
REQUEUE = Transition("requeue", (S.failed,), S.pending)
REBLOCK = Transition("reblock", (S.pending,), S.blocked)  # requeued job whose dependency is not done
REQUEUE_STALE = Transition("requeue_stale", (S.running,), S.pending)  # expired lease only
UNLOADABLE = Transition("model_unloadable", (S.pending, S.blocked), S.failed)  # its model cannot load anywhere


# --------------------------------------------------------------------------- helpers
def in_transaction(bind: Session | Engine, op: Callable[[Session], T]) -> T:
    """Run ``op`` in the caller's session, or in a fresh transaction of its own."""
    if isinstance(bind, Session):
        return op(bind)
    with session_scope(bind) as session:
        return op(session)


def claimable(table, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(
        table.c.status == S.pending,
        and_(table.c.status == S.running, table.c.lease_expires_at < now),
    )


def for_model(table, model_id: Any) -> ColumnElement[bool]:
    # Jobs without a model (stage selections) can be run by any worker.
    if model_id is None:
        return table.c.model_id.is_(None)
    return or_(table.c.model_id == model_id, table.c.model_id.is_(None))


def same_group(a, b) -> ColumnElement[bool]:
    # NULL sample or model ids never compare equal: such a job is a group of its own.
    return and_(a.c.kind == b.c.kind, a.c.sample_id == b.c.sample_id,
                a.c.model_id == b.c.model_id, a.c.mode == b.c.mode)
