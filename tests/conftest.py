"""Shared fixtures: fresh migrated databases per test, on SQLite and on the real PostgreSQL.

PostgreSQL: a template database is migrated once per session and each test gets its own
copy (``CREATE DATABASE ... TEMPLATE``), dropped afterwards; the shared ``test`` database is
never touched. With ``CI`` set, a PostgreSQL that does not answer fails the tests instead
of skipping them.
"""
from __future__ import annotations

import itertools
import os

# One math thread per process: tests run several worker processes at once on 2 cores, and
# oversubscribed torch threads make each forward pass ~10x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("TRACKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_counter = itertools.count()


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def _admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def _drop_database(admin, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    from tracker.db import create_tracker_engine, migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_tracker_engine(f"sqlite:///{path}")
    migrate.upgrade(engine, "head")
    with engine.connect() as conn:  # fold the WAL into the main file before copying
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path) -> str:
    """A fresh, migrated SQLite file for this test."""
    path = tmp_path / "tracker.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the server's `postgres` database (skip/fail when down)."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure means "no server"
        engine.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and does not answer at {PG_ADMIN_URL}: {err}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin) -> str:
    """Name of a migrated template database, created for this test session and dropped after."""
    from tracker.db import create_tracker_engine, migrate

    name = f"tracker_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_tracker_engine(_pg_url(name))
    migrate.upgrade(engine, "head")
    engine.dispose()
    yield name
    _drop_database(pg_admin, name)


def _fresh_database(pg_admin, prefix: str, template: str | None = None):
    """Create a uniquely named database (a copy of ``template`` if given), yield its URL, drop it."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    yield _pg_url(name)
    from tracker.db import dispose_engines

    dispose_engines()
    _drop_database(pg_admin, name)
    from tracker.db.reader_role import drop_reader_role

    drop_reader_role(pg_admin, name)  # roles are cluster-wide: `tracker db upgrade` made one per database


@pytest.fixture
def pg_url(pg_admin, pg_template) -> str:
    """A fresh, migrated PostgreSQL database for this test (dropped afterwards)."""
    yield from _fresh_database(pg_admin, "tracker_t", pg_template)


@pytest.fixture
def pg_empty_url(pg_admin) -> str:
    """A fresh, empty (unmigrated) PostgreSQL database for this test."""
    yield from _fresh_database(pg_admin, "tracker_e")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """The same test on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Tests never read the developer's TRACKER_DB / MLflow settings or write to the cwd."""
    monkeypatch.delenv("TRACKER_DB", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    from tracker.db import dispose_engines

    dispose_engines()
