"""The job queue protocol: claim, lease, heartbeat, complete, fail, retry, requeue.

Lifecycle (one enum, :class:`tracker.models.JobStatus`; every transition below is an
UPDATE that checks the current status, so a job can only move along these edges)::

    blocked --unblock--> pending --claim--> running --complete--> done
       |                    ^                  |  \\--fail (attempts left)--> pending
       |                    |                  |   \\-fail (no attempts left)-> failed
       |                    +---release--------+    (shutdown; lease token checked)
       +--dependency_failed--> failed --requeue--> pending | blocked

- A ``running`` job whose lease expired is claimable again; stale leases are recovered by
  the claim statement itself (pgqueuer's "picked + heartbeat older than retry_after"), not by
  a separate reaper.
- Claims take whole groups: every claimable job of one (kind, sample, model, mode), so the
  scorer sees all conditions of a sample in one call and batches are reproducible.
- Fencing: each claim writes a fresh lease token; heartbeat, complete, fail and release only
  touch rows that still carry the caller's token, so a worker whose jobs were reclaimed can
  no longer extend, complete or fail them (:class:`LeaseLost` outcomes, never an exception
  that loses the batch).
- Every time in a lease is database time (``now()`` on PostgreSQL, ``strftime('now')`` on
  SQLite), never a worker's clock.

Public operations take a :class:`~sqlalchemy.orm.Session` (the caller owns the transaction)
or an :class:`~sqlalchemy.Engine` (one transaction per call, see :func:`tracker.db.session_scope`).
"""
from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    JSON,
    ColumnElement,
    Engine,
    Select,
    Update,
    and_,
    any_,
    case,
    Interval,
    String,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tracker.db import session_scope
