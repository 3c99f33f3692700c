"""Two sides of one experiment, effect by effect: two runs, scorer versions, dtypes or models.

Each side's per-sample NLLs are restricted to the samples both sides scored under the
condition and the reference, and d is computed exactly as ``tracker analyze`` computes it
(:func:`analysis.stats.effect_of_deltas`), so a changed conclusion shows as a changed d,
not as a changed sample set.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import Engine, text

from analysis import load, stats
from analysis.views import POOLED, dedupe_scores
from tracker.errors import ConfigError, UnknownExperimentError

SPLITS = ("run", "scorer_version", "dtype", "model")
SIDE_COLUMN = {"run": "run_id", "scorer_version": "scorer_version", "dtype": "dtype", "model": "model"}
COMPARE_COLUMNS = [
    "model", "mode", "dataset", "condition", "reference", "n", "d_a", "d_b", "d_diff", "mean_delta_a",
    "mean_delta_b", "delta_corr", "mark_a", "mark_b", "sign_flip",
]

_SPLIT_SQL = text(
    """
    SELECT r.run_id AS run_id, r.dataset AS dataset, r.sample_id AS sample_id, r.condition AS condition,
           r.model AS model, r.mode AS mode, r.nll AS nll, r.scorer_version AS scorer_version,
           r.job_id AS job_id, r.score_id AS score_id,
           COALESCE(NULLIF(m.dtype, ''), sc.dtype, '') AS dtype
    FROM results r
    JOIN jobs j ON j.id = r.job_id
    JOIN models m ON m.id = j.model_id
    JOIN scores sc ON sc.id = r.score_id
    WHERE r.experiment = :experiment AND r.nll IS NOT NULL
    """
)
SPLIT_COLUMNS = ["run_id", "dataset", "sample_id", "condition", "model", "mode", "nll", "scorer_version", "job_id",
                 "score_id", "dtype"]


def load_split_scores(engine: Engine, experiment: str) -> pd.DataFrame:
    """Every score of ``experiment`` (all runs), one row per run x score, with the model's dtype.

    Columns: :data:`SPLIT_COLUMNS`. ``dtype`` is the model identity's dtype, else the one
    the score recorded.
    """
    frame = load._query(engine, _SPLIT_SQL, {"experiment": experiment}, SPLIT_COLUMNS)
    if frame.empty:
        raise UnknownExperimentError(f"The database has no scores of experiment {experiment!r}.",
                                     hint=f"enqueue and score it first: `tracker run {experiment}`")
    frame["nll"] = pd.to_numeric(frame["nll"], errors="coerce").astype(float)
    for col in ("run_id", "sample_id", "job_id", "score_id"):
        frame[col] = pd.to_numeric(frame[col]).astype("int64")
    for col in ("dataset", "condition", "model", "mode", "scorer_version", "dtype"):
        frame[col] = frame[col].fillna("").astype(str)
    return frame


def side_values(frame: pd.DataFrame, by: str) -> list[str]:
    """The split's values, older first: runs by id, scorer versions by version, dtypes and models by first job."""
    column = frame[SIDE_COLUMN[by]]
    if by == "run":
        return [str(v) for v in sorted(column.unique())]
    if by == "scorer_version":
        return sorted(column.unique(), key=load.version_key)
    first = frame.groupby(column)["job_id"].min().sort_values(kind="stable")
    return [str(v) for v in first.index]


def choose_sides(values: list[str], by: str, a: str | None, b: str | None) -> tuple[str, str]:
    """``a`` and ``b`` (checked to exist), or the only two values, older first."""
    shown = ", ".join(values) or "(none)"
    if a is None and b is None:
        if len(values) != 2:
            raise ConfigError(f"Comparing by {by} needs two sides; the experiment has {len(values)}: {shown}.",
                              hint=f"name them: --a VALUE --b VALUE (one of {shown})")
        return values[0], values[1]
    if a is None or b is None:
        raise ConfigError("Give both sides (--a and --b) or neither.", hint=f"{by} values: {shown}")
    for side in (a, b):
        if str(side) not in values:
            raise ConfigError(f"No scores with {by} {side!r} in this experiment.", hint=f"{by} values: {shown}")
    if str(a) == str(b):
        raise ConfigError(f"Both sides are {by} {a!r}.", hint=f"pick two different values of: {shown}")
    return str(a), str(b)


