"""`--db` parsing (one function, tracker.settings.resolve_db_url) and `tracker db current`'s exit status."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tracker.cli import cli
from tracker.db import create_tracker_engine
from tracker.errors import ConfigError
from tracker.settings import resolve_db_url


@pytest.mark.parametrize("given, url", [
    ("tracker.db", "sqlite:///tracker.db"),
    ("runs/x.sqlite3", "sqlite:///runs/x.sqlite3"),
    ("sqlite:///a.db", "sqlite:///a.db"),
    ("postgres://me:pw@host/db", "postgresql+psycopg://me:pw@host/db"),
    ("postgresql://host/db", "postgresql+psycopg://host/db"),
    ("postgresql+psycopg://host/db", "postgresql+psycopg://host/db"),
])
def test_database_arguments_become_urls(given, url):
    assert resolve_db_url(given) == url


def test_the_environment_goes_through_the_same_parser(monkeypatch):
    monkeypatch.setenv("TRACKER_DB", "postgres://h/d")
    assert resolve_db_url(None) == "postgresql+psycopg://h/d"
    assert resolve_db_url("x.db") == "sqlite:///x.db"  # --db wins


@pytest.mark.parametrize("given, says", [
    ("mysql://h/d", "does not support 'mysql'"),
    ("no such thing", "neither a database URL nor a SQLite file path"),
])
def test_unsupported_databases_are_refused_with_the_fix(given, says):
    with pytest.raises(ConfigError) as err:
        resolve_db_url(given)
    assert says in str(err.value) and "postgresql+psycopg://" in err.value.hint
    result = CliRunner().invoke(cli, ["--db", given, "status"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "Hint: " in result.output
    assert "Traceback" not in result.output


def test_a_plain_sqlite_path_works_for_every_command(sqlite_url, tmp_path, monkeypatch):
    path = sqlite_url.removeprefix("sqlite:///")
    result = CliRunner().invoke(cli, ["--db", path, "db", "current"])
    assert result.exit_code == 0 and "(up to date)" in result.output
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--db", "tracker.db", "sql", "SELECT count(*) AS n FROM jobs", "--format", "csv"])
    assert result.exit_code == 0 and result.output == "n\n0\n"


def test_db_current_exits_1_when_behind(sqlite_url):
    engine = create_tracker_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE tracker_alembic_version SET version_num = '0001'"))
    engine.dispose()
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "db", "current"])
    assert result.exit_code == 1
    assert "revision 0001; head" in result.output and "Hint: run `tracker db upgrade`" in result.output