from tracker.errors import UnknownExperimentError
from tracker.models import (
    AttentionShare,
    Base,
    Condition,
    Experiment,
    ExperimentRun,
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    Model,
    RunJob,
    Score,
    Surrogate,
    TokenNLL,
    Worker,
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
TRANSITIONS: tuple[Transition, ...] = (
    UNBLOCK, CLAIM, COMPLETE, RETRY, FAIL, RELEASE, DEPENDENCY_FAIL, REQUEUE, REBLOCK, REQUEUE_STALE,
)


# --------------------------------------------------------------------------- helpers
def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _sqlite_time(offset_seconds: float = 0.0) -> ColumnElement[Any]:
    # The same text layout SQLAlchemy stores DateTime in on SQLite (microseconds, 6 digits),
    # so string comparison with stored values is time order.
    modifier = f"{offset_seconds:+.6f} seconds"
    return func.strftime("%Y-%m-%d %H:%M:%f", "now", modifier).concat("000")


def db_now(dialect: str, offset_seconds: float = 0.0) -> ColumnElement[Any]:
    """The database's clock (plus an offset) as an SQL expression."""
    if dialect == "sqlite":
        return _sqlite_time(offset_seconds)
    if offset_seconds:
        return func.now() + literal(timedelta(seconds=offset_seconds))
    return func.now()


def _db_now_plus(dialect: str, param: str) -> ColumnElement[Any]:
    """Database time plus the offset given at execution as bind parameter ``param``
    (see :func:`_offset_param`), so a statement built once serves every lease length."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", "now", bindparam(param, type_=String())).concat("000")
    return func.now() + bindparam(param, type_=Interval())


def _offset_param(dialect: str, seconds: float) -> Any:
    return f"{seconds:+.6f} seconds" if dialect == "sqlite" else timedelta(seconds=seconds)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)  # SQLite stores UTC without an offset


def current_db_time(session: Session) -> datetime:
    """The database's current time, timezone-aware UTC."""
    value = session.execute(select(db_now(_dialect(session)))).scalar_one()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _as_utc(value).astimezone(timezone.utc)


def _in_transaction(bind: Session | Engine, op: Callable[[Session], T]) -> T:
    """Run ``op`` in the caller's session, or in a fresh transaction of its own."""
    if isinstance(bind, Session):
        return op(bind)
    with session_scope(bind) as session:
        return op(session)


def _claimable(table, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(
        table.c.status == S.pending,
        and_(table.c.status == S.running, table.c.lease_expires_at < now),
    )


def _for_model(table, model_id: Any) -> ColumnElement[bool]:
    # Jobs without a model (stage selections) can be run by any worker.
    if model_id is None:
        return table.c.model_id.is_(None)
    return or_(table.c.model_id == model_id, table.c.model_id.is_(None))


def _same_group(a, b) -> ColumnElement[bool]:
    # NULL sample or model ids never compare equal: such a job is a group of its own.
    return and_(a.c.kind == b.c.kind, a.c.sample_id == b.c.sample_id,
                a.c.model_id == b.c.model_id, a.c.mode == b.c.mode)


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
        .where(_claimable(jobs, now), _for_model(jobs, model_id))
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
               _claimable(leader, now))
        .order_by(leader.c.priority.desc(), leader.c.id)
        .limit(n)
    )
    if dialect == "postgresql":
        leaders = leaders.with_for_update(skip_locked=True, of=leader)
    leaders = leaders.cte("leaders")
    member = jobs.alias("member")
    grouped = (
        select(member.c.id, leaders.c.id.label("leader_id"), leaders.c.priority.label("group_priority"))
        .join_from(leaders, member, _same_group(member, leaders))
        .where(_claimable(member, now))
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
            _id_in(dialect, jobs.c.id, select(chosen.c.id)), _claimable(jobs, now),
            worker_id=bindparam("claim_worker_id", type_=BigInteger()),
            lease_token=bindparam("claim_token", type_=String()),
            lease_expires_at=_db_now_plus(dialect, "lease"),
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
        dialect = _dialect(session)
        params = {"claim_worker_id": worker_id, "claim_token": token,
                  "lease": _offset_param(dialect, lease_seconds)}
        if model_id is not None:
            params["claim_model_id"] = model_id
        rows = session.execute(_claim_statement(dialect, model_id is not None, n), params).all()
        return _in_group_order([ClaimedJob(**row._mapping) for row in rows])

    return _in_transaction(bind, op)


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


# --------------------------------------------------------------------------- heartbeat
def extend_leases(bind: Session | Engine, tokens: Collection[str], lease_seconds: float) -> set[int]:
    """Push the leases of ``tokens`` to db now + ``lease_seconds``; return the job ids still held.

    A job missing from the answer was reclaimed (or finished) under another token: fenced.
    """
    if not tokens:
        return set()

    def op(session: Session) -> set[int]:
        dialect = _dialect(session)
        stmt = (
            update(jobs)
            .where(jobs.c.lease_token.in_(list(tokens)), jobs.c.status == S.running)
            .values(lease_expires_at=db_now(dialect, lease_seconds))
            .returning(jobs.c.id)
        )
        return set(session.execute(stmt).scalars().all())

    return _in_transaction(bind, op)


def heartbeat(bind: Session | Engine, worker_id: int, tokens: Collection[str], lease_seconds: float,
              *, jobs_done: int | None = None) -> set[int]:
    """One heartbeat: stamp the worker row with db time (and its job count) and extend its
    leases, in one transaction. Returns the ids of the jobs still held."""

    def op(session: Session) -> set[int]:
        values: dict[str, Any] = {"heartbeat_at": db_now(_dialect(session))}
        if jobs_done is not None:
            values["jobs_done"] = jobs_done
        session.execute(update(Worker.__table__).where(Worker.__table__.c.id == worker_id).values(**values))
        return extend_leases(session, tokens, lease_seconds)

    return _in_transaction(bind, op)


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
    dialect = _dialect(session)
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
    inserted = _bulk_insert(session, Score.__table__, score_rows, conflict=("job_id",), returning=("id", "job_id"))
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
    _bulk_insert(session, TokenNLL.__table__, token_rows)
    _bulk_insert(session, AttentionShare.__table__, share_rows)


def _bulk_insert(session: Session, table, rows: list[dict], *, conflict: tuple[str, ...] = (),
                 returning: tuple[str, ...] = ()) -> list[tuple]:
    """Insert ``rows`` (all with the same keys) in one statement; ``ON CONFLICT (conflict) DO
    NOTHING`` when given; the ``returning`` columns of the inserted rows.

    PostgreSQL gets ``INSERT ... SELECT FROM unnest(arrays)``: one short statement text whatever
    the row count, so neither SQLAlchemy nor psycopg re-parse a long multi-row VALUES list
    per batch (that parsing cost more than the database work). SQLite runs in-process, where
    plain executemany is cheapest.
    """
    if not rows:
        return []
    columns = tuple(rows[0])
    if _dialect(session) == "postgresql":
        stmt = _unnest_insert_sql(table.name, columns, conflict, returning)
        params = {f"p_{c}": [_array_value(table.c[c], row[c]) for row in rows] for c in columns}
        result = session.execute(stmt, params)
    else:
        stmt = sqlite.insert(table)
        if conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        if returning:
            stmt = stmt.returning(*(table.c[c] for c in returning))
        result = session.execute(stmt, rows)
    return [tuple(r) for r in result.all()] if returning else []


def _array_value(column, value: Any) -> Any:
    return json.dumps(value) if isinstance(column.type, JSON) else value


@functools.lru_cache(maxsize=32)
def _unnest_insert_sql(table_name: str, columns: tuple[str, ...], conflict: tuple[str, ...],
                       returning: tuple[str, ...]):
    table = Base.metadata.tables[table_name]
    dialect = postgresql.dialect()
    arrays, selected = [], []
    for name in columns:
        column = table.c[name]
        is_json = isinstance(column.type, JSON)
        element = "TEXT" if is_json else column.type.compile(dialect=dialect)
        arrays.append(f"CAST(:p_{name} AS {element}[])")
        selected.append(f"CAST(r.{name} AS JSON)" if is_json else f"r.{name}")
    sql = (f"INSERT INTO {table_name} ({', '.join(columns)}) SELECT {', '.join(selected)} "
           f"FROM unnest({', '.join(arrays)}) AS r({', '.join(columns)})")
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return text(sql)


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

    return _in_transaction(bind, op)


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
        _bulk_insert(session, Surrogate.__table__, rows,
                     conflict=("sample_id", "kind", "prompt_hash", "generator_model_id"))
        outcome.released = release_dependants(session, outcome.with_dependants)
        return outcome

    return _in_transaction(bind, op)


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

    return _in_transaction(bind, op)


# --------------------------------------------------------------------------- dependencies
def release_dependants(session: Session, done_ids: Sequence[int]) -> list[int]:
    """``blocked -> pending`` for dependants of ``done_ids`` whose dependencies are all done.

    The dependants are locked first (in id order, so concurrent completions queue up on the
    same rows instead of deadlocking) and only then re-checked by a new statement: under READ
    COMMITTED that statement sees a concurrent completion of the other dependency, so a job
    with two dependencies finishing at once is never left blocked.
    """
    if not done_ids:
        return []
    dependants = select(deps.c.job_id).where(deps.c.depends_on_id.in_(list(done_ids)))
    locked = session.execute(
        select(jobs.c.id).where(jobs.c.id.in_(dependants), jobs.c.status == S.blocked)
        .order_by(jobs.c.id).with_for_update()
    ).scalars().all()
    if not locked:
        return []
    dep, parent = deps.alias("dep"), jobs.alias("parent")
    unfinished = exists().where(dep.c.job_id == jobs.c.id, dep.c.depends_on_id == parent.c.id, parent.c.status != S.done)
    stmt = UNBLOCK.update(jobs.c.id.in_(locked), ~unfinished).returning(jobs.c.id)
    return sorted(session.execute(stmt).scalars().all())


def fail_dependants(session: Session, failed_id: int, reason: str) -> list[int]:
    """Fail every blocked job that (transitively) waits on ``failed_id``, naming the reason."""
    failed: list[int] = []
    frontier = [(failed_id, reason)]
    dialect = _dialect(session)
    while frontier:
        parent_id, parent_reason = frontier.pop()
        key = session.execute(select(jobs.c.job_key).where(jobs.c.id == parent_id)).scalar_one()
        message = f"dependency job {parent_id} ({key}) failed: {parent_reason}"
        children = select(deps.c.job_id).where(deps.c.depends_on_id == parent_id)
        locked = session.execute(  # in id order, like release_dependants, so the two never deadlock
            select(jobs.c.id).where(jobs.c.id.in_(children), jobs.c.status == S.blocked)
            .order_by(jobs.c.id).with_for_update()
        ).scalars().all()
        if not locked:
            continue
        stmt = DEPENDENCY_FAIL.update(
            jobs.c.id.in_(list(locked)),
            error_type=DEPENDENCY_FAILED, error_message=message, error_traceback=None,
            finished_at=db_now(dialect),
        ).returning(jobs.c.id)
        for child in sorted(session.execute(stmt).scalars().all()):
            failed.append(child)
            frontier.append((child, f"{DEPENDENCY_FAILED}: {message}"))
    return failed


# --------------------------------------------------------------------------- fail / release
@dataclass(frozen=True)
class FailOutcome:
    """``status``: "pending" (will be retried), "failed" (for good) or "lost" (not our lease)."""

    status: str
    dependants_failed: tuple[int, ...] = ()


def fail_job(
    bind: Session | Engine,
    job_id: int,
    token: str,
    error_type: str,
    message: str,
    traceback_text: str | None = None,
) -> FailOutcome:
    """Record an error on a job held under ``token``; retry it while attempts are left, else
    hold it as failed and fail its dependants with the reason."""

    def op(session: Session) -> FailOutcome:
        dialect = _dialect(session)
        error = {"error_type": error_type[:256], "error_message": message, "error_traceback": traceback_text}
        mine = (jobs.c.id == job_id, jobs.c.lease_token == token)
        retried = session.execute(
            RETRY.update(*mine, jobs.c.attempts < jobs.c.max_attempts,
                         lease_token=None, lease_expires_at=None, worker_id=None, **error).returning(jobs.c.id)
        ).first()
        if retried is not None:
            return FailOutcome("pending")
        failed = session.execute(
            FAIL.update(*mine, lease_token=None, lease_expires_at=None, finished_at=db_now(dialect), **error)
            .returning(jobs.c.id)
        ).first()
        if failed is None:
            return FailOutcome("lost")
        children = fail_dependants(session, job_id, f"{error_type}: {message}")
        return FailOutcome("failed", tuple(children))

    return _in_transaction(bind, op)


def release_batch(bind: Session | Engine, token: str, job_ids: Collection[int] | None = None) -> list[int]:
    """Give back jobs still held under ``token`` (shutdown): pending again, attempt not counted."""

    def op(session: Session) -> list[int]:
        where = [jobs.c.lease_token == token]
        if job_ids is not None:
            where.append(jobs.c.id.in_(list(job_ids)))
        stmt = RELEASE.update(
            *where, lease_token=None, lease_expires_at=None, worker_id=None, started_at=None,
            attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
        ).returning(jobs.c.id)
        return sorted(session.execute(stmt).scalars().all())

    return _in_transaction(bind, op)


# --------------------------------------------------------------------------- requeue
def experiment_job_ids(experiment: str) -> Select:
    """Ids of every job any run of ``experiment`` needs (a SELECT to embed)."""
    return (
        select(RunJob.job_id)
        .join(ExperimentRun, ExperimentRun.id == RunJob.run_id)
        .join(Experiment, Experiment.id == ExperimentRun.experiment_id)
        .where(Experiment.name == experiment)
    )


def _check_experiment(session: Session, experiment: str | None) -> None:
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
        _check_experiment(session, experiment)
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

    return _in_transaction(bind, op)


def requeue_stale(bind: Session | Engine, experiment: str | None = None) -> RequeueReport:
    """Running jobs whose lease expired go back to pending now (a claim would take them anyway)."""

    def op(session: Session) -> RequeueReport:
        _check_experiment(session, experiment)
        where = [jobs.c.lease_expires_at < db_now(_dialect(session))]
        if experiment is not None:
            where.append(jobs.c.id.in_(experiment_job_ids(experiment)))
        stale = session.execute(REQUEUE_STALE.update(
            *where, lease_token=None, lease_expires_at=None, worker_id=None,
        ).returning(jobs.c.id)).scalars().all()
        return RequeueReport(stale=len(stale))

    return _in_transaction(bind, op)


# --------------------------------------------------------------------------- workers
def register_worker(
    bind: Session | Engine, *, name: str, host: str, pid: int, device: str, device_name: str = "",
    model_name: str | None = None, versions: dict | None = None,
) -> int:
    """Insert a ``workers`` row (status running, heartbeat = db now); return its id."""

    def op(session: Session) -> int:
        now = db_now(_dialect(session))
        row = Worker(name=name, host=host, pid=pid, device=device, device_name=device_name,
                     model_name=model_name, versions=versions or {}, status="running", self_check={})
        session.add(row)
        session.flush()
        session.execute(update(Worker.__table__).where(Worker.__table__.c.id == row.id)
                        .values(started_at=now, heartbeat_at=now))
        return row.id

    return _in_transaction(bind, op)


def update_worker(bind: Session | Engine, worker_id: int, **values: Any) -> None:
    """Set columns of a worker row (model_name, self_check, versions, ...)."""
    _in_transaction(bind, lambda s: s.execute(
        update(Worker.__table__).where(Worker.__table__.c.id == worker_id).values(**values)))


def mark_worker_stopped(bind: Session | Engine, worker_id: int, status: str = "stopped",
                        *, jobs_done: int | None = None) -> None:
    """Mark a worker stopped (clean exit) with db time and its final job count."""
    extra = {} if jobs_done is None else {"jobs_done": jobs_done}
    _in_transaction(bind, lambda s: s.execute(
        update(Worker.__table__).where(Worker.__table__.c.id == worker_id)
        .values(status=status, stopped_at=db_now(_dialect(s)), heartbeat_at=db_now(_dialect(s)), **extra)))


def other_live_hosts(bind: Session | Engine, host: str, within_seconds: float = 600.0) -> list[str]:
    """Hosts other than ``host`` with a running worker that heartbeated recently."""

    def op(session: Session) -> list[str]:
        recent = db_now(_dialect(session), -within_seconds)
        return list(session.execute(
            select(Worker.host).where(Worker.host != host, Worker.status == "running", Worker.heartbeat_at >= recent)
            .distinct().order_by(Worker.host)
        ).scalars().all())

    return _in_transaction(bind, op)


def worker_state(status: str, heartbeat_age_s: float | None, lease_seconds: float | None) -> str:
    """running | lost | stopped: a running row whose heartbeat is older than two leases is lost."""
    if status != "running":
        return status
    limit = 2 * (lease_seconds or DEFAULT_LEASE_SECONDS)
    return "lost" if heartbeat_age_s is not None and heartbeat_age_s > limit else "running"


def list_workers(bind: Session | Engine, *, live_only: bool = False) -> list[dict]:
    """Registered workers with their derived state and heartbeat age (database time)."""

    def op(session: Session) -> list[dict]:
        now = current_db_time(session)
        rows = []
        for w in session.execute(select(Worker).order_by(Worker.id)).scalars():
            age = (now - _as_utc(w.heartbeat_at)).total_seconds() if w.heartbeat_at else None
            state = worker_state(w.status, age, (w.versions or {}).get("lease_seconds"))
            if live_only and state != "running":
                continue
            rows.append({
                "id": w.id, "name": w.name, "host": w.host, "pid": w.pid, "device": w.device,
                "model": w.model_name, "state": state, "jobs_done": w.jobs_done,
                "heartbeat_age_s": None if age is None else round(age, 1),
                "self_check": "" if not w.self_check else ("ok" if _self_check_ok(w.self_check) else "FAILED"),
                "started_at": w.started_at,
            })
        return rows

    return _in_transaction(bind, op)


def _self_check_ok(record: dict) -> bool:
    return all(not isinstance(v, dict) or v.get("ok", True) for v in record.values())


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
        _check_experiment(session, experiment)
        scope = _job_scope(experiment)
        label = func.coalesce(Condition.name, literal("(") + jobs.c.kind + literal(")"))
        grouped = session.execute(
            select(label.label("condition"), func.coalesce(Model.name, literal("")).label("model"),
                   jobs.c.mode, jobs.c.status, func.count())
            .select_from(jobs.outerjoin(Condition, Condition.id == jobs.c.condition_id)
                         .outerjoin(Model, Model.id == jobs.c.model_id))
            .where(*scope).group_by(label, Model.name, jobs.c.mode, jobs.c.status)
        ).all()
        counts = _pivot_counts(grouped)
        totals = {s.value: sum(r[s.value] for r in counts) for s in S}
        done_recent = session.execute(
            select(func.count()).select_from(jobs).where(
                jobs.c.status == S.done, jobs.c.finished_at >= db_now(_dialect(session), -window_seconds), *scope)
        ).scalar_one()
        return StatusReport(
            experiment=experiment, counts=counts, totals=totals, done_last_window=done_recent,
            window_seconds=window_seconds, workers=list_workers(session, live_only=True),
            failed=failed_jobs(session, experiment, limit=failed_limit),
        )

    return _in_transaction(bind, op)


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
            select(jobs.c.id, jobs.c.job_key, jobs.c.kind, Condition.name, Model.name, jobs.c.mode,
                   jobs.c.attempts, jobs.c.error_type, jobs.c.error_message, jobs.c.error_traceback)
            .select_from(jobs.outerjoin(Condition, Condition.id == jobs.c.condition_id)
                         .outerjoin(Model, Model.id == jobs.c.model_id))
            .where(jobs.c.status == S.failed, *_job_scope(experiment))
            .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc()).limit(limit)
        ).all()
        keys = ("job_id", "job_key", "kind", "condition", "model", "mode", "attempts",
                "error_type", "error_message", "traceback")
        return [
            {**dict(zip(keys, row)), "kind": row[2].value if isinstance(row[2], JobKind) else row[2]}
            for row in rows
        ]

    return _in_transaction(bind, op)


def unfinished_jobs(bind: Session | Engine, model_ids: Collection[int] | None) -> int:
    """Jobs that a worker for ``model_ids`` (None: any model) may still get: blocked, pending
    or running, including model-less jobs."""

    def op(session: Session) -> int:
        where = [jobs.c.status.in_((S.blocked, S.pending, S.running))]
        if model_ids is not None:
            where.append(or_(jobs.c.model_id.in_(list(model_ids)), jobs.c.model_id.is_(None)))
        return session.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()

    return _in_transaction(bind, op)


def models_with_claimable_jobs(bind: Session | Engine, model_ids: Collection[int] | None = None) -> list[int]:
    """Model ids (ascending) that have claimable jobs now."""

    def op(session: Session) -> list[int]:
        where = [_claimable(jobs, db_now(_dialect(session))), jobs.c.model_id.is_not(None)]
        if model_ids is not None:
            where.append(jobs.c.model_id.in_(list(model_ids)))
        return list(session.execute(
            select(jobs.c.model_id).where(*where).distinct().order_by(jobs.c.model_id)).scalars().all())

    return _in_transaction(bind, op)
