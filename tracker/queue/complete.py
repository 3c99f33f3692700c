"""Writing results: scores with their token NLLs, generations, selections; fenced by token.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Engine,
    exists,
    select,
)
from sqlalchemy.orm import Session

from tracker.db.bulk import bulk_insert
from tracker.db.clock import (
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    AttentionShare,
    Score,
    Surrogate,
    TokenNLL,
)
from tracker.queue.claim import ClaimedJob
from tracker.queue.dependencies import release_dependants
from tracker.queue.transitions import COMPLETE, S, deps, in_transaction, jobs


# --------------------------------------------------------------------------- complete
@dataclass
class Completion:
    """What a completion call did, per job id."""

    completed: list[int] = field(default_factory=list)  # newly done by this call
    already_done: list[int] = field(default_factory=list)  # done earlier under the same token (a retried commit)
    lost: list[int] = field(default_factory=list)  # lease token no longer ours: result discarded
    released: list[int] = field(default_factory=list)  # dependants unblocked
    with_dependants: list[int] = field(default_factory=list)  # completed jobs other jobs wait on


def mark_done(session: Session, token: str, job_ids: Sequence[int]) -> Completion:
    """Fenced ``running -> done`` for ``job_ids`` held under ``token``; never commits."""
    outcome = Completion()
    if not job_ids:
        return outcome
    dialect = dialect_of(session)
    has_dependants = exists().where(deps.c.depends_on_id == jobs.c.id)
    stmt = COMPLETE.update(
        jobs.c.id.in_(list(job_ids)), jobs.c.lease_token == token,
        lease_expires_at=None, finished_at=db_now(dialect),
    ).returning(jobs.c.id, has_dependants)
    rows = session.execute(stmt).all()
    outcome.completed = sorted(job_id for job_id, _ in rows)
    outcome.with_dependants = sorted(job_id for job_id, waited_on in rows if waited_on)
    rest = sorted(set(job_ids) - set(outcome.completed))
    if rest:
        already = select(jobs.c.id).where(jobs.c.id.in_(rest), jobs.c.lease_token == token, jobs.c.status == S.done)
        outcome.already_done = sorted(session.execute(already).scalars().all())
        outcome.lost = sorted(set(rest) - set(outcome.already_done))
    return outcome


def _score_row(result: Any, worker_id: int | None, device: str, dtype: str,
               seconds: float | Mapping[int, float] | None) -> dict:
    if isinstance(seconds, Mapping):
        seconds = seconds.get(result.job_id)
    extras = {k: v for k, v in (result.extras or {}).items() if k != "attention"}
    return {
        "job_id": result.job_id, "nll": float(result.nll_mean), "n_tokens": len(result.token_nlls),
        "bos_id": result.bos_id, "prefix_ids": result.prefix_ids, "doc_ids": list(result.doc_ids),
        "query_ids": list(result.query_ids), "answer_ids": list(result.answer_ids),
        "batch_size": int(result.batch_size), "extras": extras, "worker_id": worker_id,
        "device": device, "dtype": dtype, "seconds": seconds,
    }


def _write_scores(session: Session, results: Sequence[Any], score_rows: list[dict]) -> None:
    """Insert scores (a second insert for the same job is a no-op), then their token NLLs and
    attention shares for the scores this call created."""
    inserted = bulk_insert(session, Score.__table__, score_rows, conflict=("job_id",), returning=("id", "job_id"))
    score_ids = {job_id: score_id for score_id, job_id in inserted}
    token_rows, share_rows = [], []
    for result in results:
        score_id = score_ids.get(result.job_id)
        if score_id is None:
            continue
        token_rows += [
            {"score_id": score_id, "position": i, "token_id": int(tok), "nll": float(nll)}
            for i, (tok, nll) in enumerate(zip(result.answer_ids, result.token_nlls, strict=True))
        ]
        share_rows += [
            {"score_id": score_id, "position": int(r["position"]), "layer": int(r["layer"]),
             "softmax": str(r["softmax"]), "target": str(r["target"]), "share": float(r["share"])}
            for r in (result.extras or {}).get("attention", ())
        ]
    bulk_insert(session, TokenNLL.__table__, token_rows)
    bulk_insert(session, AttentionShare.__table__, share_rows)


def complete_scores(
    bind: Session | Engine,
    token: str,
    results: Sequence[Any],
    *,
    worker_id: int | None = None,
    device: str = "",
    dtype: str = "",
    seconds: float | Mapping[int, float] | None = None,
) -> Completion:
    """Write scores, token NLLs and attention shares and mark the jobs done, in one transaction.

    ``results`` are :class:`workers.backends.base.ScoreResult`; attention rows come from
    ``result.extras["attention"]`` (``{layer, position, softmax, target, share}``). Jobs
    whose lease is no longer ours are skipped (``lost``); repeating a committed call writes
    nothing twice. ``seconds`` is the scoring time per job (one value, or by job id).
    """

    def op(session: Session) -> Completion:
        outcome = mark_done(session, token, [r.job_id for r in results])
        mine = set(outcome.completed) | set(outcome.already_done)
        kept = [r for r in results if r.job_id in mine]
        if kept:
            _write_scores(session, kept, [_score_row(r, worker_id, device, dtype, seconds) for r in kept])
        outcome.released = release_dependants(session, outcome.with_dependants)
        return outcome

    return in_transaction(bind, op)


def complete_generations(
    bind: Session | Engine, token: str, done: Sequence[tuple[ClaimedJob, Any]], *, worker_id: int | None = None
) -> Completion:
    """Store generated surrogate texts (one per (sample, kind, prompt, generator)) and mark done.

    ``done`` pairs each generation job with its :class:`GenerateResult`.
    """

    def op(session: Session) -> Completion:
        outcome = mark_done(session, token, [job.id for job, _ in done])
        mine = set(outcome.completed) | set(outcome.already_done)
        rows = [
            {"sample_id": job.sample_id, "kind": job.payload["kind"], "prompt_hash": job.payload["prompt_hash"],
             "prompt": job.payload["prompt"], "generator_model_id": job.model_id, "text": result.text,
             "settings": dict(result.settings or {}), "job_id": job.id}
            for job, result in done if job.id in mine
        ]
        bulk_insert(session, Surrogate.__table__, rows,
                     conflict=("sample_id", "kind", "prompt_hash", "generator_model_id"))
        outcome.released = release_dependants(session, outcome.with_dependants)
        return outcome

    return in_transaction(bind, op)


def complete_plain(
    bind: Session | Engine, token: str, job_ids: Sequence[int], *, worker_id: int | None = None,
    work: Callable[[Session], None] | None = None,
) -> Completion:
    """Mark jobs done that write their own results (e.g. stage selections) in one transaction.

    ``work(session)`` runs after the fence succeeded and before the commit, so its writes
    land only if the lease was still ours.
    """

    def op(session: Session) -> Completion:
        outcome = mark_done(session, token, job_ids)
        if outcome.completed and work is not None:
            work(session)
        outcome.released = release_dependants(session, outcome.with_dependants)
        return outcome

    return in_transaction(bind, op)
