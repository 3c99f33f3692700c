"""Real concurrency on the claim and on dependency release (threads, real databases)."""
from __future__ import annotations

import threading
import time

import pytest
from helpers.queue_fixtures import add_dependency, job_rows, make_jobs
from sqlalchemy.orm import Session

from tracker import queue
from tracker.db import create_tracker_engine, get_engine, session_scope
from tracker.db.schema import JobStatus
from tracker.queue.tasks import build_tasks
from workers.backends.fake import FakeBackend


def _claim_until_empty(url: str, model_id: int, n_threads: int, n: int) -> list[list[int]]:
    engine = create_tracker_engine(url)  # its own pool, sized for the threads
    claims: list[list[int]] = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            start.wait()
            while True:
                got = queue.claim_batch(engine, None, model_id, n, 30)
                if not got:
                    return
                with lock:
                    claims.append([j.id for j in got])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=claimer) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    engine.dispose()
    assert not errors, errors
    return claims


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_claims_take_every_job_once_in_whole_groups(dialect, request):
    url = request.getfixturevalue("sqlite_url" if dialect == "sqlite" else "pg_url")
    fx = make_jobs(get_engine(url), n_samples=80, conditions=[f"c{i}" for i in range(5)])
    claims = _claim_until_empty(url, fx.model_id, n_threads=6, n=7)
    claimed = [job for claim in claims for job in claim]
    assert len(claimed) == len(set(claimed)) == 400
    assert set(claimed) == set(fx.job_ids)
    for group in fx.groups.values():  # 5 jobs per group, 7 per claim: one group per claim, never split
        assert sum(1 for claim in claims if set(group) & set(claim)) == 1
    assert all(len(claim) == 5 for claim in claims)


@pytest.mark.postgres
def test_dependencies_finishing_at_once_release_their_dependant(pg_url):
    """Two transactions each finish one of X's two dependencies; the second must see the first."""
    engine = get_engine(pg_url)
    fx = make_jobs(engine, n_samples=3, conditions=["bare"])
    a, b, x = fx.job_ids
    add_dependency(engine, x, a)
    add_dependency(engine, x, b)
    [ja] = queue.claim_batch(engine, None, fx.model_id, 1, 30)
    [jb] = queue.claim_batch(engine, None, fx.model_id, 1, 30)
    with session_scope(engine) as s:
        tasks = build_tasks(s, [ja, jb]).tasks
    res_a, res_b = FakeBackend().score([tasks[a]]), FakeBackend().score([tasks[b]])

    first = Session(bind=engine)
    out_a = queue.complete_scores(first, ja.lease_token, res_a)  # holds X's row lock, not committed
    assert out_a.released == []
    second: dict = {}
    thread = threading.Thread(target=lambda: second.update(out=queue.complete_scores(engine, jb.lease_token, res_b)))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for X's lock
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert second["out"].released == [x]
    assert job_rows(engine, [x])[x].status == JobStatus.pending
