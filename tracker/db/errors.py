"""Driver errors classified once, by code: lost connection, lost race, or a refusal.

PostgreSQL errors carry a SQLSTATE (pgqueuer's ``sqlstate.py`` is the model); SQLite errors
carry a result code (``sqlite3.Error.sqlite_errorcode``). Message text is never matched:
callers catch :class:`DatabaseUnavailable` (retry once the server is back) or
:class:`TransientDatabaseError` (retry the transaction now) by type.
"""
from __future__ import annotations

from sqlalchemy import exc

from tracker.errors import DatabaseError, DatabaseUnavailable, TransientDatabaseError

# SQLSTATEs of a lost race: the same transaction may succeed when run again.
TRANSIENT_SQLSTATES = frozenset({
    "40P01",  # deadlock_detected
    "40001",  # serialization_failure
    "55P03",  # lock_not_available (lock_timeout)
})
# SQLSTATE classes / codes of a lost or refused connection.
CONNECTION_SQLSTATE_CLASSES = ("08",)  # connection_exception and its subclasses (08006, 08001, ...)
CONNECTION_SQLSTATES = frozenset({
    "57P01",  # admin_shutdown (fast stop, pg_terminate_backend)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up / shutting down)
})
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN = 5, 6, 14

TRANSIENT, LOST, REFUSED = "transient", "connection_lost", "refused"


def sqlstate_of(err: BaseException) -> str | None:
    orig = getattr(err, "orig", err)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def classify(err: BaseException) -> str:
    """``transient``, ``connection_lost`` or ``refused`` for a SQLAlchemy / DBAPI error."""
    orig = getattr(err, "orig", None) or err
    code = sqlstate_of(err)
    if code is not None:
        if code in TRANSIENT_SQLSTATES:
            return TRANSIENT
        if code.startswith(CONNECTION_SQLSTATE_CLASSES) or code in CONNECTION_SQLSTATES:
            return LOST
        return REFUSED
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        primary = sqlite_code & 0xFF  # extended codes keep the primary code in the low byte
        if primary in (SQLITE_BUSY, SQLITE_LOCKED):
            return TRANSIENT
        if primary == SQLITE_CANTOPEN:
            return LOST
        return REFUSED
    if getattr(err, "connection_invalidated", False):
        return LOST
    # psycopg raises OperationalError without a SQLSTATE only when no server answered
    # (refused, closed, timed out): the server itself always sends a code.
    if type(orig).__name__ == "OperationalError" and type(orig).__module__.startswith("psycopg"):
        return LOST
    return REFUSED


def translate_db_error(err: exc.DBAPIError | exc.OperationalError, where: str = "") -> DatabaseError:
    """Our error type for a driver error (see :func:`classify`), with a hint naming the fix."""
    msg = str(getattr(err, "orig", None) or err).strip()
    kind = classify(err)
    if kind == LOST:
        return DatabaseUnavailable(
            f"The database {where} does not answer: {msg}",
            hint="check that the server is running and the URL (--db / TRACKER_DB) is right",
        )
    if kind == TRANSIENT:
        if getattr(getattr(err, "orig", None), "sqlite_errorcode", None) is not None:
            hint = ("another process holds a write lock on the SQLite file for longer than the busy timeout "
                    "(an open transaction in a `sqlite3` shell or a database browser?); close it "
                    "(`fuser FILE` lists who has the file open; SQLite does not record the lock holder), "
                    "then run the command again")
        else:
            hint = "another transaction held the lock; the operation is retried (run it again if it gave up)"
        return TransientDatabaseError(f"The database {where} could not complete the transaction now: {msg}", hint=hint)
    return DatabaseError(f"The database refused the operation: {msg}")
