"""Claiming work: whole groups of one (kind, sample, model, mode), under a fresh lease token.

Leases that ran out (a worker died, or went silent, holding these jobs) are handled first,
in the same transaction.
An expired lease counts as a failed attempt, and a job that may be what kills its workers
(a poison job: OOM-killer, a segfaulting kernel, SIGKILL) must neither be taken again
forever nor take the jobs claimed with it down. So, before every claim:

1. a job whose lease expired while it was claimed **alone** and whose attempts are used up
   becomes ``failed``, with the reason (``the worker holding it stopped heartbeating N times:
   last worker host/pid, last claimed at ...``) in ``error_message``; its dependants fail as
   for any failure;
2. any other expired job is claimed **alone**, one per claim, before new work: the jobs that
   only shared a claim with a poison job complete on their own, and the poison job alone
   uses up its attempts. This holds for any claim size.

A claim of one is marked by its lease token (``solo-<hex>``), so the rule needs no column of
its own. A worker cut off from the database longer than its lease (an outage, a partition)
is treated the same way: its jobs are taken over and its late writes are fenced off; the
attempt it used counts, and the solo retry keeps that from failing healthy jobs.
"""
from __future__ import annotations

import functools
import re
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
    update,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    as_utc,
    db_now,
    db_now_plus,
    dialect_of,
    offset_param,
)
from tracker.db.schema import (
    JobKind,
    WorkerRow,
)
from tracker.queue.dependencies import fail_dependants
from tracker.queue.transitions import (
    CLAIM,
    DEFAULT_LEASE_SECONDS,
    FAIL,
    S,
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
        """What one backend call may take together: every scoring job of one model and mode in
        the claim, across samples (the backend forms passes of equal shapes, so a job's numbers
        do not depend on its neighbours), and every generation of one model."""
        if self.kind in (JobKind.score, JobKind.generate) and self.model_id is not None:
            return (self.kind, self.model_id, self.mode if self.kind == JobKind.score else "")
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


def _claim_choice(dialect: str, model_id: Any, n: int, kind: JobKind | None = None):
    """The CTE of job ids one claim takes: whole groups, first in claim order, up to ``n``.

    1. ``window``: the first :func:`claim_window` pending jobs by (priority desc, id);
    2. ``leaders``: the first job of each group in that window, the first ``n`` of them,
       locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (procrastinate's
       ``procrastinate_fetch_job_v2``: one locked candidate set feeding the UPDATE). Workers
       contend only for leaders, so two workers never split a group between them;
    3. ``members``: every claimable job of the leaders' groups (an equality join on the
       group index), then :func:`_whole_groups` keeps the groups that fit.

    SQLite runs one writer at a time, so the same statement needs no row locks there.
    """
    # a job without a sample or a model (a stage selection) is a group of its own
    group_of = lambda t: (t.c.kind, func.coalesce(t.c.sample_id, -t.c.id),  # noqa: E731
                          func.coalesce(t.c.model_id, -t.c.id), t.c.mode)
    window = (
        select(jobs.c.id, jobs.c.kind, jobs.c.sample_id, jobs.c.model_id, jobs.c.mode, jobs.c.priority)
        .where(jobs.c.status == S.pending, for_model(jobs, model_id),
               *([jobs.c.kind == kind] if kind is not None else []))
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
               leader.c.status == S.pending)
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
        .where(member.c.status == S.pending)
    )
    alone = select(leaders.c.id, leaders.c.id, leaders.c.priority).where(
        or_(leaders.c.sample_id.is_(None), leaders.c.model_id.is_(None)))
    members = grouped.union_all(alone).cte("members")
    return _whole_groups(members, n).cte("chosen")


