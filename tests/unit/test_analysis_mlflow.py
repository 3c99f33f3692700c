"""MLflow: the tracking URI is explicit and never ours; a logged analysis reads back complete."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.mlflow_log import (
    default_params,
    default_tracking_uri,
    experiment_url,
    log_analysis,
    log_to_mlflow,
    report_metrics,
    resolve_tracking_uri,
    sanitize_name,
    write_artifacts,
)
from analysis.provenance import absolute_db_url, input_fingerprint, provenance
from analysis.report import build_report
from analysis.synthetic import drop_scores, make_run
from tracker.errors import ConfigError

PLAN = {
    "baseline": "bare",
    "selection": {"stage": 2},
    "semantic_delta": {"reference": "random_tokens"},
    "gradient": ["random_tokens", "null", "helps"],
    "structural": {"random": "random_tokens", "oracle": "oracle"},
    "contrasts": [["helps", "oracle"]],
}


# ------------------------------------------------------------------ tracking URI

def test_explicit_uri_wins_then_env_then_default(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path}/tracker.db"
    assert resolve_tracking_uri(db, "http://mlflow.example:5000") == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///somewhere/mlruns")
    assert resolve_tracking_uri(db, None) == "file:///somewhere/mlruns"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(db, None) == f"sqlite:///{tmp_path}/mlflow.db"


def test_default_is_beside_the_sqlite_file_or_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert default_tracking_uri("sqlite:///sub/tracker.db") == f"sqlite:///{tmp_path}/sub/mlflow.db"
    assert default_tracking_uri("postgresql+psycopg://postgres@127.0.0.1:5432/tracker") == f"sqlite:///{tmp_path}/mlflow.db"
    assert default_tracking_uri("sqlite://") == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize(
    "db_url, mlflow_uri",
    [
        ("sqlite:///{tmp}/tracker.db", "sqlite:///{tmp}/tracker.db"),
        ("sqlite:///{tmp}/tracker.db", "sqlite:///{tmp}/./sub/../tracker.db"),
        ("postgresql+psycopg://postgres:secret@127.0.0.1:5432/tracker", "postgresql://postgres@localhost/tracker"),
        ("postgresql://u@db.example/tracker", "postgresql+psycopg2://other@db.example:5432/tracker"),
    ],
)
def test_the_trackers_own_database_is_refused(tmp_path, db_url, mlflow_uri):
    (tmp_path / "sub").mkdir(exist_ok=True)
    db_url, mlflow_uri = db_url.format(tmp=tmp_path), mlflow_uri.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_tracking_uri(db_url, mlflow_uri)
    assert "collide" in str(err.value) and "--mlflow-uri" in str(err.value)
    assert "secret" not in str(err.value)


def test_the_trackers_database_is_refused_from_the_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/tracker.db")
    with pytest.raises(ConfigError):
        resolve_tracking_uri(f"sqlite:///{tmp_path}/tracker.db", None)


@pytest.mark.parametrize(
    "mlflow_uri",
    [
        "sqlite:///{tmp}/mlflow.db",
        "postgresql://postgres@127.0.0.1:5432/mlflow",
        "postgresql://postgres@127.0.0.1:5433/tracker",
        "postgresql://postgres@other.host/tracker",
        "file:///{tmp}/mlruns",
        "http://127.0.0.1:5000",
    ],
)
def test_other_stores_are_accepted(tmp_path, mlflow_uri):
    for db in (f"sqlite:///{tmp_path}/tracker.db", "postgresql+psycopg://postgres@127.0.0.1:5432/tracker"):
        uri = mlflow_uri.format(tmp=tmp_path)
        assert resolve_tracking_uri(db, uri) == uri


def test_sanitized_names_use_mlflows_charset():
    assert sanitize_name("squad_v2") == "squad_v2"
    assert sanitize_name("oracle@prefix_lm_bidir") == "oracle_prefix_lm_bidir"
    assert sanitize_name("trivia_qa/rc:wiki (hard)") == "trivia_qa_rc_wiki _hard_"
    assert sanitize_name("..") == "_"


def test_metric_names_carry_the_mode_when_there_are_several():
    run = make_run(datasets=("alpha",), n_per_dataset=10, effects={"oracle": 0.5},
                   modes=("two_phase", "prefix_lm_bidir"), seed=32)
    report = build_report(run.results_frame(), {}, experiment="syn", bootstrap=0)
    metrics = report_metrics(report)
    eff = report.effects.set_index(["mode", "condition"])
    assert metrics["two_phase.d.alpha.oracle"] == pytest.approx(eff.loc[("two_phase", "oracle"), "d"])
    assert metrics["prefix_lm_bidir.d.alpha.oracle"] == pytest.approx(eff.loc[("prefix_lm_bidir", "oracle"), "d"])
    assert not any(k.startswith("test-fake") for k in metrics)  # one model: no model prefix


def test_default_params_hide_the_password():
    params = default_params("postgresql+psycopg://u:hunter2@db.example/tracker", spec_hash="abc123")
    assert params["db_url"] == "postgresql+psycopg://u:***@db.example/tracker"
    assert params["spec_hash"] == "abc123"
    assert params["tracker_version"]
    assert params["git_commit"] == "unknown" or len(params["git_commit"]) == 40


# ------------------------------------------------------------------ a full logged analysis

@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A run stored in a fresh tracker SQLite database, analysed and logged to a fresh MLflow store."""
    from analysis.report import analyze_experiment
    from analysis.synthetic import write_run
    from tracker.db import create_tracker_engine, migrate

    tmp = tmp_path_factory.mktemp("mlflow")
    db_url = f"sqlite:///{tmp}/tracker.db"
    engine = create_tracker_engine(db_url)
    migrate.upgrade(engine, "head")
    run = make_run(
        experiment="exp_syn", datasets=("alpha", "beta"), n_per_dataset=30,
        effects={"random_tokens": 0.4, "oracle": 0.2, "helps": 0.8, "null": 0.0}, seed=31,
    )
    run_id = write_run(engine, run)
    report = analyze_experiment(engine, "exp_syn", PLAN, bootstrap=100)
    engine.dispose()
    uri = resolve_tracking_uri(db_url, None)
    assert uri == f"sqlite:///{tmp}/mlflow.db"
    params = default_params(db_url, spec_hash="f00d")
    record = provenance(report, db_url, spec_hash="f00d")
    spec_text = "name: exp_syn\nanalysis: {baseline: bare}\n"
    old_cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # nothing may land in the working directory
    try:
        mlflow_run_id = log_to_mlflow(report, uri, f"exp_syn run {run_id}", params, spec_text, provenance=record)
        cwd_files = os.listdir(".")
    finally:
        os.chdir(old_cwd)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {"report": report, "client": client, "run_id": mlflow_run_id, "tracker_run": run_id, "tmp": tmp,
            "spec_text": spec_text, "cwd_files": cwd_files, "provenance": record}


