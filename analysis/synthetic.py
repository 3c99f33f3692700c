"""Synthetic experiment runs with known effects, for tests and the benchmark.

Each sample has a hardness ``h ~ N(3, 1)``; its reference NLL is ``h`` and a condition
with target effect ``d_c`` scores ``h - scale * (d_c + z)`` with ``z ~ N(0, 1)``, so the
paired deltas have Cohen's d close to ``d_c``. Token NLLs are drawn around the score and
shifted so that their mean is exactly the score's NLL.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, text

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


@dataclass
class SyntheticRun:
    """One experiment run's samples, jobs and scores, ready for a DataFrame or a database."""

    experiment: str
    samples: pd.DataFrame  # id, dataset, answer
    jobs: pd.DataFrame  # job_id, sample_id, condition, model, mode, scorer_version, stage, status
    scores: pd.DataFrame  # score_id, job_id, nll, n_tokens
    tokens: pd.DataFrame  # score_id, position, token_id, nll
    run_id: int = 1
    effects: dict[str, float] = field(default_factory=dict)

    def results_frame(self) -> pd.DataFrame:
        """Rows shaped like the ``results`` view joined with the samples' answers."""
        frame = self.jobs.merge(self.scores, on="job_id", how="left").merge(
            self.samples.rename(columns={"id": "sample_id"}), on="sample_id"
        )
        frame["experiment"] = self.experiment
        frame["run_id"] = self.run_id
        frame["score_id"] = frame["score_id"].astype("Int64")
        frame["n_tokens"] = frame["n_tokens"].astype("Int64")
        from analysis.load import RESULT_COLUMNS

        return frame[RESULT_COLUMNS]

    def parity_frame(self) -> pd.DataFrame:
        """What :func:`analysis.load.load_token_parity` returns for this run."""
        from analysis.load import parity_frame

        tok = self.tokens.assign(parity=self.tokens["position"] % 2)
        raw = tok.groupby(["score_id", "parity"], as_index=False).agg(nll=("nll", "mean"), n_tokens=("nll", "size"))
        return parity_frame(raw)


def make_run(
    *,
    experiment: str = "synthetic",
    datasets: Sequence[str] = ("alpha", "beta"),
    n_per_dataset: int = 40,
    effects: Mapping[str, float] | None = None,
    reference: str = "bare",
    model: str = "test-fake",
    modes: Sequence[str] = ("two_phase",),
    scorer_version: str = "1",
    tokens_per_answer: int = 10,
    scale: float = 0.3,
    seed: int = 0,
    id_offset: int = 0,
) -> SyntheticRun:
    """A complete run: every sample scored under the reference and each condition of ``effects``."""
    effects = dict(effects if effects is not None else {"helps": 0.8, "hurts": -0.5, "null": 0.0})
    rng = np.random.default_rng(seed)
    n = n_per_dataset * len(datasets)
    sample_ids = np.arange(1, n + 1) + id_offset
    words = rng.integers(1, 26, size=n)
    samples = pd.DataFrame(
        {
            "id": sample_ids,
            "dataset": np.repeat(list(datasets), n_per_dataset),
            "answer": [" ".join(rng.choice(WORDS, size=w)) for w in words],
        }
    )
    hardness = rng.normal(3.0, 1.0, size=n)
    conditions = [reference, *effects]
    job_rows, score_rows = [], []
    job_id = id_offset
    for mode in modes:
        for cond in conditions:
            if cond == reference:
                nll = hardness + rng.normal(0, 0.05, size=n)
            else:
                nll = hardness - scale * (effects[cond] + rng.normal(0, 1, size=n))
            for i in range(n):
                job_id += 1
                job_rows.append((job_id, int(sample_ids[i]), cond, model, mode, scorer_version, 1, "done"))
                score_rows.append((job_id, job_id, float(nll[i]), tokens_per_answer))
    jobs = pd.DataFrame(job_rows, columns=["job_id", "sample_id", "condition", "model", "mode", "scorer_version", "stage", "status"])
    scores = pd.DataFrame(score_rows, columns=["score_id", "job_id", "nll", "n_tokens"])
    tokens = make_tokens(scores, tokens_per_answer, rng)
    return SyntheticRun(experiment, samples, jobs, scores, tokens, effects=effects)


def make_tokens(scores: pd.DataFrame, per_answer: int, rng: np.random.Generator) -> pd.DataFrame:
    """Token NLLs whose per-score mean is exactly the score's NLL."""
    k = len(scores)
    if per_answer <= 0 or k == 0:
        return pd.DataFrame(columns=["score_id", "position", "token_id", "nll"])
    noise = rng.normal(0, 0.3, size=(k, per_answer))  # [scores, tokens]
    noise -= noise.mean(axis=1, keepdims=True)
    nll = scores["nll"].to_numpy()[:, None] + noise  # [scores, tokens]
    return pd.DataFrame(
        {
            "score_id": np.repeat(scores["score_id"].to_numpy(), per_answer),
            "position": np.tile(np.arange(per_answer), k),
            "token_id": rng.integers(0, 32000, size=k * per_answer),
            "nll": nll.ravel(),
        }
    )


