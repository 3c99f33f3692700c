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
    log_to_mlflow,
    report_metrics,
    resolve_tracking_uri,
    sanitize_name,
)
from analysis.report import build_report
from analysis.synthetic import make_run
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
    spec_text = "name: exp_syn\nanalysis: {baseline: bare}\n"
    old_cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # nothing may land in the working directory
    try:
        mlflow_run_id = log_to_mlflow(report, uri, f"exp_syn run {run_id}", params, spec_text)
        cwd_files = os.listdir(".")
    finally:
        os.chdir(old_cwd)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {"report": report, "client": client, "run_id": mlflow_run_id, "tracker_run": run_id, "tmp": tmp,
            "spec_text": spec_text, "cwd_files": cwd_files}


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
    assert top == {"figures", "tables", "report.json", "report.txt", "spec.yaml"}
    tables = {a.path for a in client.list_artifacts(run_id, "tables")}
    for name in logged["report"].tables:
        assert f"tables/{name}.csv" in tables and f"tables/{name}.json" in tables
    effects = pd.read_csv(_download(logged, "tables/effects.csv"))
    assert len(effects) == len(logged["report"].effects)
    assert effects["d"].tolist() == pytest.approx(logged["report"].effects["d"].astype(float).tolist(), nan_ok=True)
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
