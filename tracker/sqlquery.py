"""Read-only ad-hoc SQL (``tracker sql``), enforced by the database and the driver.

No keyword filter: on SQLite a read-only connection plus ``sqlite3``'s authorizer that
allows reads only (this also refuses ``ATTACH``, ``VACUUM INTO`` and ``PRAGMA x=y``); on
PostgreSQL a read-only transaction with server-side prepared execution, which refuses a
string holding more than one statement (so ``COMMIT; DELETE ...`` cannot escape).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tracker.errors import DatabaseError, ReadOnlyViolation
from tracker.settings import redact_url

# Authorizer actions a pure read needs.
_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# Introspection pragmas that only read (called with a table/index name, never ``=value``).
_SQLITE_READ_PRAGMAS = {
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "table_list", "database_list", "collation_list", "function_list",
}


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SQLITE_READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _run_sqlite(path: str, query: str) -> QueryResult:
    if not path or path == ":memory:" or not Path(path).exists():
        raise DatabaseError(f"No SQLite database at {path!r}.", hint="run `tracker db upgrade` first, or pass --db")
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        conn.set_authorizer(_sqlite_authorizer)
        try:
            cur = conn.execute(query)
            rows = cur.fetchall()
        except sqlite3.DatabaseError as err:  # includes "not authorized", "attempt to write a readonly database"
            raise _refusal(str(err)) from err
        except sqlite3.ProgrammingError as err:  # e.g. "You can only execute one statement at a time."
            raise _refusal(str(err)) from err
        columns = [d[0] for d in cur.description or []]
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.close()


def _run_postgres(url: str, query: str) -> QueryResult:
    import psycopg

    u = make_url(url)
    conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(conninfo, autocommit=False, connect_timeout=10)
    except psycopg.OperationalError as err:
        from tracker.errors import DatabaseUnavailable

        raise DatabaseUnavailable(f"The database {redact_url(url)} does not answer: {err}",
                                  hint="check the server and the URL (--db / TRACKER_DB)") from err
    try:
        conn.read_only = True  # every transaction starts READ ONLY
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '10min'")
            cur.execute("SET default_transaction_read_only = on")
            # Take the transaction's snapshot now, so that a later `SET TRANSACTION READ
            # WRITE` is refused by the server ("must be set before any query").
            cur.execute("SELECT 1")
            try:
                # prepare=True: extended protocol, one statement only ("cannot insert
                # multiple commands into a prepared statement").
                cur.execute(query, prepare=True)
            except psycopg.Error as err:
                raise _refusal(str(err).strip()) from err
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchall() if cur.description else []
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.rollback()
        conn.close()


def _refusal(reason: str) -> DatabaseError:
    low = reason.lower()
    if any(s in low for s in ("not authorized", "read-only", "readonly", "read only", "multiple commands",
                              "one statement", "prohibited", "authorization denied")):
        return ReadOnlyViolation(f"Refused: {reason}", hint="`tracker sql` runs one read-only statement (SELECT/WITH)")
    return DatabaseError(f"Query failed: {reason}")


def run_readonly_query(url: str, query: str) -> QueryResult:
    """Run one read-only statement against the database at ``url``."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return _run_sqlite(u.database or "", query)
    if u.get_backend_name() == "postgresql":
        return _run_postgres(url, query)
    raise DatabaseError(f"`tracker sql` supports SQLite and PostgreSQL, not {u.get_backend_name()}")