def _download(logged, path: str) -> Path:
    return Path(logged["client"].download_artifacts(logged["run_id"], path, str(logged["tmp"] / "dl")))


def test_run_is_named_after_the_experiment_run_and_finished(logged):
    run = logged["client"].get_run(logged["run_id"])
    assert run.info.run_name == f"exp_syn run {logged['tracker_run']}"
    assert run.info.status == "FINISHED"
    experiment = logged["client"].get_experiment(run.info.experiment_id)
    assert experiment.name == "exp_syn"
    assert run.data.tags["tracker.run_id"] == str(logged["tracker_run"])
    assert logged["cwd_files"] == []  # artifacts went beside the store, not into the cwd
    assert (logged["tmp"] / "mlartifacts").is_dir()


def test_params(logged):
    params = logged["client"].get_run(logged["run_id"]).data.params
    assert params["spec_hash"] == "f00d"
    assert params["models"] == "test-fake"
    assert params["n_samples"] == "60"
    assert json.loads(params["n_per_dataset"]) == {"alpha": 30, "beta": 30}
    assert params["seed"] == "0" and params["bootstrap"] == "100"
    assert params["scorer_version"] == "1"
    assert params["tracker_version"] and params["git_commit"]
    assert params["db_url"] == f"sqlite:///{logged['tmp']}/tracker.db"


