"""Log a report to MLflow: one run per analysis, with params, metrics, tables and figures.

MLflow keeps its own store, never the tracker's database: MLflow's tables ``jobs``,
``experiments`` and ``datasets`` collide with ours. The tracking URI is always explicit
(:func:`resolve_tracking_uri`), and the client API is used directly so that no global
MLflow state, run-context git lookups or system-metrics threads are involved.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from analysis.provenance import (
    absolute_db_url,
    describe_changes,
    fingerprint_parts,
    git_commit,
    input_fingerprint,
)
from analysis.render import render_report
from analysis.report_data import ReportData, frame_records
from tracker import settings
from tracker.errors import ConfigError

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
MAX_PARAM_LENGTH = 6000  # MLflow caps a param value at 6,000 characters
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\- /]")
_SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")


# ---------------------------------------------------------------- tracking URI

def default_tracking_uri(db_url: str) -> str:
    """``sqlite:///mlflow.db`` beside the tracker's SQLite file, or in the cwd otherwise."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        directory = Path(url.database).expanduser().resolve().parent
    else:
        directory = Path.cwd()
    return f"sqlite:///{directory / 'mlflow.db'}"


def _sql_url(uri: str):
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _SQL_SCHEMES:
        return None
    try:
        return make_url(uri)
    except ArgumentError:
        return None


def _same_place(a, b) -> bool:
    """Whether two SQLAlchemy URLs point at the same database (file, or server + db name)."""
    backend_a = a.get_backend_name().replace("postgres", "postgresql").replace("postgresqlql", "postgresql")
    backend_b = b.get_backend_name().replace("postgres", "postgresql").replace("postgresqlql", "postgresql")
    if backend_a != backend_b:
        return False
    if backend_a == "sqlite":
        if not a.database or not b.database or ":memory:" in (a.database, b.database):
            return False
        return os.path.realpath(os.path.expanduser(a.database)) == os.path.realpath(os.path.expanduser(b.database))
    local = {None, "", "localhost", "127.0.0.1", "::1"}
    host_a = "localhost" if a.host in local else a.host
    host_b = "localhost" if b.host in local else b.host
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend_a)
    return host_a == host_b and (a.port or default_port) == (b.port or default_port) and a.database == b.database


def check_tracking_uri(tracking_uri: str, db_url: str) -> None:
    """Refuse an MLflow store inside the tracker's own database."""
    mlflow_url, tracker_url = _sql_url(tracking_uri), _sql_url(db_url)
    if mlflow_url is None or tracker_url is None or not _same_place(mlflow_url, tracker_url):
        return
    shown = mlflow_url.render_as_string(hide_password=True)
    raise ConfigError(
        f"The MLflow tracking URI {shown} is the tracker's own database; MLflow's tables "
        "(jobs, experiments, datasets) would collide with the tracker's.",
        hint="give MLflow its own store: --mlflow-uri sqlite:///mlflow.db (or another database), "
        "or unset MLFLOW_TRACKING_URI to use mlflow.db beside the tracker's database",
    )


