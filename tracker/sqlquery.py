"""Read-only ad-hoc SQL (``tracker sql``), enforced by the database and the driver.

No keyword filter. On SQLite: a read-only connection plus ``sqlite3``'s authorizer that
allows reads only (this also refuses ``ATTACH``, ``VACUUM INTO`` and ``PRAGMA x=y``). On
PostgreSQL: the statement runs as a SELECT-only login role (:mod:`tracker.db.reader_role`),
never as the URL's role, inside a read-only transaction with extended-protocol execution,
which refuses a string holding more than one statement (so ``COMMIT; DELETE ...`` cannot
escape).

Every statement runs under a time limit that the database enforces (a SQLite progress
handler, PostgreSQL's ``statement_timeout``), can be cancelled on the server by a signal
(:mod:`tracker.signal_cancel`), and hands its rows over as a stream, so a result of any
size runs in constant memory.
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tracker.db import migrate, reader_role, require_existing_sqlite
from tracker.db.errors import LOST, classify
from tracker.errors import (
    DatabaseError,
    DatabaseMissing,
    DatabaseUnavailable,
    QueryCancelled,
    QueryTimeLimit,
    ReaderRoleUnavailable,
    ReadOnlyViolation,
    SchemaOutOfDate,
)
from tracker.settings import ENV_READER_DB, redact_url
from tracker.signal_cancel import CancelRequest

# Authorizer actions a pure read needs.
_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# Introspection pragmas that only read (called with a table/index name, never ``=value``).
_SQLITE_READ_PRAGMAS = {
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "table_list", "database_list", "collation_list", "function_list",
}
# SQLite calls the progress handler every this many VM instructions (well under 1 ms).
_SQLITE_PROGRESS_STEPS = 10_000
# PostgreSQL SQLSTATEs of a lost connection: class 08 and the 57P0x shutdown codes.
# libpq reports a refused login as text only (no SQLSTATE reaches the client), so these
# server messages are matched here, in the one place that opens the reader's connection.
_PG_LOGIN_REFUSED = ("password authentication failed", "no password supplied", "peer authentication failed",
                     "ident authentication failed", "is not permitted to log in", "pg_hba.conf",
                     "authentication failed")
VERSION_TABLE = "tracker_alembic_version"


@dataclass
class QueryStream:
    """Column names and an iterator over the rows of one running statement."""

    columns: list[str]
    rows: Iterator[tuple[Any, ...]]


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SQLITE_READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _time_limit_error(timeout_s: float) -> QueryTimeLimit:
    return QueryTimeLimit(
        f"The statement ran past the time limit of {timeout_s:g} s (--timeout) and the database stopped it.",
        hint="narrow the query (WHERE experiment = ..., LIMIT), or raise the limit: --timeout SECONDS (0 = none)",
    )


def _cancelled_error(cancel: CancelRequest) -> QueryCancelled:
    return QueryCancelled(f"Cancelled by {cancel.signal_name}: the statement was stopped on the database.",
                          cancel.signal_number or 0, hint="nothing was changed; rerun the statement when you want it")


# PostgreSQL SQLSTATEs that mean "not allowed": insufficient_privilege, read_only_sql_transaction.
_PG_REFUSED = ("42501", "25006")


def _refusal(reason: str, sqlstate: str | None = None) -> DatabaseError:
    low = reason.lower()
    sqlite_refusals = ("not authorized", "read-only", "readonly", "read only", "multiple commands",
                       "one statement", "prohibited", "authorization denied")
    if sqlstate in _PG_REFUSED or any(s in low for s in sqlite_refusals):
        return ReadOnlyViolation(f"Refused: {reason}", hint="`tracker sql` runs one read-only statement "
                                                            "(SELECT/WITH) over the tracker's tables")
    return DatabaseError(f"Query failed: {reason}", hint="check the statement; the tables and views are "
                                                         "listed under \"Ad-hoc SQL\" in the README")


def _check_revision(version: str | None, where: str) -> None:
    head = migrate.head_revision()
    if version == head:
        return
    hint = f"run `tracker db upgrade` (with --db {where} if it is not your default)"
    if version is None:
        raise SchemaOutOfDate(f"The database {where} has no tracker schema.", hint=hint)
    raise SchemaOutOfDate(f"The database {where} is at schema revision {version}, this tracker needs {head}.",
                          hint=hint)


# --- SQLite ---------------------------------------------------------------------------

@contextlib.contextmanager
def _open_sqlite(url: str, query: str, timeout_s: float, cancel: CancelRequest) -> Iterator[QueryStream]:
    require_existing_sqlite(url)
    path = Path(make_url(url).database or "").resolve()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        try:
            version = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
        except sqlite3.DatabaseError as err:  # no such table / file is not a database
            raise SchemaOutOfDate(f"The database {path} has no tracker schema ({err}).",
                                  hint=f"check the path, or run `tracker db upgrade --db sqlite:///{path}`") from err
        _check_revision(version[0] if version else None, str(path))
        conn.set_authorizer(_sqlite_authorizer)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        timed_out = False

        def progress() -> int:
            nonlocal timed_out
            if cancel.requested:
                return 1
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                return 1
            return 0

        # The progress handler is Python code, so it is also where a pending SIGINT/SIGTERM
        # handler gets to run while SQLite steps a statement.
        conn.set_progress_handler(progress, _SQLITE_PROGRESS_STEPS)
        cancel.on_cancel(conn.interrupt)

        def translate(err: Exception) -> DatabaseError | QueryCancelled:
            if cancel.requested:
                return _cancelled_error(cancel)
            if timed_out:
                return _time_limit_error(timeout_s)
            return _refusal(str(err))

        try:
            cur = conn.execute(query)
        except (sqlite3.DatabaseError, sqlite3.ProgrammingError) as err:
            # DatabaseError: "not authorized", "attempt to write a readonly database", "interrupted";
            # ProgrammingError: "You can only execute one statement at a time."
            raise translate(err) from err
        columns = [d[0] for d in cur.description or []]

        def rows() -> Iterator[tuple[Any, ...]]:
            try:
                for row in cur:
                    if cancel.requested:
                        raise _cancelled_error(cancel)
                    yield tuple(row)
            except (sqlite3.DatabaseError, sqlite3.ProgrammingError) as err:
                raise translate(err) from err
            finally:
                cur.close()

        row_iter = rows()
        try:
            yield QueryStream(columns, row_iter)
        finally:
            row_iter.close()  # before the connection closes under it
    finally:
        cancel.on_cancel(None)
        conn.close()


# --- PostgreSQL -----------------------------------------------------------------------

def _connect_reader(login_url: str, owner: str | None):
    """A psycopg connection as the reader, or the refusal that says how to make one.

    ``owner`` is the --db URL's role when the reader's URL was derived from it (None for
    --reader-db): the role whose future tables the printed default privileges cover.
    """
    import psycopg

    u = make_url(login_url)
    role, database = u.username or "", u.database or ""
    conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return psycopg.connect(conninfo, autocommit=False, connect_timeout=10, application_name="tracker sql")
    except psycopg.OperationalError as err:
        msg = str(err).strip()
        low = msg.lower()
        how = (f"give `tracker sql` a SELECT-only login with --reader-db URL or ${ENV_READER_DB} "
               f"(e.g. postgresql+psycopg://{role}:PASSWORD@{u.host or 'HOST'}/{database})")
        if 'role "' in low and "does not exist" in low:
            raise ReaderRoleUnavailable(
                f"The SELECT-only login role {role} that `tracker sql` runs as does not exist ({msg}).",
                hint=("run `tracker db upgrade` with an owner URL that may create roles (it creates the role), "
                      "or have an administrator run:\n" + _admin_sql(role, database, owner)
                      + f"\nor {how}") if owner is not None else f"check the role in --reader-db / ${ENV_READER_DB}",
            ) from err
        if any(needle in low for needle in _PG_LOGIN_REFUSED):
            raise ReaderRoleUnavailable(
                f"`tracker sql` cannot log in as its SELECT-only role {role} ({msg}); it never runs a "
                "statement as the URL's own role.",
                hint=("have an administrator give the role a password (or a pg_hba.conf entry) and set it up:\n"
                      + _admin_sql(role, database, owner, password=True) + f"\nthen {how}"),
            ) from err
        if f'database "{database.lower()}" does not exist' in low:
            raise DatabaseMissing(f"No database {database} on the server ({msg}).",
                                  hint="check the database name in --db / TRACKER_DB") from err
        raise DatabaseUnavailable(f"The database {redact_url(login_url)} does not answer: {msg}",
                                  hint="check the server and the URL (--db / TRACKER_DB)") from err


def _admin_sql(role: str, database: str, owner: str | None, password: bool = False) -> str:
    return reader_role.admin_sql(role, database, owner=owner or "OWNER_OF_THE_TABLES", password=password)


def _pg_connection_lost(err: Exception, conn) -> bool:
    return conn.broken or classify(err) == LOST


def _keep_cancelling(conn) -> None:
    """Send cancel requests until the connection closes (at most 5 s).

    One request is not enough: a signal that lands just before the statement is sent
    would cancel nothing, and the statement would then run to its time limit.
    """
    deadline = time.monotonic() + 5
    while not conn.closed and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the connection may close under us: then we are done
            conn.cancel_safe(timeout=2)
        time.sleep(0.2)


def _describe_columns(conn, query: str) -> list[str]:
    """Column names of a statement that returned no rows (psycopg's stream gives none then)."""
    pgconn = conn.pgconn
    prepared = pgconn.prepare(b"", query.encode(conn.info.encoding))
    if prepared.error_message:
        return []
    described = pgconn.describe_prepared(b"")
    return [described.fname(i).decode(conn.info.encoding) for i in range(described.nfields)]


@contextlib.contextmanager
def _open_postgres(url: str, reader_url: str | None, query: str, timeout_s: float,
                   cancel: CancelRequest) -> Iterator[QueryStream]:
    import psycopg

    login_url = reader_url or reader_role.reader_url(url)
    where = redact_url(login_url)
    conn = _connect_reader(login_url, owner=None if reader_url else (make_url(url).username or ""))
    try:
        conn.read_only = True  # every transaction starts READ ONLY

        def translate(err: Exception) -> Exception:
            if cancel.requested:
                return _cancelled_error(cancel)
            if _pg_connection_lost(err, conn):
                return DatabaseUnavailable(f"The connection to {where} was lost mid-query: {str(err).strip()}",
                                           hint="check that the server is running, then rerun the statement")
            if getattr(err, "sqlstate", None) == "57014":  # query_canceled, and we did not cancel it
                return _time_limit_error(timeout_s)
            if isinstance(err, psycopg.ProgrammingError) and err.sqlstate is None:  # stream(): no result set
                return DatabaseError("Query failed: the statement returns no rows to print.",
                                     hint="`tracker sql` prints the rows of one query (SELECT, WITH, VALUES, "
                                          "SHOW, EXPLAIN)")
            return _refusal(str(err).strip(), getattr(err, "sqlstate", None))

        with conn.cursor() as cur:
            try:
                cur.execute(reader_role.PRIVILEGE_CHECK_SQL)
                names = [d.name for d in cur.description]
                problems = reader_role.privilege_problems(dict(zip(names, cur.fetchone())))
                if problems:
                    raise ReaderRoleUnavailable(
                        f"`tracker sql` refuses to run a statement as {cur.connection.info.user}: "
                        + "; ".join(problems) + ".",
                        hint=f"use a SELECT-only login (`tracker db upgrade` creates one) in --reader-db / "
                             f"${ENV_READER_DB}, or leave both unset",
                    )
                _check_revision(_pg_version(cur), redact_url(url))
                cur.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            except psycopg.Error as err:
                raise translate(err) from err
            cancel.on_cancel(lambda: _keep_cancelling(conn))
            if cancel.requested:
                raise _cancelled_error(cancel)
            # Extended protocol (as stream() always uses): one statement only ("cannot
            # insert multiple commands into a prepared statement"); rows arrive one by one.
            # A suspended stream holds the connection's lock, so it is closed (which cancels
            # the rest of an unread result) before anything else uses the connection.
            stream = cur.stream(query)
            try:
                try:
                    first = next(stream, None)
                except psycopg.Error as err:
                    raise translate(err) from err
                columns = [d.name for d in cur.description] if cur.description else []

                def rows() -> Iterator[tuple[Any, ...]]:
                    try:
                        if first is None:
                            return
                        yield tuple(first)
                        for row in stream:
                            if cancel.requested:
                                raise _cancelled_error(cancel)
                            yield tuple(row)
                    except psycopg.Error as err:
                        raise translate(err) from err

                row_iter = rows()
                try:
                    if first is None:
                        stream.close()
                        columns = _describe_columns(conn, query)
                    yield QueryStream(columns, row_iter)
                finally:
                    row_iter.close()
            finally:
                stream.close()
    finally:
        cancel.on_cancel(None)
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        conn.close()



def _pg_version(cur) -> str | None:
    import psycopg

    try:
        cur.execute(f"SELECT version_num FROM {VERSION_TABLE}")
    except psycopg.errors.UndefinedTable:
        cur.connection.rollback()
        return None
    except psycopg.errors.InsufficientPrivilege as err:
        raise ReaderRoleUnavailable(
            f"The role {cur.connection.info.user} may not read the tracker's tables ({str(err).strip()}).",
            hint="run `tracker db upgrade` (it grants the reader SELECT on every table and view)",
        ) from err
    row = cur.fetchone()
    return row[0] if row else None


@contextlib.contextmanager
def open_readonly_query(url: str, query: str, *, timeout_s: float, cancel: CancelRequest,
                        reader_url: str | None = None) -> Iterator[QueryStream]:
    """Run one read-only statement against the database at ``url``; yield its column names and rows.

    ``timeout_s`` (0 = none) bounds the whole statement, sending its rows included; a
    signal recorded in ``cancel`` stops it on the server. On PostgreSQL the statement runs
    as ``reader_url``'s role, else as the reader role that ``tracker db upgrade`` made.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if reader_url:
            raise DatabaseError("--reader-db / $TRACKER_READER_DB is for PostgreSQL; this database is SQLite.",
                                hint="leave it unset: SQLite is opened read-only by `tracker sql` itself")
        with _open_sqlite(url, query, timeout_s, cancel) as stream:
            yield stream
        return
    if u.get_backend_name() == "postgresql":
        with _open_postgres(url, reader_url, query, timeout_s, cancel) as stream:
            yield stream
        return
    raise DatabaseError(f"`tracker sql` supports SQLite and PostgreSQL, not {u.get_backend_name()}",
                        hint="pass --db sqlite:///PATH or --db postgresql+psycopg://USER@HOST/DB")