def test_metrics_equal_the_report(logged):
    metrics = logged["client"].get_run(logged["run_id"]).data.metrics
    eff = logged["report"].effects
    main = eff[eff["table"] == "main"]
    for r in main.itertuples():
        assert metrics[f"d.{r.dataset}.{r.condition}"] == pytest.approx(r.d)
        assert metrics[f"win_rate.{r.dataset}.{r.condition}"] == pytest.approx(r.win_rate)
    sem = eff[(eff["table"] == "semantic") & (eff["dataset"] == "pooled") & (eff["condition"] == "helps")].iloc[0]
    assert metrics["semantic.d.pooled.helps"] == pytest.approx(sem["d"])
    assert metrics["cmp.d.pooled.helps_vs_oracle"] == pytest.approx(
        eff[(eff["table"] == "comparison") & (eff["dataset"] == "pooled")]["d"].iloc[0]
    )
    structural = logged["report"].tables["structural"].set_index("dataset")
    assert metrics["structural_fraction.pooled"] == pytest.approx(structural.loc["pooled", "fraction"])
    assert set(metrics) == set(report_metrics(logged["report"]))


def test_tables_spec_and_report_artifacts(logged):
    client, run_id = logged["client"], logged["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"figures", "tables", "report.json", "report.txt", "spec.yaml", "provenance.json"}
    tables = {a.path for a in client.list_artifacts(run_id, "tables")}
    for name in logged["report"].tables:
        assert f"tables/{name}.csv" in tables and f"tables/{name}.json" in tables
    effects = pd.read_csv(_download(logged, "tables/effects.csv"))
    assert len(effects) == len(logged["report"].effects)
    assert effects["d"].tolist() == pytest.approx(logged["report"].effects["d"].astype(float).tolist(), nan_ok=True)
    logged_tables = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "tables/effects.json", "type": "table"} in logged_tables
    assert len(logged_tables) == len(logged["report"].tables)
    shown = pd.read_json(_download(logged, "tables/effects.json"), orient="split")  # log_table's format
    assert len(shown) == len(effects)
    assert shown["d"].astype(float).tolist() == pytest.approx(effects["d"].tolist(), nan_ok=True)
    assert _download(logged, "spec.yaml").read_text() == logged["spec_text"]
    payload = json.loads(_download(logged, "report.json").read_text())
    assert payload["run_id"] == logged["tracker_run"] and len(payload["effects"]) == len(effects)


