"""`tracker status`, `tracker requeue`, `tracker workers` and `tracker worker` errors, as a user sees them."""
from __future__ import annotations

import json
import socket

from click.testing import CliRunner
from helpers.queue_fixtures import add_dependency, job_rows, make_jobs, status_counts

from tracker import queue
from tracker.cli import cli
from tracker.db import get_engine
from tracker.db.schema import JobStatus


def _run(url: str, *args: str):
    return CliRunner().invoke(cli, ["--db", url, *args])


def _one_failure(url: str):
    engine = get_engine(url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "oracle"], max_attempts=1)
    add_dependency(engine, fx.job_ids[3], fx.job_ids[0])
    [bad, _] = queue.claim_batch(engine, None, fx.model_id, 2, 30)
    queue.fail_job(engine, bad.id, bad.lease_token, "RuntimeError", "CUDA out of memory",
                   'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA out of memory')
    return fx


def test_status_table_shows_counts_failures_and_traceback(db_url):
    fx = _one_failure(db_url)
    result = _run(db_url, "status", "qexp")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["condition", "model", "mode", "blocked", "pending", "running", "done", "failed",
                                "total"]
    assert lines[2].split() == ["bare", "test-fake", "two_phase", "0", "1", "0", "0", "1", "2"]
    assert lines[3].split() == ["oracle", "test-fake", "two_phase", "0", "0", "1", "0", "1", "2"]
    assert "4 jobs: 0 blocked, 1 pending, 1 running, 0 done, 2 failed" in result.output
    assert f"--- job {fx.job_ids[0]} traceback ---" in result.output
    assert "RuntimeError: CUDA out of memory" in result.output
    assert "DependencyFailed" in result.output


def test_status_json_and_unknown_experiment(db_url):
    fx = _one_failure(db_url)
    report = json.loads(_run(db_url, "status", "qexp", "--format", "json").output)
    assert report["totals"] == {"blocked": 0, "pending": 1, "running": 1, "done": 0, "failed": 2}
    assert {f["job_id"] for f in report["failed"]} == {fx.job_ids[0], fx.job_ids[3]}
    assert any(f["traceback"] and "CUDA out of memory" in f["traceback"] for f in report["failed"])
    missing = _run(db_url, "status", "nope")
    assert missing.exit_code == 1 and "No experiment named 'nope'" in missing.output


def test_requeue_failed_brings_back_jobs_and_dependants(db_url):
    fx = _one_failure(db_url)
    result = _run(db_url, "requeue", "qexp", "--failed")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2 failed jobs requeued: 1 pending, 1 blocked on unfinished dependencies."
    rows = job_rows(get_engine(db_url))
    assert rows[fx.job_ids[0]].status == JobStatus.pending and rows[fx.job_ids[3]].status == JobStatus.blocked
    assert status_counts(get_engine(db_url)) == {"pending": 2, "running": 1, "blocked": 1}


def test_workers_lists_states(db_url):
    engine = get_engine(db_url)
    a = queue.register_worker(engine, name="a", host="h1", pid=11, device="cuda:0", model_name="m")
    queue.mark_worker_stopped(engine, queue.register_worker(engine, name="b", host="h1", pid=12, device="cpu"))
    rows = json.loads(_run(db_url, "workers", "--format", "json").output)
    assert [(r["id"], r["pid"], r["device"], r["state"]) for r in rows] == [(a, 11, "cuda:0", "running"),
                                                                           (a + 1, 12, "cpu", "stopped")]
    live = json.loads(_run(db_url, "workers", "--live", "--format", "json").output)
    assert [r["id"] for r in live] == [a]


def test_worker_command_errors_name_the_fix(sqlite_url):
    engine = get_engine(sqlite_url)
    queue.register_worker(engine, name="far", host="not-" + socket.gethostname(), pid=1, device="cpu")
    result = _run(sqlite_url, "worker", "--device", "cpu", "--model", "test-fake", "--exit-when-empty")
    assert result.exit_code == 1
    assert "SQLite is for worker processes on one host" in result.output and "PostgreSQL" in result.output
    both = _run(sqlite_url, "worker", "--gpu", "0", "--device", "cpu")
    assert both.exit_code == 1 and "either --gpu or --device" in both.output
