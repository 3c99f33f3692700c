"""SQL to pandas: the rows an analysis reads, in as few round trips as possible.

Everything comes through the stable ``results`` view (one row per experiment run x scoring
job, ``nll`` NULL until scored) plus three narrow side queries: answer texts, per-score
odd/even token means from ``token_nlls`` and stored stage selections.
"""
from __future__ import annotations

import json
import re

import pandas as pd
from sqlalchemy import Engine, exc, text

from tracker.errors import UnknownExperimentError

RESULT_COLUMNS = [
    "experiment", "run_id", "stage", "dataset", "sample_id", "condition", "model", "mode",
    "nll", "n_tokens", "scorer_version", "status", "job_id", "score_id", "answer",
]

_RESULTS_SQL = text(
    """
    SELECT r.experiment, r.run_id, r.stage, r.dataset, r.sample_id, r.condition, r.model, r.mode,
           r.nll, r.n_tokens, r.scorer_version, r.status, r.job_id, r.score_id, s.answer
    FROM results r
    JOIN samples s ON s.id = r.sample_id
    WHERE r.experiment = :experiment AND r.run_id = :run_id
    """
)

_LATEST_RUN_SQL = text(
    """
    SELECT max(er.id) FROM experiment_runs er
    JOIN experiments e ON e.id = er.experiment_id
    WHERE e.name = :experiment
    """
)

_RUN_EXISTS_SQL = text(
    """
    SELECT er.id FROM experiment_runs er
    JOIN experiments e ON e.id = er.experiment_id
    WHERE e.name = :experiment AND er.id = :run_id
    """
)

# Mean NLL of the odd and of the even answer positions (0-based) of every score in a run;
# aggregated in SQL (one row per score, in primary-key order, no sort) so that token rows
# never cross the wire one by one.
_PARITY_SQL = text(
    """
    SELECT t.score_id AS score_id,
           AVG(CASE WHEN t.position % 2 = 1 THEN t.nll END) AS nll_odd,
           AVG(CASE WHEN t.position % 2 = 0 THEN t.nll END) AS nll_even,
           SUM(CASE WHEN t.position % 2 = 1 THEN 1 ELSE 0 END) AS n_odd,
           SUM(CASE WHEN t.position % 2 = 0 THEN 1 ELSE 0 END) AS n_even
    FROM token_nlls t
    WHERE t.score_id IN (
        SELECT sc.id FROM scores sc JOIN run_jobs rj ON rj.job_id = sc.job_id WHERE rj.run_id = :run_id
    )
    GROUP BY t.score_id
    """
)

_SELECTIONS_SQL = text(
    """
    SELECT sel.id AS selection_id, sel.stage AS stage, sel.dataset AS dataset, sel.rule AS rule,
           m.sample_id AS sample_id, m.score_id AS score_id, m.rank AS rank, m.value AS value
    FROM selections sel
    JOIN selection_members m ON m.selection_id = sel.id
    WHERE sel.run_id = :run_id
    ORDER BY sel.stage, sel.dataset, m.rank
    """
)


def _query(engine: Engine, sql, params: dict, columns: list[str] | None = None) -> pd.DataFrame:
    """Run one query into a DataFrame; driver errors leave as :class:`DatabaseError`."""
    try:
        with engine.connect() as conn:
            result = conn.execute(sql, params)
            rows = result.fetchall()
            names = list(result.keys())
    except exc.DBAPIError as err:
        from tracker.db import translate_db_error

        raise translate_db_error(err, engine.url.render_as_string(hide_password=True)) from err
    # column-wise construction: pandas' from_records probes each SQLAlchemy Row for
    # attributes, which costs ~30 us a row through SQLAlchemy's key-fallback path
    data = dict(zip(names, zip(*rows))) if rows else {name: [] for name in names}
    frame = pd.DataFrame({name: list(values) for name, values in data.items()}, columns=names)
    return frame if columns is None else frame[columns]


def resolve_run_id(engine: Engine, experiment: str, run_id: int | None = None) -> int:
    """The given run (checked to belong to ``experiment``), else the experiment's latest run."""
    if run_id is not None:
        found = _query(engine, _RUN_EXISTS_SQL, {"experiment": experiment, "run_id": int(run_id)})
        if found.empty:
            raise UnknownExperimentError(
                f"Run {run_id} is not a run of experiment {experiment!r}.",
                hint=f"list its runs with `tracker status {experiment}` or omit the run id",
            )
        return int(run_id)
    latest = _query(engine, _LATEST_RUN_SQL, {"experiment": experiment}).iloc[0, 0]
    if latest is None or pd.isna(latest):
        raise UnknownExperimentError(
            f"The database has no run of experiment {experiment!r}.",
            hint=f"enqueue it first with `tracker enqueue {experiment}`",
        )
    return int(latest)


