"""Turn claimed job rows into the job contracts (:mod:`tracker.contracts`).

A scoring job becomes a :class:`ScoreTask` (sample dict, condition dict and, for LLM
surrogate conditions, the surrogate text named by ``payload["surrogate"]``); a generation
job becomes a :class:`GenerateTask` from ``payload = {"kind", "prompt", "prompt_hash",
"max_new_tokens"}``. Everything a batch needs is read in a few queries, not one per job.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.orm import Session

from tracker.contracts import GenerateTask, ScoreTask
from tracker.db import session_scope
from tracker.db.schema import Condition, JobKind, Sample, Surrogate
from tracker.errors import TrackerError
from tracker.queue.claim import ClaimedJob, claim_batch, take_over_expired_job


class TaskBuildError(TrackerError):
    """A claimed job cannot be turned into a task (missing row or malformed payload)."""


def condition_dict(condition: Condition) -> dict:
    """The condition as backends see it: {"name", "kind", "params"}."""
    return {"name": condition.name, "kind": condition.kind, "params": dict(condition.params or {})}


def surrogate_ref(job: ClaimedJob) -> tuple[int, str, str, int] | None:
    """(sample, kind, prompt hash, generator model) of the surrogate a scoring job needs, if any."""
    ref = (job.payload or {}).get("surrogate")
    if not ref:
        return None
    try:
        return (job.sample_id, str(ref["kind"]), str(ref["prompt_hash"]), int(ref["generator_model_id"]))
    except (KeyError, TypeError, ValueError) as err:
        raise TaskBuildError(
            f"Job {job.id} has a malformed payload['surrogate'] {ref!r} ({err}).",
            hint="re-enqueue the experiment; the payload needs kind, prompt_hash and generator_model_id",
        ) from err


@dataclass
class BuiltTasks:
    """Tasks by job id, and the jobs that could not be built with the reason."""

    tasks: dict[int, ScoreTask | GenerateTask] = field(default_factory=dict)
    errors: dict[int, TrackerError] = field(default_factory=dict)


def build_tasks(session: Session, claimed: Sequence[ClaimedJob]) -> BuiltTasks:
    """Request dataclasses for the score and generate jobs of ``claimed`` (other kinds are skipped)."""
    wanted = [j for j in claimed if j.kind in (JobKind.score, JobKind.generate)]
    samples = _load(session, Sample, {j.sample_id for j in wanted if j.sample_id is not None})
    conditions = _load(session, Condition, {j.condition_id for j in wanted if j.condition_id is not None})
    built = BuiltTasks()
    refs: dict[int, tuple] = {}
    for job in wanted:
        try:
            ref = surrogate_ref(job) if job.kind == JobKind.score else None
        except TaskBuildError as err:
            built.errors[job.id] = err
            continue
        if ref is not None:
            refs[job.id] = ref
    surrogates = _load_surrogates(session, set(refs.values()))
    for job in wanted:
        if job.id in built.errors:
            continue
        try:
            built.tasks[job.id] = _build_one(job, samples, conditions, surrogates, refs.get(job.id))
        except TaskBuildError as err:
            built.errors[job.id] = err
    return built


def _load(session: Session, model, ids: set[int]) -> dict:
    if not ids:
        return {}
    return {row.id: row for row in session.execute(select(model).where(model.id.in_(sorted(ids)))).scalars()}


def _load_surrogates(session: Session, refs: set[tuple]) -> dict[tuple, str]:
    if not refs:
        return {}
    key = tuple_(Surrogate.sample_id, Surrogate.kind, Surrogate.prompt_hash, Surrogate.generator_model_id)
    rows = session.execute(
        select(Surrogate.sample_id, Surrogate.kind, Surrogate.prompt_hash, Surrogate.generator_model_id,
               Surrogate.text).where(key.in_(sorted(refs)))
    ).all()
    return {tuple(row[:4]): row[4] for row in rows}


def _build_one(job: ClaimedJob, samples: dict, conditions: dict, surrogates: dict,
               ref: tuple | None) -> ScoreTask | GenerateTask:
    sample = samples.get(job.sample_id)
    if sample is None:
        raise TaskBuildError(f"Job {job.id} points at sample {job.sample_id}, which does not exist.")
    if job.kind == JobKind.generate:
        return _generate_task(job, sample)
    condition = conditions.get(job.condition_id)
    if condition is None:
        raise TaskBuildError(f"Job {job.id} points at condition {job.condition_id}, which does not exist.")
    text = None
    if ref is not None:
        text = surrogates.get(ref)
        if text is None:
            raise TaskBuildError(
                f"Job {job.id} needs the {ref[1]!r} surrogate of sample {ref[0]} (prompt {ref[2]}, "
                f"generator model {ref[3]}), which has not been generated.",
                hint="its generation job must finish first; check `tracker status` for failed generation jobs",
            )
    return ScoreTask(job_id=job.id, mode=job.mode, sample=sample.as_dict(),
                     condition=condition_dict(condition), surrogate_text=text)


def _generate_task(job: ClaimedJob, sample: Sample) -> GenerateTask:
    payload = job.payload or {}
    try:
        return GenerateTask(job_id=job.id, sample=sample.as_dict(), kind=str(payload["kind"]),
                            prompt=str(payload["prompt"]), max_new_tokens=int(payload["max_new_tokens"]))
    except (KeyError, TypeError, ValueError) as err:
        raise TaskBuildError(
            f"Generation job {job.id} has a malformed payload ({err}); it needs kind, prompt, "
            "prompt_hash and max_new_tokens.",
            hint="re-enqueue the experiment",
        ) from err


def claim_tasks(engine: Engine, worker_id: int, model_id: int | None, n: int, lease_seconds: float,
                generation_n: int | None = None, take_over_expired: bool = True,
                ) -> tuple[list[ClaimedJob], BuiltTasks]:
    """Claim a batch and read its tasks in one transaction (a failed read claims nothing).

    Expired leases first (one job, alone; see :mod:`tracker.queue.claim`) unless
    ``take_over_expired`` is False; then, with ``generation_n``, generation jobs on a budget
    of their own (up to ``generation_n`` surrogates in one batched ``generate``); otherwise up
    to ``n`` jobs.
    """
    with session_scope(engine) as session:
        taken_over = take_over_expired_job(session, worker_id, model_id, lease_seconds) if take_over_expired else None
        batch = [taken_over] if taken_over is not None else []
        if not batch and generation_n:
            batch = claim_batch(session, worker_id, model_id, generation_n, lease_seconds, kind=JobKind.generate,
                                take_over_expired=False)
        if not batch:
            batch = claim_batch(session, worker_id, model_id, n, lease_seconds, take_over_expired=False)
        return batch, build_tasks(session, batch)
