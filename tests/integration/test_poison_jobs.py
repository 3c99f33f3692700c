"""A job whose worker dies every time it holds it (OOM-killer, a segfaulting kernel) fails
after its attempts with the reason, and never starves the jobs behind it or its group."""
from __future__ import annotations

import signal
import time

import pytest
from helpers.queue_fixtures import (
    job_rows,
    make_jobs,
    read_log,
    start_worker,
    stop_all,
    worker_env,
)
from sqlalchemy import select, update

from tracker import queue
from tracker.db import clock, get_engine, session_scope
from tracker.db.schema import Job, JobStatus, Score, WorkerRow

pytestmark = pytest.mark.slow


def _holder_pid(engine, job_id: int) -> int | None:
    with session_scope(engine) as s:
        return s.execute(select(WorkerRow.pid).join(Job, Job.worker_id == WorkerRow.id)
                         .where(Job.id == job_id, Job.status == JobStatus.running)).scalar()


def _run_until_drained(url: str, engine, poison: int, tmp_path, max_lives: int = 12) -> tuple[int, list[str]]:
    """Start workers one after another, SIGKILLing each one that holds ``poison``; returns deaths."""
    deaths, logs = 0, []
    env = worker_env(tmp_path / "calls.txt", sleep=0.15)
    for life in range(max_lives):
        proc = start_worker(url, "--exit-when-empty", "--batch-size", "8", "--lease-seconds", "1",
                            "--poll-seconds", "0.05", env=env, log_path=tmp_path / f"life{life}.log")
        try:
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if _holder_pid(engine, poison) == proc.pid:
                    proc.send_signal(signal.SIGKILL)  # as the OOM-killer would
                    proc.wait(10)
                    deaths += 1
                    break
                time.sleep(0.02)
            else:
                if proc.poll() is None:
                    raise AssertionError(f"worker of life {life} did not finish:\n{read_log(proc)}")
                logs.append(read_log(proc))
                assert proc.returncode == 0, read_log(proc)
                return deaths, logs
        finally:
            stop_all([proc])
    raise AssertionError(f"the queue was not drained after {max_lives} worker lives ({deaths} deaths)")


def test_a_poison_job_fails_with_the_reason_and_everything_else_is_done_once(db_url, tmp_path):
    url = db_url
    engine = get_engine(url)
    fx = make_jobs(engine, n_samples=3, max_attempts=3)  # 3 groups of 4 conditions
    poison = fx.job_ids[1]  # inside the first group, which comes first in claim order
    deaths, _ = _run_until_drained(url, engine, poison, tmp_path)

    rows = job_rows(engine)
    assert 1 <= deaths <= 3  # at most max_attempts worker deaths
    assert rows[poison].status == JobStatus.failed and rows[poison].error_type == "LeaseExpired"
    assert rows[poison].error_message.startswith(f"the worker holding it stopped heartbeating {deaths} time")
    assert "last worker " in rows[poison].error_message and "last claimed at " in rows[poison].error_message
    others = [j for j in fx.job_ids if j != poison]
    assert all(rows[j].status == JobStatus.done for j in others)
    with session_scope(engine) as s:
        scored = list(s.execute(select(Score.job_id)).scalars())
    assert sorted(scored) == sorted(others)  # every other job done exactly once
    report = queue.queue_status(engine, "qexp")
    assert report.totals.get("failed") == 1 and report.poisoned == 1
    assert any("every worker that held them died" in n and "tracker requeue qexp --failed" in n
               for n in report.notes)


def test_jobs_that_only_shared_a_claim_with_the_poison_are_retried_alone_first(sqlite_url):
    """A batch whose lease expired with every attempt used up: each job gets a claim of one."""
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=1, max_attempts=1)
    first = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    assert len(first) == 4 and all(j.attempts == 1 for j in first)  # attempts used up in a group
    with session_scope(engine) as s:
        s.execute(update(Job).values(lease_expires_at=clock.db_now("sqlite", -1)))
    stuck = queue.queue_status(engine, "qexp")
    assert stuck.expired_running == 4 and stuck.notes and "no worker is live" in stuck.notes[0]
    retried = [queue.claim_batch(engine, None, fx.model_id, 10, 30) for _ in fx.job_ids]
    assert [len(c) for c in retried] == [1, 1, 1, 1]  # alone, although no attempt was left
    assert {c[0].id for c in retried} == set(fx.job_ids)
    with session_scope(engine) as s:  # all four die alone now
        s.execute(update(Job).values(lease_expires_at=clock.db_now("sqlite", -1)))
    assert queue.claim_batch(engine, None, fx.model_id, 10, 30) == []
    rows = job_rows(engine)
    assert all(r.status == JobStatus.failed and "stopped heartbeating 2 times" in r.error_message
               for r in rows.values())


def test_a_used_up_solo_job_is_never_claimed_again_only_failed(db_url):
    """No race between the two clocks of a claim: an expired solo job with no attempt left is
    not taken once more even when fail_used_up's statement read the clock before it expired."""
    from tracker.queue.claim import claim_expired_alone

    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare"], max_attempts=3)
    with session_scope(engine) as s:
        dialect = s.get_bind().dialect.name
        s.execute(update(Job).values(status=JobStatus.running, attempts=3, lease_token="solo-" + "0" * 32,
                                     lease_expires_at=clock.db_now(dialect, -1)))
    with session_scope(engine) as s:
        assert claim_expired_alone(s, None, fx.model_id, 30) is None
    assert queue.claim_batch(engine, None, fx.model_id, 10, 30) == []
    assert job_rows(engine)[fx.job_ids[0]].status == JobStatus.failed
