"""Per-score and per-token rows of one experiment, as DataFrames: what ``tracker.results``,
``tracker.token_nlls``, ``tracker export`` and ``tracker show`` read.

The ``results`` view's columns plus what a researcher needs to find a row again outside the
database: the sample's own dataset key (``source_key``), the run's spec hash, the model's
revision, and the dtype and device the score was computed with. Token ids are returned as
stored; decoding them to text needs the model's tokenizer, which the composition roots
(:mod:`tracker.api`) bring.
"""
from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, bindparam, text

from analysis.load import _query, resolve_run_id
from tracker.errors import ConfigError, UnknownExperimentError

ALL_RUNS = "all"

RESULTS_COLUMNS = [
    "experiment", "run_id", "stage", "dataset", "sample_id", "source_key", "condition", "model", "mode",
    "nll", "n_tokens", "scorer_version", "status", "job_id", "score_id",
    "spec_hash", "model_revision", "dtype", "device",
]
TOKEN_COLUMNS = [
    "run_id", "dataset", "sample_id", "source_key", "condition", "model", "mode", "scorer_version", "score_id",
    "position", "token_id", "nll",
]

_RESULTS_SQL = """
    SELECT r.experiment, r.run_id, r.stage, r.dataset, r.sample_id, s.source_key, r.condition, r.model, r.mode,
           r.nll, r.n_tokens, r.scorer_version, r.status, r.job_id, r.score_id,
           er.spec_hash, m.revision AS model_revision,
           COALESCE(sc.dtype, m.dtype) AS dtype, sc.device AS device
    FROM results r
    JOIN samples s ON s.id = r.sample_id
    JOIN experiment_runs er ON er.id = r.run_id
    JOIN jobs j ON j.id = r.job_id
    JOIN models m ON m.id = j.model_id
    LEFT JOIN scores sc ON sc.id = r.score_id
    WHERE r.experiment = :experiment {run_filter} {scored_filter}
    ORDER BY r.run_id, r.dataset, s.source_key, r.sample_id, r.model, r.mode, r.condition, r.job_id
"""

_TOKENS_SQL = """
    SELECT r.run_id, r.dataset, r.sample_id, s.source_key, r.condition, r.model, r.mode, r.scorer_version,
           t.score_id, t.position, t.token_id, t.nll
    FROM results r
    JOIN samples s ON s.id = r.sample_id
    JOIN token_nlls t ON t.score_id = r.score_id
    WHERE r.experiment = :experiment {run_filter} {sample_filter}
    ORDER BY r.run_id, r.dataset, s.source_key, r.sample_id, r.model, r.mode, r.condition, t.score_id, t.position
"""

