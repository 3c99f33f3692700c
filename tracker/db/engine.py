"""Engines, one-transaction-per-operation sessions and the schema check.

This is where the code meets the database: driver errors are translated into
:mod:`tracker.errors` here (classified by :mod:`tracker.db.errors`).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tracker.db import migrate
from tracker.db.errors import translate_db_error
from tracker.errors import DatabaseMissing, SchemaOutOfDate, TransientDatabaseError
from tracker.settings import redact_url, resolve_db_url

SQLITE_BUSY_TIMEOUT_MS = 60_000
_engines: dict[str, Engine] = {}
T = TypeVar("T")


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine.url if isinstance(url_or_engine, Engine) else make_url(url_or_engine)
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers and one writer share the file across processes on one host;
    # the busy timeout makes a second writer wait instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_tracker_engine(url: str) -> Engine:
    """A new engine for ``url`` with our connection settings (not cached)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("psycopg2", ""):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        u = u.set(drivername="postgresql+psycopg")
    return create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": 10})


def get_engine(url: str | None = None, *, check_schema: bool = True, create: bool = True) -> Engine:
    """The process-wide engine for ``url`` (resolved like ``--db``), ready to use.

    A fresh SQLite file is created and migrated on first use, unless ``create`` is False
    (commands that only read): then a missing file is :class:`DatabaseMissing`. Any other
    database that is not at the head revision is refused with a hint to run ``tracker db upgrade``.
    """
    url = resolve_db_url(url)
    if not create:
        require_existing_sqlite(url)
    engine = _engines.get(url)
    if engine is None:
        engine = create_tracker_engine(url)
        if check_schema:
            try:
                ensure_schema(engine)
            except BaseException:
                engine.dispose()
                raise
        _engines[url] = engine
    return engine


def require_existing_sqlite(url: str) -> None:
    """Raise :class:`DatabaseMissing` for a SQLite URL whose file is absent or empty."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return
    path = os.path.abspath(u.database)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise DatabaseMissing(
            f"No database at {path}" + (" (the file is empty)." if os.path.isfile(path) else "."),
            hint="check the path (--db / TRACKER_DB); only commands that write "
                 "(`tracker db upgrade`, `tracker enqueue`) create a new database",
        )


def dispose_engines() -> None:
    """Close every cached engine (tests, forked workers)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def _sqlite_file_is_new(engine: Engine) -> bool:
    database = engine.url.database
    if not database or database == ":memory:":
        return True
    return not os.path.exists(database) or os.path.getsize(database) == 0


def ensure_schema(engine: Engine) -> None:
    """Migrate a new SQLite file; refuse any database not at head."""
    if is_sqlite(engine) and _sqlite_file_is_new(engine):
        migrate.upgrade(engine, "head")
        return
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    if current == head:
        return
    where = redact_url(str(engine.url))
    if current is None:
        raise SchemaOutOfDate(
            f"The database {where} has no tracker schema.",
            hint=f"run `tracker db upgrade` (with --db {where} if it is not your default)",
        )
    raise SchemaOutOfDate(
        f"The database {where} is at schema revision {current}, this tracker needs {head}.",
        hint=f"run `tracker db upgrade` (with --db {where} if it is not your default)",
    )


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close.

    Driver errors leave as :class:`tracker.errors.DatabaseError` subclasses.
    """
    session = Session(bind=engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except exc.DBAPIError as err:
        session.rollback()
        raise translate_db_error(err, redact_url(str(engine.url))) from err
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_transaction(engine: Engine, op: Callable[[Session], T], *, attempts: int = 3) -> T:
    """``op`` in one transaction, run again (up to ``attempts`` times) when the transaction
    lost a race (:class:`TransientDatabaseError`: deadlock, serialization failure, SQLite lock)."""
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(engine) as session:
                return op(session)
        except TransientDatabaseError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
