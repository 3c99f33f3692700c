"""SQL to pandas: the analysis of a run stored in a real tracker database equals the in-memory one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text, update

from analysis import load
from analysis.report import analyze_experiment, build_report
from analysis.synthetic import make_run, write_run, write_selection
from tracker.db import create_tracker_engine
from tracker.errors import UnknownExperimentError

PLAN = {
    "baseline": "bare",
    "selection": {"stage": 2, "fraction": 0.4, "by": "bare"},
    "semantic_delta": {"reference": "random_tokens"},
    "gradient": ["random_tokens", "null", "helps"],
    "structural": {"random": "random_tokens", "oracle": "oracle"},
}
EFFECTS = {"random_tokens": 0.3, "oracle": 0.1, "helps": 0.8, "null": 0.0}
COMPARE = ["table", "dataset", "condition", "reference", "n", "mean_delta", "d", "ci_low", "ci_high", "p_ttest",
           "p_holm", "p_wilcoxon", "win_rate"]


@pytest.fixture
def engine(db_url):
    eng = create_tracker_engine(db_url)
    yield eng
    eng.dispose()


def test_database_analysis_equals_in_memory_analysis(engine):
    run = make_run(experiment="exp_syn", datasets=("alpha", "beta"), n_per_dataset=30, effects=EFFECTS, seed=21)
    run_id = write_run(engine, run)
    report = analyze_experiment(engine, "exp_syn", PLAN, bootstrap=200, seed=3)
    expected = build_report(
        run.results_frame(), PLAN, experiment="exp_syn", run_id=run_id, token_parity=run.parity_frame(), bootstrap=200, seed=3
    )
    assert report.run_id == run_id
    pd.testing.assert_frame_equal(report.effects[COMPARE], expected.effects[COMPARE], check_dtype=False)
    pd.testing.assert_frame_equal(report.tables["hardness"], expected.tables["hardness"], check_dtype=False)
    assert set(report.tables["hardness"]["measure"]) == {"bare", "odd_even"}  # odd/even came from token_nlls
    assert report.tables["hard_selection"]["source"].tolist() == ["computed", "computed"]


def test_load_results_matches_the_view_and_answers(engine):
    run = make_run(experiment="exp_syn", datasets=("alpha",), n_per_dataset=10, effects={"helps": 0.5}, seed=22)
    run_id = write_run(engine, run)
    frame = load.load_results(engine, "exp_syn", run_id)
    assert list(frame.columns) == load.RESULT_COLUMNS
    assert len(frame) == len(run.jobs)
    merged = frame.merge(run.scores, on="job_id", suffixes=("", "_src"))
    assert np.allclose(merged["nll"], merged["nll_src"])
    answers = dict(zip(run.samples["id"], run.samples["answer"]))
    assert all(answers[s] == a for s, a in zip(frame["sample_id"], frame["answer"]))
    assert set(frame["status"]) == {"done"}


def test_token_parity_from_sql_equals_pandas(engine):
    run = make_run(experiment="exp_syn", datasets=("alpha",), n_per_dataset=8, effects={"helps": 0.5}, tokens_per_answer=5, seed=23)
    run_id = write_run(engine, run)
    sql = load.load_token_parity(engine, run_id).sort_values("score_id").reset_index(drop=True)
    mem = run.parity_frame().sort_values("score_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(sql, mem, check_dtype=False)
    assert sql["n_even"].tolist() == [3] * len(sql) and sql["n_odd"].tolist() == [2] * len(sql)


def test_stored_selection_is_read_and_used(engine):
    run = make_run(experiment="exp_syn", datasets=("alpha", "beta"), n_per_dataset=20, effects=EFFECTS, seed=24)
    run_id = write_run(engine, run)
    frame = run.results_frame()
    bare = frame[(frame["condition"] == "bare") & (frame["dataset"] == "alpha")]
    members = bare.sort_values(["nll", "sample_id"], ascending=[False, True]).head(8)  # ceil(0.4 * 20)
    members = members.assign(rank=range(1, 9), value=members["nll"])[["sample_id", "score_id", "rank", "value"]]
    sel_id = write_selection(engine, run_id, 2, "alpha", members)
    stored = load.load_selections(engine, run_id)
    assert stored["sample_id"].tolist() == members["sample_id"].tolist()
    assert stored["rule"].iloc[0] == {"synthetic": True}
    report = analyze_experiment(engine, "exp_syn", PLAN, bootstrap=0)
    sel = report.tables["hard_selection"].set_index("dataset")
    assert sel.loc["alpha", "source"] == f"stored selection {sel_id}"
    assert bool(sel.loc["alpha", "agrees_with_recomputed"]) and sel.loc["beta", "source"] == "computed"
    hard = report.effects[(report.effects["table"] == "hard") & (report.effects["dataset"] == "alpha")]
    assert hard["n"].unique().tolist() == [8]


def test_incomplete_run_and_older_scorer_in_the_database(engine):
    run = make_run(experiment="exp_syn", datasets=("alpha",), n_per_dataset=20, effects={"helps": 0.5}, seed=25)
    run_id = write_run(engine, run)
    helps_jobs = run.jobs[run.jobs["condition"] == "helps"]["job_id"].iloc[:4].tolist()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM token_nlls WHERE score_id IN (SELECT id FROM scores WHERE job_id IN (1, 2))"))
        conn.execute(text("DELETE FROM scores WHERE job_id IN (:a, :b, :c, :d)"), dict(zip("abcd", helps_jobs)))
        conn.execute(text("UPDATE jobs SET status = 'pending' WHERE id IN (:a, :b, :c)"), dict(zip("abc", helps_jobs)))
        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :d"), {"d": helps_jobs[3]})
    old = make_run(experiment="exp_syn", datasets=("alpha",), n_per_dataset=20, effects={"helps": 5.0},
                   scorer_version="0", seed=26, id_offset=10_000)
    old.samples = old.samples.iloc[0:0]  # same samples as the new run, so nothing new to insert
    old.jobs["sample_id"] -= 10_000
    _attach_to_run(engine, old, run_id)
    report = analyze_experiment(engine, "exp_syn", {}, bootstrap=0)
    helps = report.effects[(report.effects["condition"] == "helps")].iloc[0]
    assert helps["n"] == 16
    assert helps["d"] < 3  # the old scorer's huge effect did not leak in
    miss = report.missing.set_index("condition")
    assert (miss.loc["helps", "unscored_pending"], miss.loc["helps", "unscored_failed"], miss.loc["helps", "dropped"]) == (3, 1, 4)
    assert report.info["scorer_versions"] == {"test-fake/two_phase": "1"}
    assert any("older versions 0" in n for n in report.notes)


def _attach_to_run(engine, run, run_id: int) -> None:
    """Insert another scorer version's jobs and scores into an existing run (same samples)."""
    from sqlalchemy import insert, select

    from tracker.db import schema as m

    with engine.begin() as conn:
        cond_ids = dict(conn.execute(select(m.Condition.name, m.Condition.id)).all())
        model_id = conn.execute(select(m.ModelRow.id)).scalar_one()
        conn.execute(insert(m.Job), [
            {"id": int(r.job_id), "job_key": f"old-{r.job_id}", "kind": m.JobKind.score, "sample_id": int(r.sample_id),
             "condition_id": cond_ids[r.condition], "model_id": model_id, "mode": r.mode,
             "scorer_version": r.scorer_version, "payload": {}, "status": m.JobStatus.done}
            for r in run.jobs.itertuples()
        ])
        conn.execute(insert(m.RunJob), [{"run_id": run_id, "job_id": int(j), "stage": 1} for j in run.jobs["job_id"]])
        conn.execute(insert(m.Score), [
            {"id": int(r.score_id), "job_id": int(r.job_id), "nll": float(r.nll), "n_tokens": 1, "doc_ids": [],
             "query_ids": [], "answer_ids": [], "extras": {}}
            for r in run.scores.itertuples()
        ])