_SEGMENTS_SQL = text(
    "SELECT id AS score_id, bos_id, prefix_ids, doc_ids, query_ids, answer_ids FROM scores WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))

_SAMPLES_SQL = """
    SELECT DISTINCT s.id AS sample_id, s.dataset, s.source_key, s.split, s.doc, s.query, s.answer, s.recipe_hash
    FROM samples s JOIN results r ON r.sample_id = s.id
    WHERE r.experiment = :experiment {run_filter} {match}
    ORDER BY s.dataset, s.source_key, s.id
"""


def run_scope(engine: Engine, experiment: str, run: int | str | None) -> tuple[str, dict]:
    """The SQL filter for ``run``: the latest run (None), one run id, or every run (``"all"``)."""
    if isinstance(run, str) and run.strip().lower() == ALL_RUNS:
        _check_experiment(engine, experiment)
        return "", {}
    try:
        run_id = None if run is None else int(run)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Run {run!r} is not a run id.", hint="give a number (see `tracker status EXP`) or 'all'") \
            from err
    return "AND r.run_id = :run_id", {"run_id": resolve_run_id(engine, experiment, run_id)}


def _check_experiment(engine: Engine, experiment: str) -> None:
    resolve_run_id(engine, experiment, None)  # raises when the experiment has no run


def _frame(engine: Engine, sql: str, params: dict, columns: list[str]) -> pd.DataFrame:
    frame = _query(engine, text(sql), params, columns)
    for col in ("nll",):
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("run_id", "stage", "sample_id", "job_id", "position", "token_id"):
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("int64")
    for col in ("n_tokens", "score_id"):
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    if "status" in frame:
        frame["status"] = frame["status"].map(lambda s: getattr(s, "value", s)).astype(str)
    for col in ("experiment", "dataset", "source_key", "condition", "model", "mode", "scorer_version", "spec_hash",
                "model_revision", "dtype", "device"):
        if col in frame:
            frame[col] = frame[col].fillna("").astype(str)
    return frame


def load_result_rows(engine: Engine, experiment: str, run: int | str | None = None, *,
                     scored_only: bool = False) -> pd.DataFrame:
    """One row per run x scoring job (``scored_only``: per score); columns :data:`RESULTS_COLUMNS`."""
    run_filter, params = run_scope(engine, experiment, run)
    sql = _RESULTS_SQL.format(run_filter=run_filter, scored_filter="AND r.score_id IS NOT NULL" if scored_only else "")
    return _frame(engine, sql, {"experiment": experiment, **params}, RESULTS_COLUMNS)


def load_token_rows(engine: Engine, experiment: str, run: int | str | None = None, *,
                    sample_ids: list[int] | None = None) -> pd.DataFrame:
    """One row per answer token per score; columns :data:`TOKEN_COLUMNS`."""
    run_filter, params = run_scope(engine, experiment, run)
    sample_filter = ""
    if sample_ids is not None:
        sample_filter = "AND r.sample_id IN (" + ", ".join(str(int(i)) for i in sample_ids) + ")"
    sql = _TOKENS_SQL.format(run_filter=run_filter, sample_filter=sample_filter)
    return _frame(engine, sql, {"experiment": experiment, **params}, TOKEN_COLUMNS)


def load_segments(engine: Engine, score_ids: list[int]) -> pd.DataFrame:
    """The stored token ids of each score's segments: ``bos_id, prefix_ids, doc_ids, query_ids, answer_ids``."""
    columns = ["score_id", "bos_id", "prefix_ids", "doc_ids", "query_ids", "answer_ids"]
    if not score_ids:
        return pd.DataFrame(columns=columns)
    frame = _query(engine, _SEGMENTS_SQL, {"ids": [int(i) for i in score_ids]}, columns)
    frame["score_id"] = frame["score_id"].astype("int64")
    return frame


def find_samples(engine: Engine, experiment: str, key: str, run: int | str | None = None, *,
                 dataset: str | None = None) -> pd.DataFrame:
    """The samples of the run whose dataset key is ``key`` (``#ID``: the sample with that database id)."""
    run_filter, params = run_scope(engine, experiment, run)
    if key.startswith("#"):
        try:
            params["sample_id"] = int(key[1:])
        except ValueError as err:
            raise ConfigError(f"{key!r} is not a sample id.", hint="write #ID with a number, e.g. #17") from err
        match = "AND s.id = :sample_id"
    else:
        params["source_key"] = key
        match = "AND s.source_key = :source_key"
    if dataset is not None:
        params["dataset"] = dataset
        match += " AND s.dataset = :dataset"
    sql = _SAMPLES_SQL.format(run_filter=run_filter, match=match)
    found = _query(engine, text(sql), {"experiment": experiment, **params})
    if found.empty:
        where = f" in dataset {dataset}" if dataset else ""
        raise UnknownExperimentError(
            f"No sample {key}{where} in experiment {experiment!r}" + (f" run {params['run_id']}." if "run_id" in params
                                                                      else "."),
            hint="use the dataset's own key (the `source_key` column of `tracker export`) or #ID for a database id",
        )
    found["sample_id"] = found["sample_id"].astype("int64")
    return found