def drop_scores(run: SyntheticRun, job_ids: Sequence[int], status: str = "pending") -> SyntheticRun:
    """The same run with some jobs unscored (left in ``status``)."""
    job_ids = set(int(j) for j in job_ids)
    scores = run.scores[~run.scores["job_id"].isin(job_ids)]
    jobs = run.jobs.copy()
    jobs.loc[jobs["job_id"].isin(job_ids), "status"] = status
    tokens = run.tokens[run.tokens["score_id"].isin(scores["score_id"])]
    return SyntheticRun(run.experiment, run.samples, jobs, scores, tokens, run.run_id, run.effects)


def write_run(engine: Engine, run: SyntheticRun, *, chunk: int = 50_000, dtype: str = "") -> int:
    """Insert a synthetic run into a migrated tracker database; returns the run id.

    A second run of the same experiment becomes its next run: samples, conditions and
    models already stored are reused (models by name and ``dtype``), so runs can share samples.
    """
    from sqlalchemy import func, select

    from tracker.db import schema as m

    conds = sorted(run.jobs["condition"].unique())
    model_names = sorted(run.jobs["model"].unique())
    with engine.begin() as conn:
        exp_id = conn.execute(select(m.Experiment.id).where(m.Experiment.name == run.experiment)).scalar()
        if exp_id is None:
            exp_id = conn.execute(insert(m.Experiment).values(name=run.experiment).returning(m.Experiment.id)).scalar_one()
        earlier = conn.execute(select(func.count()).select_from(m.ExperimentRun).where(m.ExperimentRun.experiment_id == exp_id)).scalar()
        run_id = conn.execute(
            insert(m.ExperimentRun).values(experiment_id=exp_id, spec_hash="synthetic", overrides_key=f"run{earlier}" if earlier else "",
                                           spec={})
            .returning(m.ExperimentRun.id)
        ).scalar_one()
        stored = set(conn.execute(select(m.Sample.id)).scalars())
        sample_rows = [
            {"id": int(r.id), "dataset": r.dataset, "split": "test", "source_key": f"s{r.id}", "recipe_hash": "r",
             "recipe": {}, "doc": "doc", "query": "query", "answer": r.answer, "meta": {}}
            for r in run.samples.itertuples() if int(r.id) not in stored
        ]
        if sample_rows:
            conn.execute(insert(m.Sample), sample_rows)
        cond_ids = dict(conn.execute(select(m.Condition.name, m.Condition.id).where(m.Condition.name.in_(conds))).all())
        for name in conds:
            if name not in cond_ids:
                cond_ids[name] = conn.execute(
                    insert(m.Condition).values(name=name, kind=name, params={}, definition_hash=f"h-{name}")
                    .returning(m.Condition.id)
                ).scalar_one()
        model_ids = {}
        for name in model_names:
            found = conn.execute(select(m.ModelRow.id).where(m.ModelRow.name == name, m.ModelRow.dtype == dtype)).scalar()
            model_ids[name] = found if found is not None else conn.execute(
                insert(m.ModelRow).values(name=name, dtype=dtype).returning(m.ModelRow.id)).scalar_one()
        job_rows = [
            {"id": int(r.job_id), "job_key": f"synthetic-{run_id}-{r.job_id}", "kind": m.JobKind.score,
             "sample_id": int(r.sample_id), "condition_id": cond_ids[r.condition], "model_id": model_ids[r.model],
             "mode": r.mode, "scorer_version": r.scorer_version, "payload": {}, "status": m.JobStatus(r.status)}
            for r in run.jobs.itertuples()
        ]
        _chunked(conn, m.Job, job_rows, chunk)
        _chunked(conn, m.RunJob, [{"run_id": run_id, "job_id": int(r.job_id), "stage": int(r.stage)} for r in run.jobs.itertuples()], chunk)
        score_rows = [
            {"id": int(r.score_id), "job_id": int(r.job_id), "nll": float(r.nll), "n_tokens": int(r.n_tokens),
             "doc_ids": [], "query_ids": [], "answer_ids": [], "extras": {}}
            for r in run.scores.itertuples()
        ]
        _chunked(conn, m.Score, score_rows, chunk)
        tok = run.tokens
        token_rows = [
            {"score_id": int(s), "position": int(p), "token_id": int(t), "nll": float(v)}
            for s, p, t, v in zip(tok["score_id"], tok["position"], tok["token_id"], tok["nll"])
        ]
        _chunked(conn, m.TokenNLL, token_rows, chunk)
        if conn.dialect.name == "postgresql":  # explicit ids do not advance PostgreSQL's sequences
            for table in ("samples", "jobs", "scores"):
                conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                ))
    run.run_id = int(run_id)
    return int(run_id)


def write_selection(engine: Engine, run_id: int, stage: int, dataset: str, members: pd.DataFrame) -> int:
    """Store a stage selection (columns sample_id, score_id, rank, value); returns its id."""
    from tracker.db import schema as m

    with engine.begin() as conn:
        sel_id = conn.execute(
            insert(m.Selection).values(run_id=run_id, stage=stage, dataset=dataset, rule={"synthetic": True})
            .returning(m.Selection.id)
        ).scalar_one()
        conn.execute(
            insert(m.SelectionMember),
            [
                {"selection_id": sel_id, "sample_id": int(r.sample_id), "score_id": int(r.score_id), "rank": int(r.rank), "value": float(r.value)}
                for r in members.itertuples()
            ],
        )
    return int(sel_id)


def _chunked(conn, model, rows: list[dict], chunk: int) -> None:
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        if part:
            conn.execute(insert(model), part)