def test_figure_artifacts(logged):
    figures = {a.path for a in logged["client"].list_artifacts(logged["run_id"], "figures")}
    expected = {"forest_main", "forest_hard", "forest_semantic_vs_random_tokens", "forest_comparison",
                "hardness_heatmap", "semantic_gradient", "structural_fraction", "ranking"}
    assert {f"figures/{name}.png" for name in expected} <= figures
    png = _download(logged, "figures/forest_main.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert {f"figures/{name}.{fmt}" for name in expected for fmt in ("pdf", "svg")} <= figures


def test_experiment_opens_on_the_runs_table(logged):
    client = logged["client"]
    experiment = client.get_experiment(client.get_run(logged["run_id"]).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_url(experiment.experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")


def test_effect_metrics_carry_ci_p_holm_and_n(logged):
    metrics = logged["client"].get_run(logged["run_id"]).data.metrics
    main = logged["report"].effects[logged["report"].effects["table"] == "main"]
    for r in main.itertuples():
        key = f"{r.dataset}.{r.condition}"
        assert metrics[f"ci_low.{key}"] == pytest.approx(r.ci_low)
        assert metrics[f"ci_high.{key}"] == pytest.approx(r.ci_high)
        assert metrics[f"p.{key}"] == pytest.approx(r.p_ttest)
        assert metrics[f"p_holm.{key}"] == pytest.approx(r.p_holm)
        assert metrics[f"n.{key}"] == r.n


def test_withheld_cis_log_no_metric():
    run = make_run(datasets=("alpha",), n_per_dataset=5, effects={"helps": 0.5}, seed=33)
    metrics = report_metrics(build_report(run.results_frame(), {}, experiment="syn", bootstrap=100))
    assert "d.alpha.helps" in metrics and metrics["n.alpha.helps"] == 5
    assert "ci_low.alpha.helps" not in metrics and "ci_high.alpha.helps" not in metrics


def test_run_description_and_provenance_tags(logged):
    tags = logged["client"].get_run(logged["run_id"]).data.tags
    record = logged["provenance"]
    note = tags["mlflow.note.content"]
    assert note.startswith("**exp_syn**, tracker run 1: 60 samples (alpha 30, beta 30)")
    assert "First analysis logged" in note and "| test-fake / two_phase | pooled | helps |" in note
    assert tags["tracker.db_url"] == f"sqlite:///{logged['tmp']}/tracker.db"
    assert tags["tracker.spec_hash"] == "f00d"
    assert json.loads(tags["tracker.scorer_versions"]) == {"test-fake/two_phase": "1"}
    assert tags["tracker.fingerprint"] == input_fingerprint(record)
    assert tags["tracker.package.scipy"] == record["packages"]["scipy"]
    if record["git_commit"]:
        assert tags["mlflow.source.git.commit"] == record["git_commit"] and len(record["git_commit"]) == 40
    assert json.loads(_download(logged, "provenance.json").read_text()) == json.loads(json.dumps(record))


def test_relative_sqlite_url_is_made_absolute_and_credentials_hidden(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_db_url("sqlite:///sub/tracker.db") == f"sqlite:///{tmp_path}/sub/tracker.db"
    assert absolute_db_url("postgresql+psycopg://u:pw@db/t") == "postgresql+psycopg://u:***@db/t"
    assert default_params("sqlite:///tracker.db")["db_url"] == f"sqlite:///{tmp_path}/tracker.db"


def _runs(client, name):
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def test_repeating_an_analysis_adds_no_run_and_a_changed_input_adds_one(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = make_run(experiment="rep", datasets=("alpha",), n_per_dataset=20, effects={"helps": 0.5}, seed=34)
    report = build_report(run.results_frame(), {}, experiment="rep", run_id=1, bootstrap=50)
    first = log_analysis(report, uri, "rep run 1", figures=False)
    again = log_analysis(build_report(run.results_frame(), {}, experiment="rep", run_id=1, bootstrap=50), uri,
                         "rep run 1", figures=False)
    client = MlflowClient(tracking_uri=uri)
    assert first.created and not again.created and again.run_id == first.run_id
    assert len(_runs(client, "rep")) == 1
    fewer = drop_scores(run, run.jobs[run.jobs["condition"] == "helps"]["job_id"].iloc[:3])
    changed = log_analysis(build_report(fewer.results_frame(), {}, experiment="rep", run_id=1, bootstrap=50), uri,
                           "rep run 1", figures=False)
    assert changed.created and changed.run_id != first.run_id and changed.previous_run_id == first.run_id
    assert "scores analysed: 40 -> 37" in changed.changes
    assert any(c.startswith("score set: ") for c in changed.changes) and len(changed.changes) == 2
    note = client.get_run(changed.run_id).data.tags["mlflow.note.content"]
    assert f"Changed since run rep run 1 ({first.run_id}):" in note and "- scores analysed: 40 -> 37" in note
    assert len(_runs(client, "rep")) == 2


def test_out_directory_gets_the_same_provenance(tmp_path):
    run = make_run(datasets=("alpha",), n_per_dataset=12, effects={"helps": 0.5}, seed=35)
    report = build_report(run.results_frame(), {}, experiment="syn", bootstrap=50)
    record = provenance(report, "sqlite:///x.db", spec_hash="abc")
    write_artifacts(report, tmp_path, None, figures=False, provenance=record)
    assert json.loads((tmp_path / "provenance.json").read_text()) == json.loads(json.dumps(record))
    assert record["inputs"]["n_scores"] == 24 and record["spec_hash"] == "abc"


def test_out_figures_follow_the_dpi_asked_for(tmp_path):
    """``tracker analyze --out DIR --dpi N``: the PNGs have N pixels per inch; PDF and SVG come beside them."""
    from matplotlib.image import imread

    run = make_run(datasets=("alpha",), n_per_dataset=12, effects={"helps": 0.5}, seed=36)
    report = build_report(run.results_frame(), {}, experiment="syn", bootstrap=50)
    write_artifacts(report, tmp_path / "low", None, dpi=100)
    write_artifacts(report, tmp_path / "high", None, dpi=250)
    low = sorted((tmp_path / "low" / "figures").glob("*.png"))
    high = sorted((tmp_path / "high" / "figures").glob("*.png"))
    assert low and [p.name for p in low] == [p.name for p in high]
    for a, b in zip(low, high):
        (ha, wa), (hb, wb) = imread(a).shape[:2], imread(b).shape[:2]
        assert abs(wb / wa - 2.5) < 0.02 and abs(hb / ha - 2.5) < 0.02, a.name
        assert a.with_suffix(".pdf").exists() and a.with_suffix(".svg").exists()
