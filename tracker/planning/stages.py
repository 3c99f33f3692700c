"""Stage selections: exp03's "hardest 40% by bare NLL per dataset", stored, then acted on.

A ``select`` job (created by :mod:`tracker.enqueue`) depends on the stage-1 jobs of the
selecting condition for one dataset of one run. When they are all done the queue releases
it and a worker calls :func:`perform_selection`, which

1. ranks the samples by those scores (highest NLL first, ties by sample id) and keeps the
   ``ceil(fraction * n)`` hardest;
2. stores a :class:`~tracker.db.schema.Selection` with one
   :class:`~tracker.db.schema.SelectionMember` per kept sample, pointing at the score used, so
   the analysis reads the selection and never recomputes it;
3. creates the stage's jobs for the kept samples (reusing existing ones by job key) and adds
   them to the run: pending, or blocked on the generation of the surrogates they need.

It runs inside the worker's transaction and never commits; running it twice for the same
job changes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.conditions import ConditionDefinition
from tracker.db.schema import (
    Condition,
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    Sample,
    Score,
    Selection,
    SelectionMember,
)
from tracker.errors import TrackerError
from tracker.planning.jobs import plan_score, write_score_jobs
from tracker.planning.reports import JobCounts
from tracker.specs.schema import SelectRule


@dataclass
class SelectionOutcome:
    selection_id: int
    dataset: str
    n: int                      # samples ranked
    k: int                      # samples kept
    sample_ids: list[int]       # kept, hardest first
    score: JobCounts = field(default_factory=JobCounts)
    generate: JobCounts = field(default_factory=JobCounts)
    already_done: bool = False


def condition_definition(row: Condition) -> ConditionDefinition:
    """A stored condition back as a definition (its own mode lives in params["mode"])."""
    params = dict(row.params or {})
    mode = params.pop("mode", None)
    return ConditionDefinition(row.name, row.kind, params, mode)


def selected_samples(session: Session, selection_id: int) -> list[dict[str, Any]]:
    """The kept samples of a selection as sample dicts, hardest first."""
    rows = session.execute(
        select(Sample).join(SelectionMember, SelectionMember.sample_id == Sample.id)
        .where(SelectionMember.selection_id == selection_id).order_by(SelectionMember.rank)
    ).scalars()
    return [r.as_dict() for r in rows]


def rank_hardest(scored: list[tuple[int, int, float]], fraction: float) -> list[tuple[int, int, float]]:
    """(sample_id, score_id, nll) rows -> the ceil(fraction * n) highest NLLs, ties by sample id."""
    for sample_id, _, nll in scored:
        if nll is None or math.isnan(nll):
            raise TrackerError(f"Sample {sample_id} has no usable selecting score (NLL {nll}).",
                               hint="requeue its stage-1 job: tracker requeue EXP --failed")
    k = SelectRule(fraction=fraction).count(len(scored))
    return sorted(scored, key=lambda r: (-r[2], r[0]))[:k]


def _selecting_scores(session: Session, job: Job) -> list[tuple[int, int, float]]:
    dep_ids = list(session.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job.id)))
    rows = session.execute(
        select(Job.sample_id, Score.id, Score.nll, Job.status).join(Score, Score.job_id == Job.id, isouter=True)
        .where(Job.id.in_(dep_ids))
    ).all()
    missing = [sid for sid, score_id, _, status in rows if score_id is None or JobStatus(status) != JobStatus.done]
    if missing or len(rows) != len(dep_ids):
        raise TrackerError(
            f"Selection job {job.id} ran before its stage-1 scores were all done ({len(missing)} missing).",
            hint="the queue releases select jobs only when their dependencies are done; requeue it",
        )
    return [(sid, score_id, float(nll)) for sid, score_id, nll, _ in rows]


def perform_selection(session: Session, job: Job) -> SelectionOutcome:
    """Run one ``select`` job: store the selection and create the stage's jobs (no commit)."""
    if JobKind(job.kind) != JobKind.select:
        raise TrackerError(f"Job {job.id} is a {JobKind(job.kind).value} job, not a select job.")
    p = job.payload
    run_id, stage, dataset = int(p["run_id"]), int(p["stage"]), str(p["dataset"])
    selection = session.scalar(select(Selection).where(
        Selection.run_id == run_id, Selection.stage == stage, Selection.dataset == dataset))
    already = selection is not None
    if selection is None:
        scored = _selecting_scores(session, job)
        kept = rank_hardest(scored, float(p["fraction"]))
        selection = Selection(run_id=run_id, stage=stage, dataset=dataset, job_id=job.id, rule={
            "by": p["by"], "fraction": p["fraction"], "order": p.get("order", "highest_nll"),
            "per": p.get("per", "dataset"), "n": len(scored), "k": len(kept),
            "by_condition_id": p.get("by_condition_id"), "by_mode": p.get("by_mode"),
            "ties": "sample_id ascending",
        })
        session.add(selection)
        session.flush()
        session.add_all([
            SelectionMember(selection_id=selection.id, sample_id=sid, score_id=score_id, rank=rank, value=nll)
            for rank, (sid, score_id, nll) in enumerate(kept, start=1)
        ])
        session.flush()
    samples = selected_samples(session, selection.id)
    outcome = SelectionOutcome(selection.id, dataset, int(selection.rule.get("n", 0)), len(samples),
                               [s["id"] for s in samples], already_done=already)
    plans = []
    conditions = {c.id: c for c in session.scalars(
        select(Condition).where(Condition.id.in_({j["condition_id"] for j in p["jobs"]})))}
    for spec in p["jobs"]:
        definition = condition_definition(conditions[spec["condition_id"]])
        generator = (spec["generator_model_id"], spec.get("generator") or "") if spec.get("generator_model_id") else None
        plans += [plan_score(s, definition, spec["condition_id"], spec["model_id"], spec["mode"],
                             spec["scorer_version"], generator) for s in samples]
    result = write_score_jobs(session, run_id, stage, plans, dry_run=False)
    outcome.score, outcome.generate = result.score, result.generate
    return outcome


def select_for_job(session: Session, job_id: int) -> SelectionOutcome:
    """Run the stage selection of ``select`` job ``job_id`` (a worker calls this in its completion)."""
    return perform_selection(session, session.get(Job, job_id))