def load_results(engine: Engine, experiment: str, run_id: int) -> pd.DataFrame:
    """All ``results`` rows of one experiment run, with each sample's answer text."""
    frame = _query(engine, _RESULTS_SQL, {"experiment": experiment, "run_id": int(run_id)}, RESULT_COLUMNS)
    return normalize_results(frame)


def normalize_results(frame: pd.DataFrame) -> pd.DataFrame:
    """Uniform dtypes whatever the driver returned (enum statuses, Decimal, None)."""
    frame = frame.copy()
    for col in ("nll",):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("run_id", "stage", "sample_id", "job_id"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("int64")
    for col in ("n_tokens", "score_id"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["status"] = frame["status"].map(lambda s: getattr(s, "value", s)).astype(str)
    for col in ("experiment", "dataset", "condition", "model", "mode", "scorer_version"):
        frame[col] = frame[col].fillna("").astype(str)
    if "answer" not in frame:
        frame["answer"] = ""
    return frame


PARITY_COLUMNS = ["score_id", "nll_odd", "nll_even", "n_odd", "n_even"]


def load_token_parity(engine: Engine, run_id: int) -> pd.DataFrame:
    """Per score: mean NLL of odd and even answer positions (0-based) and their counts.

    Columns: ``score_id, nll_odd, nll_even, n_odd, n_even`` (NaN mean where a score has no
    token of that parity, e.g. one-token answers have no odd position).
    """
    frame = _query(engine, _PARITY_SQL, {"run_id": int(run_id)}, PARITY_COLUMNS)
    return frame.astype({"score_id": "int64", "nll_odd": float, "nll_even": float, "n_odd": "int64", "n_even": "int64"})


def parity_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The same frame from long (score_id, parity, nll, n_tokens) rows (in-memory runs)."""
    if raw.empty:
        return pd.DataFrame(columns=PARITY_COLUMNS)
    raw = raw.astype({"score_id": "int64", "parity": "int64", "nll": float, "n_tokens": "int64"})
    wide = raw.pivot(index="score_id", columns="parity", values=["nll", "n_tokens"])
    nan = pd.Series(float("nan"), index=wide.index)
    zero = pd.Series(0, index=wide.index)
    out = pd.DataFrame(
        {
            "score_id": wide.index.to_numpy(),
            "nll_odd": wide.get(("nll", 1), nan).to_numpy(dtype=float),
            "nll_even": wide.get(("nll", 0), nan).to_numpy(dtype=float),
            "n_odd": wide.get(("n_tokens", 1), zero).fillna(0).to_numpy(dtype="int64"),
            "n_even": wide.get(("n_tokens", 0), zero).fillna(0).to_numpy(dtype="int64"),
        }
    )
    return out[PARITY_COLUMNS]


def load_selections(engine: Engine, run_id: int) -> pd.DataFrame:
    """Stored stage selections of a run, one row per member.

    Columns: ``selection_id, stage, dataset, rule (dict), sample_id, score_id, rank, value``.
    """
    frame = _query(engine, _SELECTIONS_SQL, {"run_id": int(run_id)})
    if frame.empty:
        return frame
    frame["rule"] = frame["rule"].map(_as_dict)
    return frame.astype({"stage": "int64", "sample_id": "int64", "rank": "int64", "value": float})


def _as_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {"rule": value}
        return parsed if isinstance(parsed, dict) else {"rule": parsed}
    return {}


# Attention probing (ed07/ed08): each score's share per (layer, softmax, target), averaged
# over its answer tokens in SQL, so per-token rows never cross the wire.
_ATTENTION_SQL = text(
    """
    SELECT r.dataset AS dataset, r.sample_id AS sample_id, r.condition AS condition, r.model AS model,
           r.mode AS mode, r.scorer_version AS scorer_version, a.score_id AS score_id, a.layer AS layer,
           a.softmax AS softmax, a.target AS target, AVG(a.share) AS share, COUNT(*) AS n_tokens
    FROM results r
    JOIN attention_shares a ON a.score_id = r.score_id
    WHERE r.experiment = :experiment AND r.run_id = :run_id
    GROUP BY r.dataset, r.sample_id, r.condition, r.model, r.mode, r.scorer_version, a.score_id, a.layer,
             a.softmax, a.target
    """
)
ATTENTION_COLUMNS = [
    "dataset", "sample_id", "condition", "model", "mode", "scorer_version", "score_id", "layer", "softmax",
    "target", "share", "n_tokens",
]


def load_attention(engine: Engine, experiment: str, run_id: int) -> pd.DataFrame:
    """Per probing score: mean attention share over its answer tokens per (layer, softmax, target).

    Columns: :data:`ATTENTION_COLUMNS` (``layer`` -1 = the mean over layers). Empty when the
    run has no probing scores.
    """
    frame = _query(engine, _ATTENTION_SQL, {"experiment": experiment, "run_id": int(run_id)}, ATTENTION_COLUMNS)
    return frame.astype({"sample_id": "int64", "score_id": "int64", "layer": "int64", "share": float,
                         "n_tokens": "int64"})


_SAMPLE_RECIPES_SQL = text(
    """
    SELECT s.id AS sample_id, s.dataset AS dataset, s.recipe_hash AS recipe_hash
    FROM samples s
    WHERE s.id IN (SELECT j.sample_id FROM run_jobs rj JOIN jobs j ON j.id = rj.job_id WHERE rj.run_id = :run_id)
    """
)
_RECIPE_SQL = text("SELECT s.recipe AS recipe FROM samples s WHERE s.id = :sample_id")


def load_sample_recipes(engine: Engine, run_id: int) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The run's samples as (sample_id, dataset, recipe_hash), and each distinct recipe by hash.

    One recipe is read per hash (the JSON column has no equality operator on PostgreSQL, so
    it cannot be DISTINCT-ed).
    """
    frame = _query(engine, _SAMPLE_RECIPES_SQL, {"run_id": int(run_id)})
    recipes: dict[str, dict] = {}
    for recipe_hash, group in frame.groupby("recipe_hash"):
        first = int(group["sample_id"].min())
        recipes[str(recipe_hash)] = _as_dict(_query(engine, _RECIPE_SQL, {"sample_id": first}).iloc[0, 0])
    return frame, recipes


_SELECT_JOBS_SQL = text(
    """
    SELECT j.status AS status, COUNT(*) AS n
    FROM jobs j JOIN run_jobs rj ON rj.job_id = j.id
    WHERE rj.run_id = :run_id AND j.kind = 'select'
    GROUP BY j.status
    """
)


def load_selection_jobs(engine: Engine, run_id: int) -> dict[str, int]:
    """Status counts of the run's stage-selection jobs (later stages' jobs wait for them)."""
    frame = _query(engine, _SELECT_JOBS_SQL, {"run_id": int(run_id)})
    return {str(getattr(s, "value", s)): int(n) for s, n in zip(frame["status"], frame["n"])} if len(frame) else {}


def version_key(version: str) -> tuple:
    """Natural sort key: "v10" > "v9", "1.10" > "1.9"; numbers before words at each place."""
    parts = re.findall(r"\d+|[A-Za-z]+", version or "")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts) + ((2, 0, version or ""),)


def keep_newest_scorer(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep, per (model, mode), only rows of the newest scorer version.

    Returns (kept rows, a table of what was kept and dropped) so the report can say which
    version it analysed; scores of different scorer versions never mix.
    """
    rows = []
    keep = pd.Series(False, index=frame.index)
    for (model, mode), group in frame.groupby(["model", "mode"], sort=True):
        versions = sorted(group["scorer_version"].unique(), key=version_key)
        newest = versions[-1]
        is_newest = group["scorer_version"] == newest
        keep.loc[group.index[is_newest.to_numpy()]] = True
        dropped = group[~is_newest]
        rows.append(
            {
                "model": model,
                "mode": mode,
                "scorer_version": newest,
                "older_versions": ", ".join(versions[:-1]),
                "rows_kept": int(is_newest.sum()),
                "rows_dropped": int(len(dropped)),
                "scores_dropped": int(dropped["nll"].notna().sum()),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=["model", "mode", "scorer_version", "older_versions", "rows_kept", "rows_dropped", "scores_dropped"],
    )
    return frame[keep].copy(), table
