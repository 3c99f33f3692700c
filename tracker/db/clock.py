"""The database's clock: every time in a lease or a heartbeat is database time, never a worker's."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Interval, String, bindparam, func, literal, select
from sqlalchemy.orm import Session


def dialect_of(session: Session) -> str:
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


def db_now_plus(dialect: str, param: str) -> ColumnElement[Any]:
    """Database time plus the offset given at execution as bind parameter ``param``
    (see :func:`offset_param`), so a statement built once serves every lease length."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", "now", bindparam(param, type_=String())).concat("000")
    return func.now() + bindparam(param, type_=Interval())


def offset_param(dialect: str, seconds: float) -> Any:
    return f"{seconds:+.6f} seconds" if dialect == "sqlite" else timedelta(seconds=seconds)


def as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)  # SQLite stores UTC without an offset


def current_db_time(session: Session) -> datetime:
    """The database's current time, timezone-aware UTC."""
    value = session.execute(select(db_now(dialect_of(session)))).scalar_one()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value).astimezone(timezone.utc)
