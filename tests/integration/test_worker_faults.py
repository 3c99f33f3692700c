"""Real `tracker worker` processes under faults: long batches, kill -9, SIGSTOP past the lease,
a terminated database connection, failing jobs, SIGTERM. Counts must stay exact."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers.queue_fixtures import (
    ROOT,
    add_dependency,
    job_rows,
    make_jobs,
    read_log,
    score_summary,
    start_worker,
    status_counts,
    stop_all,
    wait_exit,
    wait_for,
    worker_env,
    workers,
)
from sqlalchemy import create_engine, select, text

from tracker.db import get_engine, session_scope
from tracker.db.schema import Job, JobStatus, Score, WorkerRow
from workers.backends.fake import count_calls

pytestmark = pytest.mark.slow


def _running_of(engine, worker_pid: int) -> list[int]:
    """Ids of jobs running under the worker process ``worker_pid``."""
    with session_scope(engine) as s:
        return list(s.execute(
            select(Job.id).join(WorkerRow, WorkerRow.id == Job.worker_id)
            .where(WorkerRow.pid == worker_pid, Job.status == JobStatus.running).order_by(Job.id)
        ).scalars())


def _scoring(proc) -> bool:
    """The worker (started with -v) is inside a backend call."""
    return " scoring " in read_log(proc)


def _assert_exactly_once(engine, job_ids) -> None:
    assert status_counts(engine) == {"done": len(job_ids)}
    n_scores, distinct, _ = score_summary(engine)
    assert n_scores == distinct == len(job_ids)


@pytest.mark.postgres
def test_a_batch_three_times_longer_than_the_lease_is_not_stolen(pg_url, tmp_path):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=2)  # two groups of 4 jobs
    calls = tmp_path / "calls.txt"
    env = worker_env(calls, sleep=1.6)  # one group = 6.4 s > 3 x 2 s lease
    procs = [start_worker(pg_url, "--exit-when-empty", "--batch-size", "4", "--lease-seconds", "2",
                          "--poll-seconds", "0.1", env=env, log_path=tmp_path / f"w{i}.log") for i in range(2)]
    try:
        assert [wait_exit(p, 120) for p in procs] == [0, 0]
    finally:
        stop_all(procs)
    _assert_exactly_once(engine, fx.job_ids)
    lines = count_calls(calls)
    assert len(lines) == 8 and sorted(job for _, job in lines) == sorted(fx.job_ids)  # nothing computed twice
    assert all(r.attempts == 1 for r in job_rows(engine).values())  # never reclaimed
    assert not any("lease lost" in read_log(p) for p in procs)


@pytest.mark.postgres
def test_kill_minus_nine_mid_batch_is_recovered_after_the_lease(pg_url, tmp_path):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=4)
    env = worker_env(tmp_path / "calls.txt", sleep=0.4)
    victim = start_worker(pg_url, "--batch-size", "4", "--lease-seconds", "2", "--poll-seconds", "0.1", "-v",
                          env=env, log_path=tmp_path / "victim.log")
    procs = [victim]
    try:
        wait_for(lambda: _scoring(victim), 120, "the victim to score a batch", interval=0.02)
        held = _running_of(engine, victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        rows = job_rows(engine, held)
        assert all(r.status == JobStatus.running for r in rows.values())  # killed mid-batch
        rescuer = start_worker(pg_url, "--exit-when-empty", "--batch-size", "4", "--lease-seconds", "2",
                               "--poll-seconds", "0.1", env=worker_env(tmp_path / "calls.txt"),
                               log_path=tmp_path / "rescuer.log")
        procs.append(rescuer)
        assert wait_exit(rescuer, 120) == 0
    finally:
        stop_all(procs)
    _assert_exactly_once(engine, fx.job_ids)
    rows = job_rows(engine, held)
    assert all(r.attempts == 2 for r in rows.values())  # the killed attempt, then the rescue
    with session_scope(engine) as s:
        by = dict(s.execute(select(Score.job_id, Score.worker_id).where(Score.job_id.in_(held))).all())
    [rescuer_row] = [w for w in workers(engine) if w.pid == rescuer.pid]
    assert set(by.values()) == {rescuer_row.id}


@pytest.mark.postgres
def test_a_paused_worker_cannot_write_jobs_reclaimed_from_it(pg_url, tmp_path):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=2)
    calls = tmp_path / "calls.txt"
    paused = start_worker(pg_url, "--exit-when-empty", "--batch-size", "4", "--lease-seconds", "2", "-v",
                          "--poll-seconds", "0.1", env=worker_env(calls, sleep=0.5), log_path=tmp_path / "paused.log")
    procs = [paused]
    try:
        wait_for(lambda: _scoring(paused), 120, "the first worker to score", interval=0.02)
        stolen = _running_of(engine, paused.pid)
        os.kill(paused.pid, signal.SIGSTOP)
        other = start_worker(pg_url, "--exit-when-empty", "--batch-size", "4", "--lease-seconds", "2",
                             "--poll-seconds", "0.1", env=worker_env(calls), log_path=tmp_path / "other.log")
        procs.append(other)
        assert wait_exit(other, 120) == 0  # did everything, the stolen group after its lease expired
        _assert_exactly_once(engine, fx.job_ids)
        os.kill(paused.pid, signal.SIGCONT)
        assert wait_exit(paused, 60) == 0
    finally:
        stop_all(procs)
    _assert_exactly_once(engine, fx.job_ids)  # still: the paused worker wrote nothing
    [other_row] = [w for w in workers(engine) if w.pid == other.pid]
    with session_scope(engine) as s:
        writers = set(s.execute(select(Score.worker_id)).scalars())
    assert writers == {other_row.id}
    assert all(r.attempts == 2 for r in job_rows(engine, stolen).values())
    assert "lease lost" in read_log(paused)
    per_pid = Counter(pid for pid, _ in count_calls(calls))
    assert per_pid[other.pid] == len(fx.job_ids)  # every job by the worker that kept its lease
    assert per_pid[paused.pid] == len(stolen)  # it computed them after SIGCONT; the results were discarded


@pytest.mark.postgres
def test_a_terminated_connection_is_retried_and_the_batch_in_hand_is_kept(pg_url, pg_admin, tmp_path):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=2)
    dbname = pg_url.rsplit("/", 1)[1]
    calls = tmp_path / "calls.txt"
    worker = start_worker(pg_url, "--exit-when-empty", "--batch-size", "8", "--lease-seconds", "3", "-v",
                          "--poll-seconds", "0.1", env=worker_env(calls, sleep=0.4), log_path=tmp_path / "w.log")
    try:
        wait_for(lambda: _scoring(worker), 120, "the worker to score its first group", interval=0.02)
        engine.dispose()
        with pg_admin.connect() as conn:  # shut the database for a while and cut every connection
            conn.execute(text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": dbname})
        try:
            time.sleep(5.0)  # the worker finishes scoring its batch (2 x 1.6 s) while the database is away
        finally:
            with pg_admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true'))
        assert wait_exit(worker, 120) == 0
    finally:
        stop_all([worker])
    log = read_log(worker)
    assert "database unavailable during complete" in log  # the computed group waited for the database
    _assert_exactly_once(engine, fx.job_ids)
    lines = count_calls(calls)
    assert len(lines) == len({job for _, job in lines}) == len(fx.job_ids)  # nothing recomputed
    assert all(r.attempts == 1 for r in job_rows(engine).values())


def _tracker(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = worker_env()
    return subprocess.run([sys.executable, "-m", "tracker.cli", "--db", db_url, *args], env=env,
                          capture_output=True, text=True, cwd=str(ROOT), timeout=120)


@pytest.mark.postgres
def test_failing_jobs_are_retried_held_with_traceback_and_requeued(pg_url, tmp_path):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=3, conditions=["bare", "oracle", "cursed"], max_attempts=2)
    cursed = [fx.job_ids[i] for i in (2, 5, 8)]
    dependant = make_jobs(engine, n_samples=1, conditions=["bare"]).job_ids[0]
    add_dependency(engine, dependant, cursed[0])
    calls = tmp_path / "calls.txt"
    first = start_worker(pg_url, "--exit-when-empty", "--poll-seconds", "0.1",
                         env=worker_env(calls, fail_condition="cursed"), log_path=tmp_path / "first.log")
    try:
        assert wait_exit(first, 120) == 0
    finally:
        stop_all([first])
    rows = job_rows(engine)
    assert {i for i, r in rows.items() if r.status == JobStatus.failed} == {*cursed, dependant}
    assert all(rows[i].attempts == 2 and "FakeScoringError" in rows[i].error_traceback for i in cursed)
    assert rows[dependant].error_type == "DependencyFailed"
    assert f"dependency job {cursed[0]}" in rows[dependant].error_message

    status = _tracker(pg_url, "status", "qexp")
    assert status.returncode == 0, status.stderr
    assert "Traceback (most recent call last)" in status.stdout and "injected failure" in status.stdout
    with create_engine(pg_url).connect() as conn:  # and plain SQL shows the traceback too
        tracebacks = conn.execute(text("SELECT error_traceback FROM jobs WHERE status = 'failed' "
                                       "AND error_type LIKE '%FakeScoringError'")).scalars().all()
    assert len(tracebacks) == 3 and all("raise FakeScoringError" in t for t in tracebacks)

    requeue = _tracker(pg_url, "requeue", "qexp", "--failed")
    assert requeue.returncode == 0, requeue.stderr
    assert "4 failed jobs requeued: 3 pending, 1 blocked" in requeue.stdout
    second = start_worker(pg_url, "--exit-when-empty", "--poll-seconds", "0.1", env=worker_env(calls),
                          log_path=tmp_path / "second.log")
    try:
        assert wait_exit(second, 120) == 0
    finally:
        stop_all([second])
    all_ids = [*fx.job_ids, dependant]
    _assert_exactly_once(engine, all_ids)
    lines = count_calls(calls)
    assert sorted(job for _, job in lines) == sorted(all_ids)  # good jobs once, failed ones once after requeue


@pytest.mark.postgres
@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_sigterm_mid_batch_leaves_no_live_lease(pg_url, tmp_path, signals):
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=4)
    worker = start_worker(pg_url, "--batch-size", "8", "--lease-seconds", "30", "--poll-seconds", "0.1", "-v",
                          env=worker_env(tmp_path / "calls.txt", sleep=0.3), log_path=tmp_path / "w.log")
    try:
        wait_for(lambda: _scoring(worker), 120, "the worker to score its first group", interval=0.02)
        for _ in range(signals):
            os.kill(worker.pid, signal.SIGTERM)
            time.sleep(0.05)
        assert wait_exit(worker, 60) == 0
    finally:
        stop_all([worker])
    counts = status_counts(engine)
    assert counts.get("running", 0) == 0
    assert counts.get("done", 0) + counts.get("pending", 0) == len(fx.job_ids)
    rows = job_rows(engine)
    assert all(r.lease_token is None and r.attempts == 0 for r in rows.values() if r.status == JobStatus.pending)
    if signals == 1:
        assert counts.get("done", 0) >= 4  # the group in hand was finished
    [row] = workers(engine)
    assert row.status == "stopped"
