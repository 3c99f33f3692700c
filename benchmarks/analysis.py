"""Benchmark: `tracker analyze` on a synthetic database of exp03's size, SQLite and PostgreSQL.

exp03 size: 4 datasets x 400 samples x 13 conditions = 20,800 scored jobs, ~10 answer tokens
each (208,000 token rows), plus the stored stage-2 selections (hardest 40% by bare NLL).

Timed (median of --repeats runs, after one warm-up):
- baseline A: ``SELECT count(*) FROM results WHERE experiment = ... AND run_id = ...``
- baseline B: a plain pandas read of the same ``results`` rows (``pd.read_sql``)
- load: the analysis' SQL-to-pandas step alone (results + token parity + selections)
- analyze: end to end without MLflow (load, every table, text rendering and JSON)
- analyze + MLflow: the above plus logging to a fresh SQLite MLflow store (first run creates
  the store, second run reuses it), figures included

Figures are printed in seconds and as ratios to the baselines measured in the same run, so
they compare across machines. Target: analyze under 10 s on a 2-core machine.

Usage: python benchmarks/analysis.py [--n-per-dataset 400] [--skip-postgres]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import load  # noqa: E402
from analysis.mlflow_log import default_params, log_to_mlflow  # noqa: E402
from analysis.report import analyze_experiment  # noqa: E402
from analysis.synthetic import make_run, write_run, write_selection  # noqa: E402
from tracker.db import (
    create_tracker_engine,  # noqa: E402
    migrate,  # noqa: E402
)

EXPERIMENT = "exp03"
DATASETS = ("ms_marco", "squad_v2", "trivia_qa", "hotpot_qa")
# Rough d's of the seed's exp03 findings (vs bare), so the tables look like the real ones.
EFFECTS = {
    "random_tokens": 0.30, "repeat_token": 0.35, "scrambled_oracle": 0.15, "unrelated_query": 0.10,
    "same_topic": 0.05, "paraphrase": 0.15, "oracle": 0.02, "llm_extract": 0.25, "llm_question": -0.05,
    "llm_summarize": 0.30, "extractor_matched": 0.55, "adversarial_matched": 0.40,
}
PLAN = {
    "baseline": "bare",
    "selection": {"stage": 2, "fraction": 0.4, "by": "bare"},
    "semantic_delta": {"reference": "random_tokens"},
    "contrasts": list(EFFECTS),
    "gradient": ["random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query", "same_topic", "paraphrase", "oracle"],
    "llm_vs_generic": {"llm": ["llm_extract", "llm_question", "llm_summarize"], "generic": "extractor_matched"},
    "structural": {"random": "random_tokens", "oracle": "oracle"},
    "hardness_quintiles": 5,
    "ranking": True,
}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one warm-up call; returns (seconds, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def populate(engine, n_per_dataset: int, tokens: int) -> int:
    """Write the synthetic exp03 run and its stage-2 selections; returns the run id."""
    run = make_run(
        experiment=EXPERIMENT, datasets=DATASETS, n_per_dataset=n_per_dataset, effects=EFFECTS,
        model="google/gemma-3-12b-it", tokens_per_answer=tokens, seed=42,
    )
    start = time.perf_counter()
    run_id = write_run(engine, run)
    frame = run.results_frame()
    for ds in DATASETS:
        bare = frame[(frame["condition"] == "bare") & (frame["dataset"] == ds)]
        k = -(-len(bare) * 2 // 5)  # ceil(0.4 n)
        top = bare.sort_values(["nll", "sample_id"], ascending=[False, True]).head(k)
        members = top.assign(rank=range(1, k + 1), value=top["nll"])[["sample_id", "score_id", "rank", "value"]]
        write_selection(engine, run_id, 2, ds, members)
    print(f"  populated {len(run.jobs):,} jobs, {len(run.tokens):,} token rows in {time.perf_counter() - start:.1f} s")
    return run_id


def bench_database(label: str, url: str, args, out_dir: Path) -> dict[str, float]:
    print(f"\n== {label}: {url.split('@')[-1]}")
    engine = create_tracker_engine(url)
    migrate.upgrade(engine, "head")
    run_id = populate(engine, args.n_per_dataset, args.tokens)
    params = {"experiment": EXPERIMENT, "run_id": run_id}

    def count_rows():
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM results WHERE experiment = :experiment AND run_id = :run_id"), params
            ).scalar_one()

    def pandas_read():
        with engine.connect() as conn:
            return pd.read_sql(text("SELECT * FROM results WHERE experiment = :experiment AND run_id = :run_id"), conn, params=params)

    def load_all():
        return (load.load_results(engine, EXPERIMENT, run_id), load.load_token_parity(engine, run_id), load.load_selections(engine, run_id))

    def analyze():
        report = analyze_experiment(engine, EXPERIMENT, PLAN, bootstrap=args.bootstrap, seed=0)
        report.render_text()
        report.to_json()
        return report

    t_count, n_rows = timed(count_rows, args.repeats)
    t_read, _ = timed(pandas_read, args.repeats)
    t_load, _ = timed(load_all, args.repeats)
    t_analyze, report = timed(analyze, args.repeats)
    uri = f"sqlite:///{out_dir / (label.lower() + '-mlflow.db')}"
    timings = {"count(*)": t_count, "pandas read": t_read, "load": t_load, "analyze": t_analyze}
    for attempt in ("analyze + MLflow (new store)", "analyze + MLflow (existing store)"):
        start = time.perf_counter()
        rep = analyze()
        log_to_mlflow(rep, uri, f"{EXPERIMENT} run {run_id}", default_params(url, spec_hash="bench"), "name: exp03\n")
        timings[attempt] = time.perf_counter() - start
    engine.dispose()

    print(f"  results rows: {n_rows:,}; effects rows: {len(report.effects)}; tables: {len(report.tables)}")
    print(f"  {'step':<36}{'seconds':>9}{'x count(*)':>12}{'x pandas read':>15}")
    for step, seconds in timings.items():
        print(f"  {step:<36}{seconds:>9.3f}{seconds / t_count:>12.1f}{seconds / t_read:>15.2f}")
    verdict = "meets" if t_analyze < 10 else "MISSES"
    print(f"  analyze without MLflow: {t_analyze:.2f} s ({verdict} the 10 s target)")
    return timings


def bench_postgres(args, out_dir: Path) -> dict[str, float] | None:
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"tracker_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:  # noqa: BLE001 - no server: report and go on
        print(f"\n== PostgreSQL skipped: {err}")
        return None
    try:
        return bench_database("PostgreSQL", args.pg_admin_url.rsplit("/", 1)[0] + "/" + name, args, out_dir)
    finally:
        from tracker.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-per-dataset", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=10, help="answer tokens per score")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--pg-admin-url", default=os.environ.get("TRACKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    print(f"exp03-sized synthetic run: {len(DATASETS)} datasets x {args.n_per_dataset} samples x {len(EFFECTS) + 1} "
          f"conditions, {args.tokens} tokens per answer, bootstrap {args.bootstrap}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as tmp:
        out_dir = Path(tmp)
        bench_database("SQLite", f"sqlite:///{out_dir / 'tracker.db'}", args, out_dir)
        if not args.skip_postgres:
            bench_postgres(args, out_dir)


if __name__ == "__main__":
    main()
