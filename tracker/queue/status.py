"""What `tracker status` reports: counts by condition, failures, live workers, what is left.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    Condition,
    JobKind,
    JobStatus,
    ModelRow,
)
from tracker.queue.claim import LEASE_EXPIRED
from tracker.queue.requeue import check_experiment, experiment_job_ids
from tracker.queue.transitions import S, claimable, in_transaction, jobs
from tracker.queue.worker_rows import list_workers


# --------------------------------------------------------------------------- status
@dataclass
class StatusReport:
    """``tracker status``: progress by condition and model, rate, ETA, workers, failures."""

    experiment: str | None
    counts: list[dict]
    totals: dict[str, int]
    done_last_window: int
    window_seconds: float
    workers: list[dict]
    failed: list[dict]
    expired_running: int = 0  # running jobs whose lease ran out: their worker stopped heartbeating
    poisoned: int = 0  # failed because every worker that held them died (error_type LeaseExpired)

    @property
    def notes(self) -> list[str]:
        """What a user should know and do about stuck or poisoned jobs (empty when all is well)."""
        scope = self.experiment or "EXP"
        out = []
        if self.expired_running:
            out.append(f"{self.expired_running} running job(s) have an expired lease: the worker holding them "
                       "stopped heartbeating. The next worker takes them over, one job per claim"
                       + ("; no worker is live: start one (`tracker worker`)." if not self.workers else "."))
        elif self.totals.get(S.running.value) and not self.workers:
            out.append("jobs are running but no worker is live: their leases run out soon and the next "
                       "worker (`tracker worker`) takes them over.")
        if self.poisoned:
            out.append(f"{self.poisoned} job(s) failed because every worker that held them died (a poison job: "
                       "out of memory, a crashing kernel?); their error_message says who and when. "
                       f"Fix the cause, then `tracker requeue {scope} --failed` retries them.")
        return out

    @property
    def jobs_per_minute(self) -> float:
        return self.done_last_window * 60.0 / self.window_seconds

    @property
    def eta_seconds(self) -> float | None:
        remaining = sum(self.totals.get(s.value, 0) for s in (S.blocked, S.pending, S.running))
        if remaining == 0:
            return 0.0
        rate = self.done_last_window / self.window_seconds
        return remaining / rate if rate > 0 else None


def _job_scope(experiment: str | None) -> list[ColumnElement[bool]]:
    return [] if experiment is None else [jobs.c.id.in_(experiment_job_ids(experiment))]


def queue_status(
    bind: Session | Engine, experiment: str | None = None, *, window_seconds: float = 300.0, failed_limit: int = 50
) -> StatusReport:
    """Counts by status per (condition, model, mode), throughput over the last window, live
    workers and the failed jobs with their errors."""

    def op(session: Session) -> StatusReport:
        check_experiment(session, experiment)
        scope = _job_scope(experiment)
        label = func.coalesce(Condition.name, literal("(") + jobs.c.kind + literal(")"))
        grouped = session.execute(
            select(label.label("condition"), func.coalesce(ModelRow.name, literal("")).label("model"),
                   jobs.c.mode, jobs.c.status, func.count())
            .select_from(jobs.outerjoin(Condition, Condition.id == jobs.c.condition_id)
                         .outerjoin(ModelRow, ModelRow.id == jobs.c.model_id))
            .where(*scope).group_by(label, ModelRow.name, jobs.c.mode, jobs.c.status)
        ).all()
        counts = _pivot_counts(grouped)
        totals = {s.value: sum(r[s.value] for r in counts) for s in S}
        done_recent = session.execute(
            select(func.count()).select_from(jobs).where(
                jobs.c.status == S.done, jobs.c.finished_at >= db_now(dialect_of(session), -window_seconds), *scope)
        ).scalar_one()
        now = db_now(dialect_of(session))
        expired = session.execute(select(func.count()).select_from(jobs).where(
            jobs.c.status == S.running, jobs.c.lease_expires_at < now, *scope)).scalar_one()
        poisoned = session.execute(select(func.count()).select_from(jobs).where(
            jobs.c.status == S.failed, jobs.c.error_type == LEASE_EXPIRED, *scope)).scalar_one()
        return StatusReport(
            experiment=experiment, counts=counts, totals=totals, done_last_window=done_recent,
            window_seconds=window_seconds, workers=list_workers(session, live_only=True),
            failed=failed_jobs(session, experiment, limit=failed_limit),
            expired_running=expired, poisoned=poisoned,
        )

    return in_transaction(bind, op)


def _pivot_counts(grouped: Iterable[Any]) -> list[dict]:
    table: dict[tuple, dict] = {}
    for condition, model, mode, status, n in grouped:
        row = table.setdefault((condition, model, mode), {
            "condition": condition, "model": model, "mode": mode, **{s.value: 0 for s in S}, "total": 0})
        status = status.value if isinstance(status, JobStatus) else str(status)
        row[status] += n
        row["total"] += n
    return [table[k] for k in sorted(table)]


def failed_jobs(bind: Session | Engine, experiment: str | None = None, *, limit: int = 50) -> list[dict]:
    """Failed jobs (most recent first) with error type, message and traceback."""

    def op(session: Session) -> list[dict]:
        rows = session.execute(
            select(jobs.c.id, jobs.c.job_key, jobs.c.kind, Condition.name, ModelRow.name, jobs.c.mode,
                   jobs.c.attempts, jobs.c.error_type, jobs.c.error_message, jobs.c.error_traceback)
            .select_from(jobs.outerjoin(Condition, Condition.id == jobs.c.condition_id)
                         .outerjoin(ModelRow, ModelRow.id == jobs.c.model_id))
            .where(jobs.c.status == S.failed, *_job_scope(experiment))
            .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc()).limit(limit)
        ).all()
        keys = ("job_id", "job_key", "kind", "condition", "model", "mode", "attempts",
                "error_type", "error_message", "traceback")
        return [
            {**dict(zip(keys, row)), "kind": row[2].value if isinstance(row[2], JobKind) else row[2]}
            for row in rows
        ]

    return in_transaction(bind, op)


def unfinished_jobs(bind: Session | Engine, model_ids: Collection[int] | None) -> int:
    """Jobs that a worker for ``model_ids`` (None: any model) may still get: blocked, pending
    or running, including model-less jobs."""

    def op(session: Session) -> int:
        where = [jobs.c.status.in_((S.blocked, S.pending, S.running))]
        if model_ids is not None:
            where.append(or_(jobs.c.model_id.in_(list(model_ids)), jobs.c.model_id.is_(None)))
        return session.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()

    return in_transaction(bind, op)


def models_with_claimable_jobs(bind: Session | Engine, model_ids: Collection[int] | None = None) -> list[int]:
    """Model ids (ascending) that have claimable jobs now."""

    def op(session: Session) -> list[int]:
        where = [claimable(jobs, db_now(dialect_of(session))), jobs.c.model_id.is_not(None)]
        if model_ids is not None:
            where.append(jobs.c.model_id.in_(list(model_ids)))
        return list(session.execute(
            select(jobs.c.model_id).where(*where).distinct().order_by(jobs.c.model_id)).scalars().all())

    return in_transaction(bind, op)


def model_ids_named(bind: Session | Engine, name: str) -> list[int]:
    """Ids (ascending) of the model rows named ``name`` (one per revision / dtype / attention)."""
    return in_transaction(bind, lambda session: list(session.execute(
        select(ModelRow.id).where(ModelRow.name == name).order_by(ModelRow.id)).scalars()))


def model_row(bind: Session | Engine, model_id: int) -> ModelRow | None:
    return in_transaction(bind, lambda session: session.get(ModelRow, model_id))
