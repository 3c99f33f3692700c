"""Claiming work: whole groups of one (kind, sample, model, mode), under a fresh lease token.
"""
from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Select,
    String,
    Update,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    db_now,
    db_now_plus,
    dialect_of,
    offset_param,
)
from tracker.db.schema import (
    JobKind,
)
from tracker.queue.transitions import (
    CLAIM,
    DEFAULT_LEASE_SECONDS,
    claimable,
    for_model,
    in_transaction,
    jobs,
    same_group,
)


# --------------------------------------------------------------------------- claim
@dataclass(frozen=True)
class ClaimedJob:
    """A job row as the claim returned it, with the lease this worker now holds."""

    id: int
    job_key: str
    kind: JobKind
    sample_id: int | None
    condition_id: int | None
    model_id: int | None
    mode: str
    scorer_version: str
    payload: dict
    priority: int
    attempts: int
    max_attempts: int
    lease_token: str
    lease_expires_at: datetime | None

    @property
    def group_key(self) -> tuple:
        """(kind, sample, model, mode): the unit a claim never splits unless it exceeds n."""
        if self.sample_id is None or self.model_id is None:
            return (self.kind, -self.id, -self.id, self.mode)  # a group of its own
        return (self.kind, self.sample_id, self.model_id, self.mode)

    @property
    def batch_key(self) -> tuple:
        """What one backend call may take together: a group, or every generation of one model
        (generations are independent of each other and the backend batches them)."""
        if self.kind == JobKind.generate and self.model_id is not None:
            return (self.kind, self.model_id)
        return self.group_key


_CLAIM_COLUMNS = (
    jobs.c.id, jobs.c.job_key, jobs.c.kind, jobs.c.sample_id, jobs.c.condition_id, jobs.c.model_id,
    jobs.c.mode, jobs.c.scorer_version, jobs.c.payload, jobs.c.priority, jobs.c.attempts,
    jobs.c.max_attempts, jobs.c.lease_token, jobs.c.lease_expires_at,
)


def _whole_groups(members, n: int) -> Select:
    """Ids of the first groups (by priority, then leader id) that fit in ``n`` jobs.

    ``members`` has one row per claimable job with ``leader_id`` and ``group_priority`` of its
    group. The first group is always taken (its first ``n`` jobs if it is larger than ``n``).
    """
    order = (members.c.group_priority.desc(), members.c.leader_id)
    ranked = select(
        members.c.id,
        func.row_number().over(order_by=(*order, members.c.id)).label("pos"),
        func.dense_rank().over(order_by=order).label("group_rank"),
        # default frame (RANGE ... CURRENT ROW) counts every job up to the end of this group
        func.count().over(order_by=order).label("group_end"),
    ).subquery("ranked")
    return select(ranked.c.id).where(
        or_(ranked.c.group_end <= n, and_(ranked.c.group_rank == 1, ranked.c.pos <= n))
    )


def _id_in(dialect: str, column, ids: Select) -> ColumnElement[bool]:
    """``column IN (ids)``; on PostgreSQL ``= ANY(ARRAY(ids))``, which the planner runs once and
    answers from the primary key, whatever its (often missing) statistics on a fresh queue say."""
    if dialect == "postgresql":
        return column == any_(func.array(ids.scalar_subquery()))
    return column.in_(ids)


def claim_window(n: int) -> int:
    """How many claimable jobs (in claim order) a claim looks at to find its groups' leaders.

    Big enough that the leaders other workers hold at the same moment (at most ``n`` each)
    rarely cover it; if they do, the claim comes back empty and the worker retries at once.
    """
    return max(32 * n, 512)