@functools.lru_cache(maxsize=64)
def _claim_statement(dialect: str, by_model: bool, n: int, kind: JobKind | None = None) -> Update:
    """The claim UPDATE for a dialect and batch size, built once (building it costs more
    than running it). Parameters: ``claim_model_id`` (when ``by_model``), ``claim_worker_id``,
    ``claim_token``, ``lease``."""
    model_id = bindparam("claim_model_id", type_=BigInteger()) if by_model else None
    chosen = _claim_choice(dialect, model_id, n, kind)
    now = db_now(dialect)
    return (
        CLAIM.update(
            _id_in(dialect, jobs.c.id, select(chosen.c.id)), jobs.c.status == S.pending,
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
    *,
    kind: JobKind | None = None,
    take_over_expired: bool = True,
) -> list[ClaimedJob]:
    """Claim up to ``n`` claimable jobs of ``model_id`` (plus model-less jobs), whole groups first.

    Expired leases come first (see the module docstring): used-up ones fail, and the first
    other expired job is claimed alone. Otherwise one statement per dialect marks pending
    jobs running with ``worker_id``, a fresh lease token and ``lease_expires_at = db now +
    lease_seconds``. ``model_id=None`` claims only jobs that need no model; ``kind`` only jobs
    of that kind; ``take_over_expired=False`` leaves expired leases to a later claim. Returns
    the jobs in group order (ids ascending within a group).
    """
    if n < 1:
        return []
    token = uuid.uuid4().hex

    def op(session: Session) -> list[ClaimedJob]:
        if take_over_expired:
            taken_over = take_over_expired_job(session, worker_id, model_id, lease_seconds)
            if taken_over is not None:
                return [taken_over]
        dialect = dialect_of(session)
        params = {"claim_worker_id": worker_id, "claim_token": token,
                  "lease": offset_param(dialect, lease_seconds)}
        if model_id is not None:
            params["claim_model_id"] = model_id
        rows = session.execute(_claim_statement(dialect, model_id is not None, n, kind), params).all()
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


# --------------------------------------------------------------------------- expired leases
SOLO_PREFIX = "solo-"
LEASE_EXPIRED = "LeaseExpired"
_TIMES = re.compile(r"stopped heartbeating (\d+) time")
workers = WorkerRow.__table__


def solo_token() -> str:
    return SOLO_PREFIX + uuid.uuid4().hex


def _expired(now, by_model: bool):
    model_id = bindparam("claim_model_id", type_=BigInteger()) if by_model else None
    return and_(jobs.c.status == S.running, jobs.c.lease_expires_at < now, for_model(jobs, model_id))


def _used_up_solo():
    """Claimed alone, and no attempt left (never NULL, so its negation is exact)."""
    return and_(jobs.c.attempts >= jobs.c.max_attempts,
                func.coalesce(jobs.c.lease_token, "").startswith(SOLO_PREFIX))


@functools.lru_cache(maxsize=16)
def _used_up_statement(dialect: str, by_model: bool) -> Update:
    """Fail used-up solo jobs whose lease expired (built once, like the claim; ``claim_model_id``).
    error_type / error_message are left alone, so RETURNING gives their old values."""
    now = db_now(dialect)
    used_up = and_(_expired(now, by_model), _used_up_solo())
    return (FAIL.update(used_up, lease_token=None, lease_expires_at=None, finished_at=now)
            .returning(jobs.c.id, jobs.c.error_type, jobs.c.error_message, jobs.c.worker_id, jobs.c.started_at))


@functools.lru_cache(maxsize=16)
def _first_expired_statement(dialect: str, by_model: bool) -> Select:
    """The first expired job in claim order, with its last holder (``claim_model_id``)."""
    query = (
        select(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.lease_token, jobs.c.error_type,
               jobs.c.error_message, jobs.c.worker_id, jobs.c.started_at, workers.c.host, workers.c.pid)
        .select_from(jobs.outerjoin(workers, workers.c.id == jobs.c.worker_id))
        # a used-up solo job is only ever failed (by fail_used_up, whose clock may read it a moment
        # before it expired), never claimed once more
        .where(_expired(db_now(dialect), by_model), ~_used_up_solo())
        .order_by(jobs.c.priority.desc(), jobs.c.id).limit(1)
    )
    return query.with_for_update(skip_locked=True, of=jobs) if dialect == "postgresql" else query


def _model_param(model_id: int | None) -> dict:
    return {} if model_id is None else {"claim_model_id": model_id}


def _reason(row, holder: str | None) -> str:
    previous = _TIMES.search(row.error_message or "") if row.error_type == LEASE_EXPIRED else None
    times = (int(previous.group(1)) if previous else 0) + 1
    holder = holder or f"worker {row.worker_id}"
    claimed = as_utc(row.started_at)
    when = claimed.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(claimed, datetime) else str(claimed)
    return (f"the worker holding it stopped heartbeating {times} time{'s' if times != 1 else ''}: "
            f"last worker {holder}, last claimed at {when}")


def fail_used_up(session: Session, model_id: int | None) -> list[int]:
    """Fail the expired jobs that were claimed alone and have no attempt left; returns their ids.

    The first statement is the UPDATE, so on SQLite the claim's transaction takes the write
    lock before it reads anything (a read that later writes can fail with SQLITE_BUSY).
    """
    statement = _used_up_statement(dialect_of(session), model_id is not None)
    rows = session.execute(statement, _model_param(model_id)).all()
    holders = {wid: f"{host}/{pid}" for wid, host, pid in session.execute(
        select(workers.c.id, workers.c.host, workers.c.pid)
        .where(workers.c.id.in_({r.worker_id for r in rows if r.worker_id is not None}))
    )} if rows else {}
    for row in sorted(rows, key=lambda r: r.id):
        reason = _reason(row, holders.get(row.worker_id))
        session.execute(update(jobs).where(jobs.c.id == row.id)
                        .values(error_type=LEASE_EXPIRED, error_message=reason, error_traceback=None))
        fail_dependants(session, row.id, f"{LEASE_EXPIRED}: {reason}")
    return sorted(r.id for r in rows)


def take_over_expired_job(session: Session, worker_id: int | None, model_id: int | None,
                          lease_seconds: float) -> ClaimedJob | None:
    """Expired leases, before any new work: fail the used-up solo ones, claim the first other alone."""
    fail_used_up(session, model_id)
    return claim_expired_alone(session, worker_id, model_id, lease_seconds)


def is_takeover(batch: Sequence[ClaimedJob]) -> bool:
    """Whether a claim took over an expired job (a claim of one under a ``solo-`` token)."""
    return len(batch) == 1 and (batch[0].lease_token or "").startswith(SOLO_PREFIX)


def claim_expired_alone(session: Session, worker_id: int | None, model_id: int | None,
                        lease_seconds: float) -> ClaimedJob | None:
    """Claim the first expired job (claim order) alone, recording why it is taken over."""
    dialect = dialect_of(session)
    row = session.execute(_first_expired_statement(dialect, model_id is not None), _model_param(model_id)).first()
    if row is None:
        return None
    now = db_now(dialect)
    claimed = session.execute(
        CLAIM.update(jobs.c.id == row.id, jobs.c.lease_token == row.lease_token, jobs.c.lease_expires_at < now,
                     worker_id=worker_id, lease_token=solo_token(),
                     lease_expires_at=db_now_plus(dialect, "lease"), attempts=jobs.c.attempts + 1,
                     started_at=now, finished_at=None, error_type=LEASE_EXPIRED,
                     error_message=_reason(row, f"{row.host}/{row.pid}" if row.host else None))
        .returning(*_CLAIM_COLUMNS),
        {"lease": offset_param(dialect, lease_seconds)},
    ).first()
    return ClaimedJob(**claimed._mapping) if claimed is not None else None
