"""`tracker sql` output: same-named columns kept, NaN apart from NULL, the row policy, no database invented."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest
from click.testing import CliRunner
from helpers.sql_fixtures import fixture_rows
from sqlalchemy import select

from tracker.cli import cli
from tracker.db import get_engine, is_sqlite, session_scope
from tracker.db.reader_role import ensure_reader_role
from tracker.db.schema import Score, TokenNLL
from tracker.render import render_rows, unique_column_names

ROWS_2500 = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2500) SELECT n FROM r"
ENDLESS_ROWS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r"


def _sql(url: str, *args: str, env: dict[str, str] | None = None):
    if not is_sqlite(url):
        ensure_reader_role(get_engine(url))
    return CliRunner().invoke(cli, ["--db", url, "sql", *args], env=env)


def _add_token_nlls(url: str) -> None:
    with session_scope(get_engine(url)) as s:
        for score in s.scalars(select(Score).order_by(Score.id)):
            s.add_all([TokenNLL(score_id=score.id, position=p, token_id=10 + p, nll=score.nll / 4 + p)
                       for p in range(2)])


def test_unique_column_names_renames_later_duplicates_to_free_names():
    assert unique_column_names(["nll", "nll", "nll_2", "x", "nll"]) == (
        ["nll", "nll_3", "nll_2", "x", "nll_4"], [("nll", "nll_3"), ("nll", "nll_4")])
    assert unique_column_names(["a", "b"]) == (["a", "b"], [])


def test_renderer_keeps_nan_and_null_apart():
    rows = [(1, float("nan")), (2, None), (3, float("inf")), (4, -float("inf")), (5, 0.5)]
    assert render_rows(["k", "x"], rows, "csv") == "k,x\n1,NaN\n2,\n3,Infinity\n4,-Infinity\n5,0.5"
    assert json.loads(render_rows(["k", "x"], rows, "json")) == [
        {"k": 1, "x": "NaN"}, {"k": 2, "x": None}, {"k": 3, "x": "Infinity"}, {"k": 4, "x": "-Infinity"},
        {"k": 5, "x": 0.5}]
    table = render_rows(["k", "x"], rows, "table").splitlines()
    assert [line.split()[1:] for line in table[2:]] == [["NaN"], [], ["Infinity"], ["-Infinity"], ["0.5"]]


def test_same_named_columns_are_all_kept_in_json_and_csv(db_url):
    fixture_rows(db_url)
    _add_token_nlls(db_url)
    query = ("SELECT r.sample_id, r.nll, t.position, t.nll FROM results r JOIN token_nlls t "
             "ON t.score_id = r.score_id WHERE r.condition = 'bare' ORDER BY 1, 3")
    js = _sql(db_url, query, "--format", "json")
    assert js.exit_code == 0, js.output
    assert json.loads(js.stdout) == [
        {"sample_id": 1, "nll": 1.5, "position": 0, "nll_2": 0.375},
        {"sample_id": 1, "nll": 1.5, "position": 1, "nll_2": 1.375},
        {"sample_id": 2, "nll": 2.0, "position": 0, "nll_2": 0.5},
        {"sample_id": 2, "nll": 2.0, "position": 1, "nll_2": 1.5},
    ]
    assert js.stderr == "Note: columns of the same name renamed: nll -> nll_2\n"
    csv_out = _sql(db_url, query, "--format", "csv")
    assert csv_out.stdout.splitlines()[:2] == ["sample_id,nll,position,nll_2", "1,1.5,0,0.375"]
    assert csv_out.stderr == "Note: columns of the same name renamed: nll -> nll_2\n"


@pytest.mark.postgres
def test_nan_and_null_differ_in_csv_and_json_on_postgres(pg_url):
    query = "SELECT 1 AS k, 'NaN'::float8 AS x UNION ALL SELECT 2, NULL ORDER BY 1"
    assert _sql(pg_url, query, "--format", "csv").stdout == "k,x\n1,NaN\n2,\n"
    assert _sql(pg_url, query, "--format", "json").stdout == '[{"k": 1, "x": "NaN"}, {"k": 2, "x": null}]\n'


def test_table_shows_the_first_1000_rows_and_says_so(db_url):
    result = _sql(db_url, ROWS_2500)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 1000 and lines[-1].strip() == "1000"
    assert result.stderr.startswith("Note: printed the first 1000 rows; the statement returned more")
    everything = _sql(db_url, ROWS_2500, "--max-rows", "0")
    assert len(everything.stdout.splitlines()) == 2 + 2500 and everything.stderr == ""


def test_csv_and_json_stream_every_row_unless_capped(db_url):
    csv_out = _sql(db_url, ROWS_2500, "--format", "csv")
    assert csv_out.stdout == "n\n" + "".join(f"{i}\n" for i in range(1, 2501)) and csv_out.stderr == ""
    js = _sql(db_url, ROWS_2500, "--format", "json")
    assert json.loads(js.stdout) == [{"n": i} for i in range(1, 2501)]
    capped = _sql(db_url, ROWS_2500, "--format", "json", "--max-rows", "3")
    assert capped.stdout == '[{"n": 1}, {"n": 2}, {"n": 3}]\n'
    assert capped.stderr.startswith("Note: printed the first 3 rows")


def test_rows_are_streamed_so_an_endless_result_can_be_capped(db_url):
    # Without streaming the first row would wait for the whole (endless) result and the
    # time limit would end the command with an error instead.
    result = _sql(db_url, ENDLESS_ROWS, "--format", "csv", "--max-rows", "5", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert result.stdout == "n\n1\n2\n3\n4\n5\n"
    assert result.stderr.startswith("Note: printed the first 5 rows")


def test_empty_result_keeps_its_header(db_url):
    out = _sql(db_url, "SELECT sample_id, nll FROM results WHERE 1 = 0", "--format", "csv")
    assert out.exit_code == 0 and out.stdout == "sample_id,nll\n"


@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["status"], ["workers"]])
def test_read_commands_never_create_a_database(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "trakcer.db"
    for args in (["--db", f"sqlite:///{typo}", *command], command):  # a typo, and the default ./tracker.db
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        where = typo if "--db" in args else tmp_path / "tracker.db"
        assert result.stderr.startswith(f"Error: No database at {where}."), result.stderr
        assert "Hint: " in result.stderr and "Traceback" not in result.output
    assert os.listdir(tmp_path) == []


def test_reader_db_is_refused_for_sqlite(sqlite_url):
    result = _sql(sqlite_url, "SELECT 1", "--reader-db", "postgresql+psycopg://r@127.0.0.1/x")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --reader-db / $TRACKER_READER_DB is for PostgreSQL")


def test_a_file_that_is_no_tracker_database_is_refused(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{other}", "sql", "SELECT * FROM t"])
    assert result.exit_code == 1 and "has no tracker schema" in result.stderr


@pytest.mark.postgres
def test_a_statement_without_rows_is_a_clear_error(pg_url):
    result = _sql(pg_url, "DO $$ BEGIN PERFORM 1; END $$")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Query failed: the statement returns no rows to print.")
