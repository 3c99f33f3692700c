"""Writing jobs: plans of scoring and generation jobs, run membership, dependency locks.

Shared by enqueue (stage 1) and stage selections (later stages).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.conditions import (
    CONDITION_KINDS,
    ConditionDefinition,
    estimate_prefix_chars,
    surrogate_request,
)
from tracker.db.bulk import bulk_insert, chunks
from tracker.db.schema import (
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    RunJob,
)
from tracker.identity import (
    generate_job_key,
    score_job_key,
)
from tracker.planning.reports import CostEstimate, JobCounts

GENERATE_PRIORITY = 10  # generations first: they unblock scoring jobs
CHARS_PER_TOKEN = 4


# --- database helpers ------------------------------------------------------------------

def jobs_by_key(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, JobStatus]]:
    keys = sorted(set(keys))
    found: dict[str, tuple[int, JobStatus]] = {}
    for chunk in chunks(keys):
        for key, job_id, status in session.execute(
            select(Job.job_key, Job.id, Job.status).where(Job.job_key.in_(chunk))
        ):
            found[key] = (job_id, JobStatus(status))
    return found


def run_members(session: Session, run_id: int | None) -> set[int]:
    if run_id is None:
        return set()
    return set(session.scalars(select(RunJob.job_id).where(RunJob.run_id == run_id)))


def add_members(session: Session, run_id: int, stage: int, job_ids: Iterable[int]) -> None:
    rows = [{"run_id": run_id, "job_id": j, "stage": stage} for j in sorted(set(job_ids))]
    bulk_insert(session, RunJob, rows, ("run_id", "job_id"))


def lock_jobs(session: Session, job_ids: Iterable[int]) -> dict[int, JobStatus]:
    """Current status of ``job_ids``, rows locked until commit (PostgreSQL; SQLite has one writer).

    New dependants are added under this lock, so a dependency that completes concurrently
    cannot release its dependants before ours exist and leave them blocked for good.
    """
    ids = sorted(set(job_ids))
    found: dict[int, JobStatus] = {}
    for chunk in chunks(ids):
        rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(chunk)).order_by(Job.id).with_for_update())
        found.update({job_id: JobStatus(status) for job_id, status in rows})
    return found


# --- job planning (shared with tracker.stages) -----------------------------------------------

@dataclass(frozen=True)
class SurrogatePlan:
    """The generation request behind a scoring job (generator id None: not created yet)."""

    kind: str
    prompt: str
    prompt_hash: str
    max_new_tokens: int
    generator_model_id: int | None
    generator_name: str


@dataclass(frozen=True)
class ScorePlan:
    """One scoring job to make sure of; ids are None for rows a dry run would create."""

    sample: Mapping[str, Any]          # the sample dict (id may be None)
    definition: ConditionDefinition
    condition_id: int | None
    model_id: int | None
    mode: str
    scorer_version: str
    surrogate: SurrogatePlan | None = None

    @property
    def sample_id(self) -> int | None:
        return self.sample.get("id")

    @functools.cached_property
    def job_key(self) -> str | None:
        if self.sample_id is None or self.condition_id is None or self.model_id is None:
            return None
        return score_job_key(self.sample_id, self.condition_id, self.model_id, self.mode, self.scorer_version)

    @functools.cached_property
    def generate_key(self) -> str | None:
        s = self.surrogate
        if s is None or s.generator_model_id is None or self.sample_id is None:
            return None
        return generate_job_key(self.sample_id, s.kind, s.prompt_hash, s.generator_model_id)


def plan_score(sample: Mapping[str, Any], definition: ConditionDefinition, condition_id: int | None,
               model_id: int | None, mode: str, scorer_version: str,
               generator: tuple[int | None, str] | None = None) -> ScorePlan:
    """The scoring job of (sample, condition, model, mode), with its surrogate request if any.

    ``generator`` is (generator model id or None, generator name) for LLM conditions.
    """
    surrogate = None
    if CONDITION_KINDS[definition.kind].needs_surrogate:
        if generator is None:
            raise ValueError(f"condition {definition.name} needs a generator model")
        req = surrogate_request(definition.params, sample)
        surrogate = SurrogatePlan(req.kind, req.prompt, req.prompt_hash, req.max_new_tokens, generator[0], generator[1])
    return ScorePlan(sample, definition, condition_id, model_id, mode, scorer_version, surrogate)


def score_cost(plan: ScorePlan) -> CostEstimate:
    s = plan.sample
    chars = len(s["doc"]) + estimate_prefix_chars(plan.definition, s) + len(s["query"]) + len(s["answer"]) + 12
    return CostEstimate(score_tokens=chars // CHARS_PER_TOKEN, score_forward_passes=2)


def generate_cost(s: SurrogatePlan) -> CostEstimate:
    chat_overhead = 40  # system prompt and role markers of a chat template, roughly
    return CostEstimate(generate_tokens=len(s.prompt) // CHARS_PER_TOKEN + chat_overhead + s.max_new_tokens,
                        generate_forward_passes=1 + s.max_new_tokens)


@dataclass
class WriteResult:
    score: JobCounts = field(default_factory=JobCounts)
    generate: JobCounts = field(default_factory=JobCounts)
    cost: CostEstimate = field(default_factory=CostEstimate)
    score_jobs: dict[str, tuple[int, JobStatus]] = field(default_factory=dict)  # key -> (id, status)
    blocked_on_failed: int = 0


def _gen_identity(p: ScorePlan) -> tuple:
    s = p.surrogate
    return (p.sample["dataset"], p.sample["source_key"], s.kind, s.prompt_hash, s.generator_name)


def write_score_jobs(session: Session, run_id: int | None, stage: int, plans: Sequence[ScorePlan],
                     *, dry_run: bool, members: set[int] | None = None) -> WriteResult:
    """Make sure every planned scoring job (and its generation job) exists and is in the run.

    New scoring jobs that need a surrogate not yet generated are blocked on the generation
    job; all others start pending. With ``dry_run`` nothing is written and the counts say
    what would happen. Never commits.
    """
    result = WriteResult()
    members = run_members(session, run_id) if members is None else members

    # generation jobs: keyed when sample and generator rows exist, else certainly new
    gen_plans: dict[str, ScorePlan] = {}
    unknown_gens: dict[tuple, ScorePlan] = {}
    for p in plans:
        if p.surrogate is not None:
            key = p.generate_key
            if key is None:
                unknown_gens.setdefault(_gen_identity(p), p)
            else:
                gen_plans.setdefault(key, p)
    gen_existing = jobs_by_key(session, gen_plans)
    new_gens = [k for k in gen_plans if k not in gen_existing]
    for key, (job_id, _) in gen_existing.items():
        if job_id in members:
            result.generate.skipped += 1
        else:
            result.generate.reused += 1
    result.generate.created = len(new_gens) + len(unknown_gens)
    for p in [gen_plans[k] for k in new_gens] + list(unknown_gens.values()):
        result.cost.add(generate_cost(p.surrogate))
    if not dry_run and new_gens:
        bulk_insert(session, Job, [_generate_row(key, gen_plans[key]) for key in new_gens], ("job_key",))
        gen_existing.update(jobs_by_key(session, new_gens))

    # scoring jobs
    keyed: dict[str, ScorePlan] = {}
    for p in plans:
        key = p.job_key
        if key is None:
            result.score.created += 1
            result.cost.add(score_cost(p))
        else:
            keyed.setdefault(key, p)
    score_existing = jobs_by_key(session, keyed)
    new_scores = {k: p for k, p in keyed.items() if k not in score_existing}
    for key, (job_id, _) in score_existing.items():
        if job_id in members:
            result.score.skipped += 1
        else:
            result.score.reused += 1
    result.score.created += len(new_scores)
    new_plans = list(new_scores.values()) + [p for p in plans if p.job_key is None]
    for p in new_scores.values():
        result.cost.add(score_cost(p))
    groups = {(p.sample["dataset"], p.sample["source_key"], p.model_id, p.mode) for p in new_plans}
    result.cost.score_batched_passes = 2 * len(groups)

    if not dry_run and new_scores:
        # Lock the generation jobs first: one finishing now either did so before (we see it
        # done) or waits for our commit and then sees, and releases, the dependants we add.
        gen_status = lock_jobs(session, [gen_existing[p.generate_key][0] for p in new_scores.values() if p.surrogate])
        rows, deps = [], []
        for key, p in new_scores.items():
            status = JobStatus.pending
            if p.surrogate is not None:
                gen_id = gen_existing[p.generate_key][0]
                if gen_status[gen_id] != JobStatus.done:
                    status = JobStatus.blocked
                    deps.append((key, gen_id))
                    result.blocked_on_failed += gen_status[gen_id] == JobStatus.failed
            rows.append(_score_job_row(key, p, status))
        bulk_insert(session, Job, rows, ("job_key",))
        score_existing.update(jobs_by_key(session, new_scores))
        bulk_insert(session, JobDependency,
                      [{"job_id": score_existing[key][0], "depends_on_id": gen_id} for key, gen_id in deps],
                      ("job_id", "depends_on_id"))

    result.score_jobs = dict(score_existing)
    if not dry_run and run_id is not None:
        ids = [v[0] for v in score_existing.values()] + [v[0] for v in gen_existing.values()]
        add_members(session, run_id, stage, [i for i in ids if i not in members])
        members.update(ids)
    return result


def _generate_row(key: str, p: ScorePlan) -> dict[str, Any]:
    s = p.surrogate
    return {
        "job_key": key, "kind": JobKind.generate, "sample_id": p.sample_id, "condition_id": None,
        "model_id": s.generator_model_id, "mode": "", "scorer_version": "",
        "payload": {"kind": s.kind, "prompt": s.prompt, "prompt_hash": s.prompt_hash,
                    "max_new_tokens": s.max_new_tokens},
        "status": JobStatus.pending, "priority": GENERATE_PRIORITY,
    }


def _score_job_row(key: str, p: ScorePlan, status: JobStatus) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if p.surrogate is not None:
        payload["surrogate"] = {"kind": p.surrogate.kind, "prompt_hash": p.surrogate.prompt_hash,
                                "generator_model_id": p.surrogate.generator_model_id}
    return {
        "job_key": key, "kind": JobKind.score, "sample_id": p.sample_id, "condition_id": p.condition_id,
        "model_id": p.model_id, "mode": p.mode, "scorer_version": p.scorer_version, "payload": payload,
        "status": status, "priority": 0,
    }