def _side(frame: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    """One side's rows, reduced as the analysis reduces them: newest scorer version, one score per cell."""
    rows = frame[frame[SIDE_COLUMN[by]].astype(str) == value]
    if by != "scorer_version":
        rows, _ = load.keep_newest_scorer(rows)
    rows, _ = dedupe_scores(rows)
    return rows


def _deltas(side: pd.DataFrame, keys: list[str], reference: str) -> pd.DataFrame:
    """delta = NLL(reference) - NLL(condition) per (keys..., sample, condition), complete pairs only."""
    wide = side.pivot_table(index=[*keys, "sample_id"], columns="condition", values="nll", aggfunc="first")
    if reference not in wide:
        return pd.DataFrame(columns=[*keys, "sample_id", "condition", "delta"])
    deltas = wide.drop(columns=reference).rsub(wide[reference], axis=0)
    long = deltas.stack(future_stack=True).rename("delta").reset_index()
    return long[np.isfinite(long["delta"].to_numpy(dtype=float))]


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < stats.MIN_N or stats.is_constant(x) or stats.is_constant(y):
        return None
    return stats._clean(np.corrcoef(x, y)[0, 1])


def compare_sides(side_a: pd.DataFrame, side_b: pd.DataFrame, *, reference: str = "bare",
                  split_model: bool = False) -> pd.DataFrame:
    """Per (model, mode, dataset, condition): both sides' d over the samples both share.

    ``side_a`` / ``side_b`` hold ``dataset, sample_id, condition, model, mode, nll`` rows
    (one score per cell). With ``split_model`` the sides are two models, so ``model`` is
    not a key and is left out of the result. Several datasets add ``pooled`` rows (their
    per-sample deltas concatenated, as in the analysis). ``d_diff = d_b - d_a``;
    ``sign_flip``: both d's exist and have opposite signs.
    """
    keys = ["mode"] if split_model else ["model", "mode"]
    pairs = _deltas(side_a, keys, reference).merge(
        _deltas(side_b, keys, reference), on=[*keys, "sample_id", "condition"], suffixes=("_a", "_b"))
    datasets = side_a.drop_duplicates("sample_id").set_index("sample_id")["dataset"]
    pairs["dataset"] = pairs["sample_id"].map(datasets)
    rows = []
    for key, group in pairs.groupby([*keys, "condition"], sort=True):
        scope = dict(zip([*keys, "condition"], key))
        parts = [(ds, g) for ds, g in group.groupby("dataset", sort=True)]
        if len(parts) > 1:
            parts.append((POOLED, group))
        for dataset, part in parts:
            part = part.sort_values("sample_id")
            da, db = part["delta_a"].to_numpy(dtype=float), part["delta_b"].to_numpy(dtype=float)
            ea, eb = stats.effect_of_deltas(da), stats.effect_of_deltas(db)
            flip = ea.d is not None and eb.d is not None and np.sign(ea.d) * np.sign(eb.d) < 0
            rows.append({
                **scope, "dataset": dataset, "reference": reference, "n": ea.n, "d_a": ea.d, "d_b": eb.d,
                "d_diff": None if ea.d is None or eb.d is None else eb.d - ea.d,
                "mean_delta_a": ea.mean_delta, "mean_delta_b": eb.mean_delta, "delta_corr": _corr(da, db),
                "mark_a": ea.mark, "mark_b": eb.mark, "sign_flip": bool(flip),
            })
    columns = [c for c in COMPARE_COLUMNS if c != "model"] if split_model else COMPARE_COLUMNS
    return pd.DataFrame(rows, columns=columns)


def compare_experiment(engine: Engine, experiment: str, *, by: str, a: str | None = None, b: str | None = None,
                       reference: str = "bare", run_id: int | None = None) -> pd.DataFrame:
    """:func:`compare_sides` of two values of ``by`` (run, scorer_version, dtype, model) in one experiment.

    Without ``a`` and ``b`` the experiment must have exactly two values (taken older first).
    ``run_id`` restricts a split other than ``run`` to one run. The frame's ``attrs`` name
    the split and the two sides.
    """
    if by not in SPLITS:
        raise ConfigError(f"Cannot compare by {by!r}.", hint=f"--by one of: {', '.join(SPLITS)}")
    frame = load_split_scores(engine, experiment)
    if run_id is not None and by != "run":
        frame = frame[frame["run_id"] == int(run_id)]
    value_a, value_b = choose_sides(side_values(frame, by), by, a, b)
    result = compare_sides(_side(frame, by, value_a), _side(frame, by, value_b), reference=reference,
                           split_model=by == "model")
    result.attrs.update({"experiment": experiment, "by": by, "a": value_a, "b": value_b})
    return result


def compare_figure(comparison: pd.DataFrame, *, label_a: str = "A", label_b: str = "B") -> Figure:
    """d on side A against d on side B, one point per row, the diagonal y = x; sign flips in red."""
    fig = Figure(figsize=(5.5, 5.0), dpi=200)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = comparison.dropna(subset=["d_a", "d_b"])
    x, y = rows["d_a"].astype(float).to_numpy(), rows["d_b"].astype(float).to_numpy()
    flips = rows["sign_flip"].astype(bool).to_numpy()
    values = np.concatenate([x, y, [0.0]])
    pad = 0.1 * max(float(np.ptp(values)), 0.5)
    low, high = float(values.min()) - pad, float(values.max()) + pad
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="d_a = d_b")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.scatter(x[~flips], y[~flips], s=14, color="C0", label="same sign")
    ax.scatter(x[flips], y[flips], s=24, color="red", marker="D", label="sign flips")
    for r in rows[flips].itertuples():
        ax.annotate(f"{r.condition} ({r.dataset})", (r.d_a, r.d_b), fontsize=6, color="red",
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"d ({label_a})")
    ax.set_ylabel(f"d ({label_b})")
    ax.set_title(f"{comparison.attrs.get('experiment', '')}: d by {comparison.attrs.get('by', 'side')}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig
