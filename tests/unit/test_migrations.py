"""Migrations build exactly the models' schema, go down and up again, and old schemas are refused."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, text

from tracker.cli import cli
from tracker.db import create_tracker_engine, get_engine, migrate
from tracker.db.schema import Base
from tracker.errors import SchemaOutOfDate

OUR_TABLES = set(Base.metadata.tables)


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE})
        return compare_metadata(ctx, Base.metadata)


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("pg_empty_url")


def test_upgrade_head_matches_models_then_down_and_up(empty_url):
    engine = create_tracker_engine(empty_url)
    migrate.upgrade(engine, "head")
    assert _diff(engine) == []
    assert OUR_TABLES | {migrate.VERSION_TABLE} == _tables(engine)
    assert "results" in inspect(engine).get_view_names()
    assert migrate.current_revision(engine) == migrate.head_revision()

    migrate.downgrade(engine, "base")
    assert _tables(engine) == {migrate.VERSION_TABLE}
    assert inspect(engine).get_view_names() == []
    assert migrate.current_revision(engine) is None

    migrate.upgrade(engine, "head")
    assert _diff(engine) == []
    engine.dispose()


def test_results_view_has_the_documented_columns(db_url):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        cols = list(conn.execute(text("SELECT * FROM results")).keys())
    assert cols == ["experiment", "run_id", "stage", "dataset", "sample_id", "condition", "model", "mode",
                    "nll", "n_tokens", "scorer_version", "status", "job_id", "score_id"]


def test_version_table_has_our_name_so_mlflow_tables_cannot_collide(db_url):
    engine = get_engine(db_url)
    names = _tables(engine)
    assert "tracker_alembic_version" in names and "alembic_version" not in names


def test_fresh_sqlite_default_is_created_by_a_write_never_by_a_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    read = CliRunner().invoke(cli, ["sql", "SELECT count(*) AS n FROM results", "--format", "json"])
    assert read.exit_code == 1 and read.output.startswith(f"Error: No database at {tmp_path / 'tracker.db'}.")
    assert not (tmp_path / "tracker.db").exists()
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = CliRunner().invoke(cli, ["sql", "SELECT count(*) AS n FROM results", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == '[{"n": 0}]'
    assert migrate.current_revision(create_tracker_engine("sqlite:///tracker.db")) == migrate.head_revision()


def test_database_at_an_older_revision_is_refused_with_upgrade_hint(empty_url):
    engine = create_tracker_engine(empty_url)
    migrate.upgrade(engine, "head")
    with engine.begin() as conn:  # pretend the database was made by an older tracker
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = 'old0'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate) as info:
        get_engine(empty_url)
    assert "old0" in str(info.value) and "tracker db upgrade" in str(info.value)

    result = CliRunner().invoke(cli, ["--db", empty_url, "sql", "SELECT 1"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "tracker db upgrade" in result.output


def test_unmigrated_postgres_is_refused_not_silently_created(pg_empty_url):
    # `tracker sql` never logs in as the URL's role; the reader that `tracker db upgrade` makes is missing.
    result = CliRunner().invoke(cli, ["--db", pg_empty_url, "sql", "SELECT 1"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "run `tracker db upgrade`" in result.output
    assert migrate.current_revision(create_tracker_engine(pg_empty_url)) is None


def test_db_cli_upgrade_current_downgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    up = runner.invoke(cli, ["db", "upgrade", "--db", url])
    assert up.exit_code == 0 and f"revision {migrate.head_revision()}" in up.output
    cur = runner.invoke(cli, ["--db", url, "db", "current"])
    assert "up to date" in cur.output
    refused = runner.invoke(cli, ["--db", url, "db", "downgrade", "base"])  # no terminal: nothing is dropped
    assert refused.exit_code == 1 and "drops every tracker table (0 experiments" in refused.output
    assert "--yes" in refused.output and migrate.current_revision(create_tracker_engine(url)) == migrate.head_revision()
    down = runner.invoke(cli, ["--db", url, "db", "downgrade", "base", "--yes"])
    assert down.exit_code == 0 and "(none)" in down.output
    cur = runner.invoke(cli, ["--db", url, "db", "current"])
    assert "run `tracker db upgrade`" in cur.output


def test_unreachable_database_is_a_clear_error():
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    result = CliRunner().invoke(cli, ["--db", url, "sql", "SELECT 1"])
    assert result.exit_code == 1
    assert "does not answer" in result.output and "--db" in result.output