def resolve_tracking_uri(db_url: str, explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`; never our db."""
    uri = explicit or settings.mlflow_tracking_uri() or default_tracking_uri(db_url)
    check_tracking_uri(uri, db_url)
    return uri


# ---------------------------------------------------------------- run params

def default_params(db_url: str, *, spec_hash: str | None = None) -> dict:
    """Params every analysis run carries: tracker version, git commit, database (absolute, no password)."""
    from tracker.version import __version__

    params = {
        "tracker_version": __version__,
        "git_commit": git_commit() or "unknown",
        "db_url": absolute_db_url(db_url),
    }
    if spec_hash:
        params["spec_hash"] = spec_hash
    return params


# ---------------------------------------------------------------- names and metrics

def sanitize_name(name: str) -> str:
    """A metric/param key in MLflow's allowed set (alphanumerics, ``_ - . / space``)."""
    clean = _NAME_BAD.sub("_", str(name)).replace("/", "_")
    clean = re.sub(r"\.{2,}", ".", clean).strip(" .") or "_"
    return clean[:250]


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


# metric name -> effects column; a withheld CI (None) logs no ci_low / ci_high
EFFECT_METRICS = (("d", "d"), ("ci_low", "ci_low"), ("ci_high", "ci_high"), ("p", "p_ttest"), ("p_holm", "p_holm"),
                  ("n", "n"), ("win_rate", "win_rate"), ("mean_delta", "mean_delta"))


def report_metrics(report: ReportData) -> dict[str, float]:
    """Metrics named ``<kind>.<dataset>.<condition>``, prefixed by model and/or mode when
    the report has several.

    ``d.<dataset>.<condition>`` is the main table's d against the main reference (and
    ``ci_low``, ``ci_high``, ``p``, ``p_holm``, ``n``, ``win_rate``, ``mean_delta`` beside it); other
    tables get their own prefix (``hard.d``, ``semantic.d``, ``cmp.d``); effects against
    further references end in ``.vs_<reference>``.
    """
    info = report.info
    multi_model, multi_mode = len(info.get("models", [])) > 1, len(info.get("modes", [])) > 1
    main_ref = info.get("reference")
    metrics: dict[str, float] = {}

    def put(parts: list[str], value, model: str = "", mode: str = "") -> None:
        value = _finite(value)
        if value is None:
            return
        scope = ([model] if multi_model else []) + ([mode] if multi_mode else [])
        key = ".".join(sanitize_name(p) for p in [*scope, *parts] if p != "")
        metrics[key] = value

    prefix = {"main": [], "hard": ["hard"], "semantic": ["semantic"], "comparison": ["cmp"]}
    for r in report.effects.itertuples():
        kind = prefix.get(r.table, [r.table])
        cond = f"{r.condition}_vs_{r.reference}" if r.table == "comparison" else r.condition
        tail = [] if r.table in ("comparison", "semantic") or r.reference == main_ref else [f"vs_{r.reference}"]
        for stat, column in EFFECT_METRICS:
            put([*kind, stat, r.dataset, cond, *tail], getattr(r, column), r.model, r.mode)
    for r in report.tables.get("structural", pd.DataFrame()).itertuples():
        put(["structural_fraction", r.dataset], r.fraction, r.model, r.mode)
    for r in report.tables.get("gradient", pd.DataFrame()).itertuples():
        put(["gradient_rho", r.dataset], r.rho, r.model, r.mode)
    for r in report.tables.get("ranking", pd.DataFrame()).itertuples():
        put(["mean_rank", r.dataset, r.condition], r.mean_rank, r.model, r.mode)
        put(["share_best", r.dataset, r.condition], r.share_best, r.model, r.mode)
    for r in report.tables.get("factorial", pd.DataFrame()).itertuples():
        put(["factorial", r.factorial, r.dataset, r.contrast.replace(": ", "_"), r.step.replace("->", "_to_")], r.d, r.model, r.mode)
    for r in report.tables.get("decomposition", pd.DataFrame()).itertuples():
        put(["decomposition", r.decomposition, r.dataset], r.fraction, r.model, r.mode)
    for r in report.tables.get("attention", pd.DataFrame()).itertuples():
        put(["attention", r.dataset, r.condition, r.softmax, r.target], r.mean_share, r.model, r.mode)
    missing = report.missing
    if not missing.empty:
        metrics["samples_dropped"] = float(missing["dropped"].sum())
    return metrics


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 15] + "...[truncated]"


# ---------------------------------------------------------------- logging

@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's and Alembic's INFO chatter (store creation, migrations) for a while."""
    names = ("mlflow", "alembic", "alembic.runtime.migration")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # MLflow's own store triggers SQLAlchemy deprecation warnings nobody here can act on
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy)\.")
            warnings.filterwarnings("ignore", message=r".*noload.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store (not in whatever the cwd happens to be)."""
    url = _sql_url(tracking_uri)
    if url is None or url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    root = Path(url.database).expanduser().resolve().parent / "mlartifacts" / sanitize_name(experiment).replace(" ", "_")
    return root.as_uri()


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3's UI opens an experiment of this kind on its runs table; 3.x releases with the
# GenAI / machine-learning switch in the sidebar decide by the URL's ``workflowType`` instead
# (:func:`experiment_url`).
EXPERIMENT_KIND = "custom_model_development"
FINGERPRINT_TAG = "tracker.fingerprint"
INPUT_TAG_PREFIX = "tracker.input."
NOTE_TAG = "mlflow.note.content"


def experiment_url(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in the MLflow UI (MLflow 3 otherwise opens on its GenAI overview)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            client.set_experiment_tag(exp_id, NOTE_TAG, f"Analyses of tracker experiment `{name}`: one run per "
                                      "analysed input (re-analysing unchanged inputs adds no run).")
            return exp_id
        except MlflowException:  # created concurrently by another analysis
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def write_artifacts(report: ReportData, directory: Path, spec_text: str | None, *, figures: bool = True,
                    provenance: Mapping | None = None, table_json: bool = True, dpi: int | None = None) -> None:
    """Tables (CSV, and JSON records unless MLflow logs them as tables), the text report,
    the spec, ``provenance.json`` and the figures (PNG, PDF, SVG)."""
    tables_dir = directory / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, table in report.tables.items():
        table.to_csv(tables_dir / f"{name}.csv", index=False)
        if table_json:
            (tables_dir / f"{name}.json").write_text(json.dumps(frame_records(table), indent=1, allow_nan=False))
    (directory / "report.json").write_text(report.to_json())
    (directory / "report.txt").write_text(render_report(report))
    if spec_text is not None:
        (directory / "spec.yaml").write_text(spec_text)
    if provenance is not None:
        (directory / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))
    if figures:
        from analysis.figures import save_figures

        save_figures(report, directory / "figures", **({"dpi": dpi} if dpi else {}))


@dataclass
class LoggedRun:
    """The MLflow run holding an analysis: new, or the existing one when the inputs are unchanged."""

    run_id: str
    experiment_id: str
    created: bool
    changes: list[str] = field(default_factory=list)  # what differs from the experiment's previous run
    previous_run_id: str | None = None


def _find_runs(client, exp_id: str, filter_string: str = "", max_results: int = 1):
    return client.search_runs([exp_id], filter_string=filter_string, order_by=["attributes.start_time DESC"],
                              max_results=max_results)


def _headline_rows(report: ReportData) -> list[str]:
    """The main effects (pooled when there are several datasets) as a markdown table."""
    eff = report.effects
    if eff.empty:
        return []
    main = eff[(eff["table"] == "main") & (eff["reference"] == report.info.get("reference"))]
    if (main["dataset"] == "pooled").any():
        main = main[main["dataset"] == "pooled"]
    lines = ["| model / mode | dataset | condition | d | 95% CI | mark | p_holm | n |", "|---|---|---|---|---|---|---|---|"]
    for r in main.itertuples():
        d = "n/a" if r.d is None or pd.isna(r.d) else f"{r.d:+.3f}"
        ci = "withheld" if r.ci_low is None or pd.isna(r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        p = "n/a" if r.p_holm is None or pd.isna(r.p_holm) else f"{r.p_holm:.2g}"
        lines.append(f"| {r.model} / {r.mode} | {r.dataset} | {r.condition} | {d} | {ci} | {r.mark} | {p} | {r.n} |")
    return lines


def run_description(report: ReportData, provenance: Mapping, changes: list[str], previous: str | None) -> str:
    """The run's description (markdown): what was analysed, the main effects, notes, what changed."""
    info = report.info
    per_ds = ", ".join(f"{k} {v}" for k, v in info.get("n_per_dataset", {}).items())
    versions = ", ".join(f"{k}: {v}" for k, v in info.get("scorer_versions", {}).items())
    lines = [
        f"**{report.experiment}**, tracker run {report.run_id}: {info.get('n_samples', 0)} samples ({per_ds}), "
        f"{info.get('n_scores', 0)} scores; scorer {versions}; bootstrap {info.get('bootstrap')} (BCa), "
        f"seed {info.get('seed')}.",
        "",
        f"Code: tracker {provenance.get('tracker_version')}, commit {provenance.get('git_commit') or 'unknown'}, "
        f"analysis {provenance.get('analysis_version')}; spec {provenance.get('spec_hash') or '-'}; "
        f"database {provenance.get('db_url') or '-'}.",
    ]
    if previous is None:
        lines += ["", "First analysis logged for this experiment."]
    else:
        lines += ["", f"Changed since run {previous}:", *[f"- {c}" for c in changes]]
    headline = _headline_rows(report)
    if headline:
        lines += ["", "Main effects (delta = NLL(reference) - NLL(condition), positive = helps):", "", *headline]
    if report.notes:
        lines += ["", "Notes:", *[f"- {n}" for n in report.notes]]
    return "\n".join(lines)


def _provenance_tags(record: Mapping, fingerprint: str, parts: Mapping[str, str]) -> dict[str, str]:
    tags = {
        FINGERPRINT_TAG: fingerprint,
        "tracker.version": str(record.get("tracker_version")),
        "tracker.analysis_version": str(record.get("analysis_version")),
        "tracker.spec_hash": str(record.get("spec_hash") or ""),
        "tracker.scorer_versions": json.dumps(record.get("scorer_versions", {}), sort_keys=True),
        "tracker.db_url": str(record.get("db_url") or ""),
        **{f"tracker.package.{k}": v for k, v in record.get("packages", {}).items()},
        **{INPUT_TAG_PREFIX + k: v for k, v in parts.items()},
    }
    if record.get("git_commit"):
        tags["tracker.git_commit"] = record["git_commit"]
        tags["mlflow.source.git.commit"] = record["git_commit"]
    return tags


def log_analysis(
    report: ReportData,
    tracking_uri: str,
    run_name: str,
    params: Mapping | None = None,
    spec_text: str | None = None,
    *,
    provenance: Mapping | None = None,
    experiment_name: str | None = None,
    figures: bool = True,
) -> LoggedRun:
    """Log one analysis as one MLflow run, unless a finished run already holds the same inputs.

    The inputs' fingerprint (:func:`analysis.provenance.input_fingerprint`: tracker run,
    spec hash, scorer versions, analysis code, the analysed scores, bootstrap settings,
    plan) is a tag; a finished run with the same tag is returned instead of a new one. A new
    run's description says what changed since the experiment's previous run.
    """
    from analysis.provenance import provenance as make_provenance

    record = dict(provenance) if provenance is not None else make_provenance(report)
    parts = fingerprint_parts(record)
    fingerprint = input_fingerprint(record)
    settings.quiet_mlflow()
    # import first: importing mlflow configures its loggers, which would undo quiet_mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    with quiet_mlflow():
        client = MlflowClient(tracking_uri=tracking_uri)
        exp_id = _experiment_id(client, experiment_name or report.experiment, tracking_uri)
        same = _find_runs(client, exp_id, f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' and attributes.status = 'FINISHED'")
        if same:
            return LoggedRun(same[0].info.run_id, exp_id, created=False)
        previous = _find_runs(client, exp_id, f"tags.`{FINGERPRINT_TAG}` != ''")
        prev = previous[0] if previous else None
        changes = []
        if prev is not None:
            old = {k[len(INPUT_TAG_PREFIX):]: v for k, v in prev.data.tags.items() if k.startswith(INPUT_TAG_PREFIX)}
            changes = describe_changes(old, parts)
        prev_label = f"{prev.info.run_name} ({prev.info.run_id})" if prev is not None else None
        tags = {
            "tracker.experiment": report.experiment,
            "tracker.run_id": str(report.run_id),
            "mlflow.source.name": "tracker analyze",
            "mlflow.source.type": "LOCAL",
            NOTE_TAG: run_description(report, record, changes, prev_label),
            **_provenance_tags(record, fingerprint, parts),
        }
        run = client.create_run(exp_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            all_params = {**report.mlflow_params(), **dict(params or {})}
            param_items = [Param(sanitize_name(k), _param_value(v)) for k, v in all_params.items() if v is not None]
            now = int(time.time() * 1000)
            metric_items = [Metric(k, v, now, 0) for k, v in report_metrics(report).items()]
            for start in range(0, len(param_items), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=param_items[start : start + MAX_PARAMS_PER_BATCH], synchronous=True)
            for start in range(0, len(metric_items), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metric_items[start : start + MAX_METRICS_PER_BATCH], synchronous=True)
            client.log_batch(run_id, tags=[RunTag("tracker.notes", _param_value(" | ".join(report.notes)))], synchronous=True)
            with tempfile.TemporaryDirectory(prefix="tracker-mlflow-") as tmp:
                write_artifacts(report, Path(tmp), spec_text, figures=figures, provenance=record, table_json=False)
                client.log_artifacts(run_id, tmp)
            for name, table in report.tables.items():  # JSON tables the UI renders (log_table's format)
                client.log_table(run_id, data=_loggable(table), artifact_file=f"tables/{name}.json")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
    return LoggedRun(run_id, exp_id, created=True, changes=changes,
                     previous_run_id=prev.info.run_id if prev is not None else None)


def _loggable(table: pd.DataFrame) -> pd.DataFrame:
    """The table with JSON-safe cells (NaN -> None, dicts as JSON text) for ``log_table``."""
    cells = table.astype(object).map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    cells = cells.where(table.notna().to_numpy(), None)
    cells.columns = [str(c) for c in table.columns]
    return cells


def log_to_mlflow(
    report: ReportData,
    tracking_uri: str,
    run_name: str,
    params: Mapping | None = None,
    spec_text: str | None = None,
    *,
    experiment_name: str | None = None,
    figures: bool = True,
    provenance: Mapping | None = None,
) -> str:
    """:func:`log_analysis`, returning only the run id (new, or the unchanged inputs' existing run)."""
    return log_analysis(report, tracking_uri, run_name, params, spec_text, provenance=provenance,
                        experiment_name=experiment_name, figures=figures).run_id
