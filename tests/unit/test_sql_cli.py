"""`tracker sql`: exact output in every format, and every write refused with nothing changed."""
from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner
from helpers.sql_fixtures import fixture_rows as _fixture_rows
from sqlalchemy import func, select, text

from tracker.cli import cli
from tracker.db import get_engine, is_sqlite
from tracker.db.reader_role import ensure_reader_role
from tracker.db.schema import Score

QUERY = "SELECT sample_id, condition, nll, n_tokens FROM results ORDER BY sample_id, condition"


def _run(url: str, *args: str):
    if not is_sqlite(url):  # `tracker sql` runs as the reader role that `tracker db upgrade` makes
        ensure_reader_role(get_engine(url))
    return CliRunner().invoke(cli, ["--db", url, "sql", *args])


def test_formats_exact_output(db_url):
    _fixture_rows(db_url)
    table = _run(db_url, QUERY)
    assert table.exit_code == 0, table.output
    assert table.output == (
        "sample_id  condition   nll  n_tokens\n"
        "---------  ---------  ----  --------\n"
        "        1  bare        1.5         4\n"
        "        1  oracle     1.25         4\n"
        "        2  bare          2         4\n"
        "        2  oracle\n"
    )
    csv_out = _run(db_url, QUERY, "--format", "csv")
    assert csv_out.output == "sample_id,condition,nll,n_tokens\n1,bare,1.5,4\n1,oracle,1.25,4\n2,bare,2.0,4\n2,oracle,,\n"
    js = _run(db_url, QUERY, "--format", "json")
    assert js.output == (
        '[{"sample_id": 1, "condition": "bare", "nll": 1.5, "n_tokens": 4}, '
        '{"sample_id": 1, "condition": "oracle", "nll": 1.25, "n_tokens": 4}, '
        '{"sample_id": 2, "condition": "bare", "nll": 2.0, "n_tokens": 4}, '
        '{"sample_id": 2, "condition": "oracle", "nll": null, "n_tokens": null}]\n'
    )


def test_empty_results_json_is_empty_array(db_url):
    assert _run(db_url, "SELECT * FROM results", "--format", "json").output == "[]\n"


WRITES_BOTH = [
    "DELETE FROM jobs",
    "DROP VIEW results",
    "COMMIT; DELETE FROM jobs",
    "WITH d AS (DELETE FROM jobs RETURNING *) SELECT * FROM d",
    "UPDATE scores SET nll = 0",
    "INSERT INTO experiments (name, description) VALUES ('x', '')",
    "CREATE TABLE evil (x int)",
    "SELECT 1; DELETE FROM jobs",
]
WRITES_PG = [
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM jobs",
    "SET TRANSACTION READ WRITE",
    "ROLLBACK; SET default_transaction_read_only = off; DELETE FROM jobs",
]
WRITES_SQLITE = [
    "PRAGMA query_only=0; DELETE FROM jobs",
    "PRAGMA query_only=0",
    "ATTACH DATABASE 'x.db' AS x",
    "VACUUM INTO 'copy.db'",
    "VACUUM",
]


def _counts(url: str) -> dict[str, int]:
    engine = get_engine(url)
    with engine.connect() as conn:
        out = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
               for t in ("jobs", "scores", "experiments", "samples")}
        out["results"] = conn.execute(text("SELECT count(*) FROM results")).scalar_one()
        out["nll_sum"] = conn.execute(select(func.sum(Score.nll))).scalar_one()
    return out


def test_writes_are_refused_and_change_nothing(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fixture_rows(db_url)
    before = _counts(db_url)
    files_before = sorted(os.listdir(tmp_path))
    statements = WRITES_BOTH + (WRITES_SQLITE if is_sqlite(db_url) else WRITES_PG)
    for statement in statements:
        result = _run(db_url, statement)
        assert result.exit_code == 1, f"{statement!r} was not refused: {result.output}"
        assert result.output.startswith("Error: "), result.output
        assert _counts(db_url) == before, statement
    assert sorted(os.listdir(tmp_path)) == files_before
    assert not Path(tmp_path, "x.db").exists() and not Path(tmp_path, "copy.db").exists()


def test_read_only_pragmas_and_recursive_ctes_still_work(sqlite_url):
    out = _run(sqlite_url, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
                           "SELECT sum(n) AS s FROM r", "--format", "csv")
    assert out.output == "s\n6\n"
    info = _run(sqlite_url, "PRAGMA table_info(token_nlls)", "--format", "csv")
    assert info.exit_code == 0 and "score_id" in info.output


def test_syntax_error_is_a_clear_error_not_a_traceback(db_url):
    result = _run(db_url, "SELEC nonsense")
    assert result.exit_code == 1 and result.output.startswith("Error: Query failed")