def _claim_choice(dialect: str, model_id: Any, n: int):
    """The CTE of job ids one claim takes: whole groups, first in claim order, up to ``n``.

    1. ``window``: the first :func:`claim_window` claimable jobs by (priority desc, id);
    2. ``leaders``: the first job of each group in that window, the first ``n`` of them,
       locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (procrastinate's
       ``procrastinate_fetch_job_v2``: one locked candidate set feeding the UPDATE). Workers
       contend only for leaders, so two workers never split a group between them;
    3. ``members``: every claimable job of the leaders' groups (an equality join on the
       group index), then :func:`_whole_groups` keeps the groups that fit.

    SQLite runs one writer at a time, so the same statement needs no row locks there.
    """
    now = db_now(dialect)
    # a job without a sample or a model (a stage selection) is a group of its own
    group_of = lambda t: (t.c.kind, func.coalesce(t.c.sample_id, -t.c.id),  # noqa: E731
                          func.coalesce(t.c.model_id, -t.c.id), t.c.mode)
    window = (
        select(jobs.c.id, jobs.c.kind, jobs.c.sample_id, jobs.c.model_id, jobs.c.mode, jobs.c.priority)
        .where(claimable(jobs, now), for_model(jobs, model_id))
        .order_by(jobs.c.priority.desc(), jobs.c.id)
        .limit(claim_window(n))
        .cte("claim_window")
    )
    first = select(
        window.c.id,
        func.row_number().over(partition_by=group_of(window), order_by=(window.c.priority.desc(), window.c.id))
        .label("rank_in_group"),
    ).subquery("firsts")
    leader = jobs.alias("leader")
    leaders = (
        select(leader.c.id, leader.c.kind, leader.c.sample_id, leader.c.model_id, leader.c.mode, leader.c.priority)
        .where(_id_in(dialect, leader.c.id, select(first.c.id).where(first.c.rank_in_group == 1)),
               claimable(leader, now))
        .order_by(leader.c.priority.desc(), leader.c.id)
        .limit(n)
    )
    if dialect == "postgresql":
        leaders = leaders.with_for_update(skip_locked=True, of=leader)
    leaders = leaders.cte("leaders")
    member = jobs.alias("member")
    grouped = (
        select(member.c.id, leaders.c.id.label("leader_id"), leaders.c.priority.label("group_priority"))
        .join_from(leaders, member, same_group(member, leaders))
        .where(claimable(member, now))
    )
    alone = select(leaders.c.id, leaders.c.id, leaders.c.priority).where(
        or_(leaders.c.sample_id.is_(None), leaders.c.model_id.is_(None)))
    members = grouped.union_all(alone).cte("members")
    return _whole_groups(members, n).cte("chosen")


@functools.lru_cache(maxsize=64)
def _claim_statement(dialect: str, by_model: bool, n: int) -> Update:
    """The claim UPDATE for a dialect and batch size, built once (building it costs more
    than running it). Parameters: ``claim_model_id`` (when ``by_model``), ``claim_worker_id``,
    ``claim_token``, ``lease``."""
    model_id = bindparam("claim_model_id", type_=BigInteger()) if by_model else None
    chosen = _claim_choice(dialect, model_id, n)
    now = db_now(dialect)
    return (
        CLAIM.update(
            _id_in(dialect, jobs.c.id, select(chosen.c.id)), claimable(jobs, now),
            worker_id=bindparam("claim_worker_id", type_=BigInteger()),
            lease_token=bindparam("claim_token", type_=String()),
            lease_expires_at=db_now_plus(dialect, "lease"),
            attempts=jobs.c.attempts + 1, started_at=now, finished_at=None,
        )
        .returning(*_CLAIM_COLUMNS)
    )


def claim_batch(
    bind: Session | Engine,
    worker_id: int | None,
    model_id: int | None,
    n: int,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> list[ClaimedJob]:
    """Claim up to ``n`` claimable jobs of ``model_id`` (plus model-less jobs), whole groups first.

    One statement per dialect marks them running with ``worker_id``, a fresh lease token
    and ``lease_expires_at = db now + lease_seconds``; jobs whose lease expired are
    claimable again (their attempt count goes up). ``model_id=None`` claims only jobs that
    need no model. Returns the jobs in group order (ids ascending within a group).
    """
    if n < 1:
        return []
    token = uuid.uuid4().hex

    def op(session: Session) -> list[ClaimedJob]:
        dialect = dialect_of(session)
        params = {"claim_worker_id": worker_id, "claim_token": token,
                  "lease": offset_param(dialect, lease_seconds)}
        if model_id is not None:
            params["claim_model_id"] = model_id
        rows = session.execute(_claim_statement(dialect, model_id is not None, n), params).all()
        return _in_group_order([ClaimedJob(**row._mapping) for row in rows])

    return in_transaction(bind, op)


def _in_group_order(claimed: list[ClaimedJob]) -> list[ClaimedJob]:
    first_id: dict[tuple, int] = {}
    for job in sorted(claimed, key=lambda j: j.id):
        first_id.setdefault(job.group_key, job.id)
    return sorted(claimed, key=lambda j: (-j.priority, first_id[j.group_key], j.id))


def group_jobs(claimed: Sequence[ClaimedJob]) -> list[list[ClaimedJob]]:
    """Split a claimed batch into the units of one backend call (see ``batch_key``), in claim order."""
    groups: dict[tuple, list[ClaimedJob]] = {}
    for job in claimed:
        groups.setdefault(job.batch_key, []).append(job)
    return list(groups.values())
