"""The ``workers`` table: registration, heartbeats' stamps, who is live.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Engine,
    select,
    update,
)
from sqlalchemy.orm import Session

from tracker.db.clock import (
    as_utc,
    current_db_time,
    db_now,
    dialect_of,
)
from tracker.db.schema import (
    WorkerRow,
)
from tracker.queue.transitions import DEFAULT_LEASE_SECONDS, in_transaction


# --------------------------------------------------------------------------- workers
def register_worker(
    bind: Session | Engine, *, name: str, host: str, pid: int, device: str, device_name: str = "",
    model_name: str | None = None, versions: dict | None = None,
) -> int:
    """Insert a ``workers`` row (status running, heartbeat = db now); return its id."""

    def op(session: Session) -> int:
        now = db_now(dialect_of(session))
        row = WorkerRow(name=name, host=host, pid=pid, device=device, device_name=device_name,
                     model_name=model_name, versions=versions or {}, status="running", self_check={})
        session.add(row)
        session.flush()
        session.execute(update(WorkerRow.__table__).where(WorkerRow.__table__.c.id == row.id)
                        .values(started_at=now, heartbeat_at=now))
        return row.id

    return in_transaction(bind, op)


def update_worker(bind: Session | Engine, worker_id: int, **values: Any) -> None:
    """Set columns of a worker row (model_name, self_check, versions, ...)."""
    in_transaction(bind, lambda s: s.execute(
        update(WorkerRow.__table__).where(WorkerRow.__table__.c.id == worker_id).values(**values)))


def mark_worker_stopped(bind: Session | Engine, worker_id: int, status: str = "stopped",
                        *, jobs_done: int | None = None) -> None:
    """Mark a worker stopped (clean exit) with db time and its final job count."""
    extra = {} if jobs_done is None else {"jobs_done": jobs_done}
    in_transaction(bind, lambda s: s.execute(
        update(WorkerRow.__table__).where(WorkerRow.__table__.c.id == worker_id)
        .values(status=status, stopped_at=db_now(dialect_of(s)), heartbeat_at=db_now(dialect_of(s)), **extra)))


def other_live_hosts(bind: Session | Engine, host: str, within_seconds: float = 600.0) -> list[str]:
    """Hosts other than ``host`` with a running worker that heartbeated recently."""

    def op(session: Session) -> list[str]:
        recent = db_now(dialect_of(session), -within_seconds)
        return list(session.execute(
            select(WorkerRow.host).where(WorkerRow.host != host, WorkerRow.status == "running", WorkerRow.heartbeat_at >= recent)
            .distinct().order_by(WorkerRow.host)
        ).scalars().all())

    return in_transaction(bind, op)


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
        for w in session.execute(select(WorkerRow).order_by(WorkerRow.id)).scalars():
            age = (now - as_utc(w.heartbeat_at)).total_seconds() if w.heartbeat_at else None
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

    return in_transaction(bind, op)


def _self_check_ok(record: dict) -> bool:
    return all(not isinstance(v, dict) or v.get("ok", True) for v in record.values())