def test_run_resolution(engine):
    first = write_run(engine, make_run(experiment="exp_a", datasets=("alpha",), n_per_dataset=5, seed=27))
    assert load.resolve_run_id(engine, "exp_a") == first
    assert load.resolve_run_id(engine, "exp_a", first) == first
    with pytest.raises(UnknownExperimentError, match="tracker enqueue exp_b"):
        load.resolve_run_id(engine, "exp_b")
    with pytest.raises(UnknownExperimentError, match="not a run of experiment"):
        load.resolve_run_id(engine, "exp_a", first + 99)


def test_latest_run_is_the_default(engine):
    from sqlalchemy import insert

    from tracker.db import schema as m

    run_id = write_run(engine, make_run(experiment="exp_a", datasets=("alpha",), n_per_dataset=5, seed=28))
    with engine.begin() as conn:
        exp_id = conn.execute(text("SELECT id FROM experiments WHERE name = 'exp_a'")).scalar_one()
        newer = conn.execute(
            insert(m.ExperimentRun).values(experiment_id=exp_id, spec_hash="other", overrides_key="", spec={})
            .returning(m.ExperimentRun.id)
        ).scalar_one()
        conn.execute(update(m.ExperimentRun).where(m.ExperimentRun.id == newer).values(overrides={"limit": 1}))
    assert load.resolve_run_id(engine, "exp_a") == newer > run_id
    report = analyze_experiment(engine, "exp_a", {}, bootstrap=0)
    assert report.run_id == newer and report.effects.empty  # the new run has no jobs yet
    assert "No scores yet: nothing to analyse." in report.notes


def test_pending_stage_selections_are_reported(engine):
    from sqlalchemy import insert

    from tracker.db import schema as m

    run_id = write_run(engine, make_run(experiment="exp_syn", datasets=("alpha",), n_per_dataset=6, seed=29))
    with engine.begin() as conn:
        for i, status in enumerate((m.JobStatus.blocked, m.JobStatus.blocked, m.JobStatus.done)):
            job_id = conn.execute(
                insert(m.Job).values(job_key=f"select-{i}", kind=m.JobKind.select, status=status, payload={})
                .returning(m.Job.id)
            ).scalar_one()
            conn.execute(insert(m.RunJob).values(run_id=run_id, job_id=job_id, stage=2))
    assert load.load_selection_jobs(engine, run_id) == {"blocked": 2, "done": 1}
    report = analyze_experiment(engine, "exp_syn", {}, bootstrap=0)
    assert any(n.startswith("Incomplete: 2 stage selections not made yet (2 blocked)") for n in report.notes)
    assert not report.effects.empty  # what is there is still analysed
