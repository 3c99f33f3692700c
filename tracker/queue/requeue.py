"""Bringing failed or stale jobs back to the queue (`tracker requeue`).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    Engine,
    Select,
    exists,
    select,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    Experiment,
    ExperimentRun,
    RunJob,
)
from tracker.errors import UnknownExperimentError
from tracker.queue.transitions import (
    REBLOCK,
    REQUEUE,
    REQUEUE_STALE,
    S,
    deps,
    in_transaction,
    jobs,
)


# --------------------------------------------------------------------------- requeue
def experiment_job_ids(experiment: str) -> Select:
    """Ids of every job any run of ``experiment`` needs (a SELECT to embed)."""
    return (
        select(RunJob.job_id)
        .join(ExperimentRun, ExperimentRun.id == RunJob.run_id)
        .join(Experiment, Experiment.id == ExperimentRun.experiment_id)
        .where(Experiment.name == experiment)
    )


def check_experiment(session: Session, experiment: str | None) -> None:
    if experiment is None:
        return
    if session.execute(select(Experiment.id).where(Experiment.name == experiment)).first() is None:
        known = session.execute(select(Experiment.name).order_by(Experiment.name)).scalars().all()
        raise UnknownExperimentError(
            f"No experiment named {experiment!r} in this database (known: {', '.join(known) or 'none'}).",
            hint=f"enqueue it first (`tracker enqueue {experiment}`) or pick one of the known names",
        )


def _with_failed_upstream(session: Session, ids: set[int]) -> set[int]:
    """``ids`` plus every failed job they (transitively) depend on."""
    frontier = set(ids)
    while frontier:
        upstream = session.execute(
            select(deps.c.depends_on_id).join(jobs, jobs.c.id == deps.c.depends_on_id)
            .where(deps.c.job_id.in_(list(frontier)), jobs.c.status == S.failed)
        ).scalars().all()
        frontier = set(upstream) - ids
        ids |= frontier
    return ids


@dataclass(frozen=True)
class RequeueReport:
    pending: int = 0
    blocked: int = 0
    stale: int = 0


def requeue_failed(bind: Session | Engine, experiment: str | None = None) -> RequeueReport:
    """Failed jobs of ``experiment`` (all when None), and the failed jobs they wait on, run again.

    Attempts and errors are reset; a job whose dependencies are not all done goes back to
    blocked, the rest to pending.
    """

    def op(session: Session) -> RequeueReport:
        check_experiment(session, experiment)
        failed = select(jobs.c.id).where(jobs.c.status == S.failed)
        if experiment is not None:
            failed = failed.where(jobs.c.id.in_(experiment_job_ids(experiment)))
        ids = _with_failed_upstream(session, set(session.execute(failed).scalars().all()))
        if not ids:
            return RequeueReport()
        requeued = session.execute(REQUEUE.update(
            jobs.c.id.in_(sorted(ids)), attempts=0, error_type=None, error_message=None, error_traceback=None,
            lease_token=None, lease_expires_at=None, worker_id=None, started_at=None, finished_at=None,
        ).returning(jobs.c.id)).scalars().all()
        parent = jobs.alias("parent")
        unfinished = exists().where(deps.c.job_id == jobs.c.id, deps.c.depends_on_id == parent.c.id,
                                    parent.c.status != S.done)
        reblocked = session.execute(
            REBLOCK.update(jobs.c.id.in_(list(requeued)), unfinished).returning(jobs.c.id)
        ).scalars().all()
        return RequeueReport(pending=len(requeued) - len(reblocked), blocked=len(reblocked))

    return in_transaction(bind, op)


def requeue_stale(bind: Session | Engine, experiment: str | None = None) -> RequeueReport:
    """Running jobs whose lease expired go back to pending now (a claim would take them anyway)."""

    def op(session: Session) -> RequeueReport:
        check_experiment(session, experiment)
        where = [jobs.c.lease_expires_at < db_now(dialect_of(session))]
        if experiment is not None:
            where.append(jobs.c.id.in_(experiment_job_ids(experiment)))
        stale = session.execute(REQUEUE_STALE.update(
            *where, lease_token=None, lease_expires_at=None, worker_id=None,
        ).returning(jobs.c.id)).scalars().all()
        return RequeueReport(stale=len(stale))

    return in_transaction(bind, op)
