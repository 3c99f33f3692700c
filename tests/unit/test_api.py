"""The Python API and `tracker export` / `tracker show` on a run scored by a tiny real model:
frames equal SQL over the same database, exports round-trip through pandas, texts equal the
stored token ids decoded with the model's tokenizer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers.dataset_fixtures import drain
from sqlalchemy import create_engine, text

import tracker  # noqa: E402
from tracker.cli import cli  # noqa: E402
from tracker.db import dispose_engines  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec  # noqa: E402
from workers.tiny import build_tiny_tokenizer  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-random-llama"
LIMIT = 2


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory, sqlite_template) -> Path:
    """demo on 2 samples, scored by the tiny Llama (real token ids of a real tokenizer)."""
    path = tmp_path_factory.mktemp("api") / "scored.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    enqueue(load_spec("demo"), db=url, models=[MODEL], limit=LIMIT, tokenizers=load_tokenizer)
    drain(url, model=MODEL)
    dispose_engines()
    return path


@pytest.fixture
def db(scored_db, tmp_path) -> str:
    """A copy per test, addressed as a plain file path (as `--db tracker.db` is)."""
    path = tmp_path / "tracker.db"
    shutil.copyfile(scored_db, path)
    return str(path)


def sql(db: str, query: str, **params) -> list[tuple]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(query), params)]
    engine.dispose()
    return rows


def test_results_equal_the_view_joined_with_keys_and_score_facts(db):
    frame = tracker.results("demo", db=db)
    expected = sql(db, """
        SELECT r.job_id, r.condition, s.source_key, r.nll, sc.dtype, sc.device, r.scorer_version, er.spec_hash
        FROM results r JOIN samples s ON s.id = r.sample_id JOIN scores sc ON sc.id = r.score_id
        JOIN experiment_runs er ON er.id = r.run_id WHERE r.experiment = 'demo' ORDER BY r.job_id""")
    got = frame.sort_values("job_id")
    assert len(frame) == len(expected) == 9 * LIMIT  # demo: bare + 8 conditions
    assert list(zip(got["job_id"], got["condition"], got["source_key"], got["nll"], got["dtype"], got["device"],
                    got["scorer_version"], got["spec_hash"])) == expected
    assert set(frame["model_revision"]) == {sql(db, "SELECT revision FROM models WHERE name = :m", m=MODEL)[0][0]}


def test_token_nlls_with_text_are_the_stored_tokens_decoded(db):
    frame = tracker.token_nlls("demo", db=db, text=True)
    expected = sql(db, "SELECT t.score_id, t.position, t.token_id, t.nll FROM token_nlls t ORDER BY 1, 2")
    got = frame.sort_values(["score_id", "position"])
    assert list(zip(got["score_id"], got["position"], got["token_id"], got["nll"])) == expected
    tok = build_tiny_tokenizer()
    assert got["token"].tolist() == [tok.decode([i]) for i in got["token_id"]]
    answers = dict(sql(db, "SELECT id, answer FROM samples"))
    for (sample_id, score_id), group in got.groupby(["sample_id", "score_id"]):
        assert "".join(group["token"]) == answers[sample_id]  # byte tokens spell the answer


def test_analyze_returns_the_report_with_frames(db):
    report = tracker.analyze("demo", db=db, bootstrap=50)
    frames = report.frames()
    assert list(frames)[0] == "effects"
    effects = frames["effects"]
    assert set(effects["n"]) == {LIMIT}
    assert report.mlflow is None


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_round_trips_with_exact_counts_and_values(db, tmp_path, fmt):
    out = tmp_path / f"demo.{fmt}"
    result = CliRunner().invoke(cli, ["--db", db, "export", "demo", "--output", str(out), "--text"])
    assert result.exit_code == 0, result.output
    frame = {"parquet": pd.read_parquet, "csv": pd.read_csv,
             "jsonl": lambda p: pd.read_json(p, lines=True, dtype={"source_key": str}, precise_float=True)}[fmt](out)
    expected = sql(db, """
        SELECT r.score_id, s.source_key, r.condition, r.model, r.mode, sc.dtype, sc.device, r.scorer_version,
               m.revision, r.run_id, er.spec_hash, r.nll, r.n_tokens
        FROM results r JOIN samples s ON s.id = r.sample_id JOIN scores sc ON sc.id = r.score_id
        JOIN jobs j ON j.id = r.job_id JOIN models m ON m.id = j.model_id
        JOIN experiment_runs er ON er.id = r.run_id WHERE r.score_id IS NOT NULL ORDER BY r.score_id""")
    got = frame.sort_values("score_id")
    cols = ["score_id", "source_key", "condition", "model", "mode", "dtype", "device", "scorer_version",
            "model_revision", "run_id", "spec_hash", "nll", "n_tokens"]
    assert len(frame) == len(expected) == 9 * LIMIT
    assert [tuple(r) for r in got[cols].itertuples(index=False)] == expected
    tok = build_tiny_tokenizer()
    ids = {r[0]: r[1:] for r in sql(db, "SELECT id, prefix_ids, doc_ids, query_ids, answer_ids FROM scores")}
    for row in got.itertuples():
        prefix, doc, query, answer = (json.loads(v) if v is not None else None for v in ids[row.score_id])
        assert row.doc_text == tok.decode(doc) and row.query_text == tok.decode(query)
        assert row.answer_text == tok.decode(answer)
        if prefix:
            assert row.prefix_text == tok.decode(prefix)
    record = tracker.read_provenance(out)
    assert record["spec_hashes"] == sorted(set(got["spec_hash"])) and record["rows"] == len(frame)
    assert record["tracker_version"] == tracker.__version__ and "pandas" in record["packages"]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    if fmt == "parquet":
        assert b"tracker.provenance" in pq.read_schema(out).metadata
    else:
        assert Path(str(out) + ".provenance.json").is_file()


def test_export_tokens_writes_one_row_per_answer_token(db, tmp_path):
    out = tmp_path / "tokens.parquet"
    result = CliRunner().invoke(cli, ["--db", db, "export", "demo", "-o", str(out), "--tokens"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert len(frame) == sql(db, "SELECT count(*) FROM token_nlls")[0][0]
    sums = frame.groupby("score_id")["nll"].mean()
    stored = dict(sql(db, "SELECT id, nll FROM scores"))
    assert all(abs(sums[s] - stored[s]) < 1e-9 for s in stored)


def test_export_errors_are_error_and_hint(db, tmp_path):
    result = CliRunner().invoke(cli, ["--db", db, "export", "demo", "-o", str(tmp_path / "x.txt")])
    assert result.exit_code == 1 and "Error: Cannot tell the export format" in result.output
    assert "Hint:" in result.output
    result = CliRunner().invoke(cli, ["--db", db, "export", "nope", "-o", str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


def test_show_prints_texts_prefixes_and_token_nlls_side_by_side(db):
    key, sample_id = sql(db, "SELECT source_key, id FROM samples ORDER BY id")[0]
    view = tracker.show("demo", key, db=db)
    assert view.sample["sample_id"] == sample_id
    tok = build_tiny_tokenizer()
    stored = {c: (nll, json.loads(p) if p else None) for c, nll, p in sql(db, """
        SELECT c.name, sc.nll, sc.prefix_ids FROM scores sc JOIN jobs j ON j.id = sc.job_id
        JOIN conditions c ON c.id = j.condition_id WHERE j.sample_id = :s""", s=sample_id)}
    by_condition = view.conditions.set_index("condition")
    assert set(by_condition.index) == set(stored)
    for condition, (nll, prefix) in stored.items():
        assert by_condition.loc[condition, "nll"] == nll
        if prefix:
            assert by_condition.loc[condition, "prefix_text"] == tok.decode(prefix)
    [(model_mode, table)] = view.tokens.items()
    assert model_mode == (MODEL, "two_phase")
    tokens = sql(db, """SELECT c.name, t.position, t.token_id, t.nll FROM token_nlls t JOIN scores sc ON sc.id = t.score_id
        JOIN jobs j ON j.id = sc.job_id JOIN conditions c ON c.id = j.condition_id WHERE j.sample_id = :s""", s=sample_id)
    for condition, position, token_id, nll in tokens:
        row = table[table["position"] == position].iloc[0]
        assert row["token_id"] == token_id and row[condition] == nll and row["token"] == tok.decode([token_id])
    result = CliRunner().invoke(cli, ["--db", db, "show", "demo", f"#{sample_id}"])
    assert result.exit_code == 0, result.output
    answer = sql(db, "SELECT answer FROM samples WHERE id = :s", s=sample_id)[0][0]
    assert f"answer: {answer}" in result.output and repr(tok.decode([tokens[0][2]])) in result.output


def test_show_asks_which_sample_when_a_key_matches_several(db):
    key, sample_id = sql(db, "SELECT source_key, id FROM samples ORDER BY id")[0]
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # the same key in a second dataset of the run (as exp03's datasets could)
        conn.execute(text("UPDATE samples SET source_key = :k, dataset = 'other' WHERE id != :s"),
                      {"k": key, "s": sample_id})
    engine.dispose()
    result = CliRunner().invoke(cli, ["--db", db, "show", "demo", key])
    assert result.exit_code == 1 and f"Error: 2 samples of experiment 'demo' have the key {key}" in result.output
    assert "--dataset" in result.output and "Traceback" not in result.output
    again = CliRunner().invoke(cli, ["--db", db, "show", "demo", key, "--dataset", "other"])
    assert again.exit_code == 0 and "other/" in again.output


def test_import_tracker_is_light_and_works_beside_an_analysis_folder(db, tmp_path):
    work = tmp_path / "notebook"
    (work / "analysis").mkdir(parents=True)
    (work / "analysis" / "__init__.py").write_text("raise ImportError('the user folder, not ours')\n")
    shutil.copyfile(db, work / "tracker.db")
    code = (
        "import sys, tracker\n"
        "light = not any(m in sys.modules for m in ('pandas', 'torch', 'analysis'))\n"
        "frame = tracker.results('demo')\n"  # db=None: ./tracker.db
        "print(light, len(frame), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRACKER_DB", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", str(9 * LIMIT), "False"]
