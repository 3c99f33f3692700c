"""`tracker status` throughput and ETA against a known completion rate (synthetic finished_at times)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from click.testing import CliRunner
from helpers.queue_fixtures import make_jobs
from sqlalchemy import update

from tracker import queue
from tracker.cli import cli
from tracker.db import get_engine, session_scope
from tracker.db.clock import current_db_time
from tracker.db.schema import Job, JobStatus


def finish(engine, job_ids, finished_at, seconds_each: float) -> None:
    with session_scope(engine) as s:
        for job_id, at in zip(job_ids, finished_at):
            s.execute(update(Job).where(Job.id == job_id).values(
                status=JobStatus.done, started_at=at - timedelta(seconds=seconds_each), finished_at=at))


def db_time(engine) -> datetime:
    with session_scope(engine) as s:
        return current_db_time(s)


def test_a_run_that_began_inside_the_window_is_measured_from_its_start(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=50, conditions=["bare", "oracle"])  # 100 jobs
    now = db_time(engine)
    # 60 jobs at exactly 2 jobs/s: the first started 30 s ago, the last finished now
    finish(engine, fx.job_ids[:60], [now - timedelta(seconds=30 - 0.5 * (k + 1)) for k in range(60)], 0.5)
    report = queue.queue_status(engine, "qexp")
    assert report.done_last_window == 60
    assert abs(report.jobs_per_minute - 120.0) < 3.0  # the old rule (60 over the 5-min window) said 12
    assert abs(report.eta_seconds - 40 / 2.0) < 0.6  # 40 left at 2/s


def test_a_steady_run_longer_than_the_window_is_measured_over_the_window(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=50, conditions=["bare", "oracle"])
    now = db_time(engine)
    # one job every 10 s for the last 900 s: 30 fall in the 300-s window -> 6 jobs/min
    finish(engine, fx.job_ids[:90], [now - timedelta(seconds=10 * k + 1) for k in range(90)], 5.0)
    report = queue.queue_status(engine, "qexp")
    assert report.done_last_window == 30
    assert abs(report.jobs_per_minute - 6.0) < 0.05
    assert abs(report.eta_seconds - 10 / 0.1) < 1.0


def test_status_csv_is_pure_csv_and_json_one_document(db_url):
    engine = get_engine(db_url)
    make_jobs(engine, n_samples=3, conditions=["bare", "oracle"])
    make_jobs(engine, n_samples=2, conditions=["bare"])  # a second run of qexp
    result = CliRunner().invoke(cli, ["--db", db_url, "status", "qexp", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "condition,model,mode,blocked,pending,running,done,failed,total"
    assert len(lines) == 3 and all(len(line.split(",")) == 9 for line in lines)
    assert "throughput" in result.stderr and "2 runs of qexp" in result.stderr
    one = CliRunner().invoke(cli, ["--db", db_url, "status", "qexp", "--run", "2", "--format", "json"])
    doc = json.loads(one.stdout)
    assert doc["run_id"] == 2 and doc["totals"]["pending"] == 2
    bad = CliRunner().invoke(cli, ["--db", db_url, "status", "qexp", "--run", "9"])
    assert bad.exit_code == 1 and "Error: Run 9 is not a run of experiment 'qexp' (its runs: 1, 2)" in bad.output
