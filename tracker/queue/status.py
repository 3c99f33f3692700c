"""What `tracker status` reports: counts by condition, failures, live workers, what is left.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
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
    as_utc,
    current_db_time,
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    Condition,
    Experiment,
    ExperimentRun,
    JobKind,
    JobStatus,
    ModelRow,
    RunJob,
)
from tracker.errors import UnknownExperimentError
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
    measured_seconds: float | None = None  # the part of the window the rate is measured over
    run_id: int | None = None
    runs: list[dict] | None = None  # the experiment's runs (id, created_at, overrides)
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
        """Jobs finished per minute over the measured span: the window, or less when the work
        started within it (the first job that finished in the window started then)."""
        seconds = self.measured_seconds or self.window_seconds
        return self.done_last_window * 60.0 / seconds if seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        remaining = sum(self.totals.get(s.value, 0) for s in (S.blocked, S.pending, S.running))
        if remaining == 0:
            return 0.0
        rate = self.jobs_per_minute / 60.0
        return remaining / rate if rate > 0 else None


MIN_MEASURED_SECONDS = 1.0


def _job_scope(experiment: str | None, run_id: int | None = None) -> list[ColumnElement[bool]]:
    if run_id is not None:
        return [jobs.c.id.in_(select(RunJob.job_id).where(RunJob.run_id == run_id))]
    return [] if experiment is None else [jobs.c.id.in_(experiment_job_ids(experiment))]


def experiment_runs(session: Session, experiment: str) -> list[dict]:
    """The runs of ``experiment``, oldest first: id, created_at, overrides (e.g. ``{"limit": 3}``)."""
    rows = session.execute(
        select(ExperimentRun.id, ExperimentRun.created_at, ExperimentRun.overrides)
        .join(Experiment, Experiment.id == ExperimentRun.experiment_id)
        .where(Experiment.name == experiment).order_by(ExperimentRun.id)
    ).all()
    return [{"run_id": r[0], "created_at": r[1], "overrides": dict(r[2] or {})} for r in rows]


def _measured_rate(session: Session, scope: list[ColumnElement[bool]], window_seconds: float) -> tuple[int, float]:
    """(jobs done in the window, seconds they were done in). The whole window when work was
    already finishing before it; else from the start of the earliest job done in it, so a run
    that began two minutes ago is not read as 2/5 of its real speed."""
    since = db_now(dialect_of(session), -window_seconds)
    count, first_start, first_finish = session.execute(
        select(func.count(), func.min(jobs.c.started_at), func.min(jobs.c.finished_at))
        .where(jobs.c.status == S.done, jobs.c.finished_at >= since, *scope)
    ).one()
    if not count:
        return 0, window_seconds
    older = session.execute(
        select(jobs.c.id).where(jobs.c.status == S.done, jobs.c.finished_at < since, *scope).limit(1)
    ).first()
    if older is not None:
        return int(count), window_seconds
    first = first_start or first_finish
    if isinstance(first, str):  # SQLite hands an aggregate back as text
        first = datetime.fromisoformat(first)
    elapsed = (current_db_time(session) - as_utc(first)).total_seconds()
    return int(count), max(min(window_seconds, elapsed), MIN_MEASURED_SECONDS)


def queue_status(
    bind: Session | Engine, experiment: str | None = None, *, run_id: int | None = None,
    window_seconds: float = 300.0, failed_limit: int = 50,
) -> StatusReport:
    """Counts by status per (condition, model, mode), throughput over the last window, live
    workers and the failed jobs with their errors; ``run_id`` narrows it to one run of ``experiment``."""

    def op(session: Session) -> StatusReport:
        check_experiment(session, experiment)
        runs = experiment_runs(session, experiment) if experiment is not None else None
        if run_id is not None and (runs is None or run_id not in {r["run_id"] for r in runs}):
            known = ", ".join(str(r["run_id"]) for r in runs or []) or "none"
            raise UnknownExperimentError(
                f"Run {run_id} is not a run of experiment {experiment!r} (its runs: {known}).",
                hint="pick one of its runs, or leave --run out for all of them"
                + ("" if experiment is not None else "; --run needs an EXPERIMENT"),
            )
        scope = _job_scope(experiment, run_id)
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
        done_recent, measured = _measured_rate(session, scope, window_seconds)
        now = db_now(dialect_of(session))
        expired = session.execute(select(func.count()).select_from(jobs).where(
            jobs.c.status == S.running, jobs.c.lease_expires_at < now, *scope)).scalar_one()
        poisoned = session.execute(select(func.count()).select_from(jobs).where(
            jobs.c.status == S.failed, jobs.c.error_type == LEASE_EXPIRED, *scope)).scalar_one()
        return StatusReport(
            experiment=experiment, counts=counts, totals=totals, done_last_window=done_recent,
            window_seconds=window_seconds, workers=list_workers(session, live_only=True),
            failed=failed_jobs(session, experiment, limit=failed_limit, run_id=run_id),
            measured_seconds=measured, run_id=run_id, runs=runs, expired_running=expired, poisoned=poisoned,
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


def failed_jobs(bind: Session | Engine, experiment: str | None = None, *, limit: int = 50,
                run_id: int | None = None) -> list[dict]:
    """Failed jobs (most recent first) with error type, message and traceback."""

    def op(session: Session) -> list[dict]:
        rows = session.execute(
            select(jobs.c.id, jobs.c.job_key, jobs.c.kind, Condition.name, ModelRow.name, jobs.c.mode,
                   jobs.c.attempts, jobs.c.error_type, jobs.c.error_message, jobs.c.error_traceback)
            .select_from(jobs.outerjoin(Condition, Condition.id == jobs.c.condition_id)
                         .outerjoin(ModelRow, ModelRow.id == jobs.c.model_id))
            .where(jobs.c.status == S.failed, *_job_scope(experiment, run_id))
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
