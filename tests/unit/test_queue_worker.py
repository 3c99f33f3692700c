"""The worker loop in-process with the fake backend: draining, failures, fencing, stops, outages."""
from __future__ import annotations

import signal
import socket

import pytest
from helpers.queue_fixtures import (
    QueueWith,
    add_dependency,
    job_rows,
    make_generate_job,
    make_jobs,
    score_summary,
    status_counts,
    workers,
)
from sqlalchemy import select, update

from tracker import queue
from tracker.db import clock, get_engine, session_scope
from tracker.db.schema import Job, JobKind, JobStatus, Sample, Score, Surrogate
from tracker.errors import ConfigError, DatabaseUnavailable, DeviceError
from workers.backends.base import ScoreTask
from workers.backends.fake import FakeBackend, fake_score
from workers.devices import available_device as resolve_device
from workers.worker import QueueWorker, WorkerOptions


def _worker(engine, backend: FakeBackend, queue_ops=queue, selection=None, **options) -> QueueWorker:
    opts = WorkerOptions(model="test-fake", exit_when_empty=True, poll_seconds=0.05, lease_seconds=30, **options)
    extra = {"selection": selection} if selection else {}
    return QueueWorker(engine, opts, backend_loader=lambda name, device, dtype, **kw: backend, queue_ops=queue_ops, **extra)


def test_worker_drains_the_queue_with_exact_results(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=5, modes=["two_phase", "full"])
    backend = FakeBackend()
    worker = _worker(engine, backend, batch_size=6)
    assert worker.run() == 40
    assert backend.calls == 40 and status_counts(engine) == {"done": 40}
    assert score_summary(engine)[:2] == (40, 40)
    names = {v: k for k, v in fx.condition_ids.items()}
    with session_scope(engine) as s:
        rows = s.execute(select(Score, Job, Sample).join(Job, Job.id == Score.job_id)
                         .join(Sample, Sample.id == Job.sample_id)).all()
    for score, job, sample in rows:
        task_sample = {"id": sample.id, "doc": sample.doc, "query": sample.query, "answer": sample.answer}
        condition = {"name": names[job.condition_id], "kind": "", "params": {}}
        expected = fake_score(ScoreTask(job.id, job.mode, task_sample, condition))
        assert score.nll == pytest.approx(expected.nll_mean)
        assert score.batch_size == 4  # one group = the 4 conditions of a (sample, mode)
        assert score.worker_id == worker.worker_id and score.device == "cpu"
    [row] = workers(engine)
    assert row.status == "stopped" and row.jobs_done == 40 and row.self_check["test-fake"]["ok"] is True
    assert row.versions["backend"]["scorer_version"] == "fake-1"


def test_one_failing_condition_fails_alone_and_its_dependants_with_it(sqlite_url):
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "oracle", "cursed"], max_attempts=2)
    cursed = [fx.job_ids[2], fx.job_ids[5]]
    waiting = make_jobs(engine, n_samples=1, conditions=["bare"]).job_ids[0]
    add_dependency(engine, waiting, cursed[0])
    backend = FakeBackend(fail_condition="cursed")
    _worker(engine, backend, batch_size=3).run()
    rows = job_rows(engine)
    assert {i for i, r in rows.items() if r.status == JobStatus.failed} == {*cursed, waiting}
    assert all(rows[i].attempts == 2 and rows[i].error_type == "workers.backends.fake.FakeScoringError"
               for i in cursed)
    assert "injected failure" in rows[cursed[0]].error_message
    assert "Traceback (most recent call last)" in rows[cursed[0]].error_traceback
    assert "FakeScoringError" in rows[waiting].error_message and rows[waiting].error_type == "DependencyFailed"
    assert backend.calls == 4 and score_summary(engine)[:2] == (4, 4)  # the good jobs, each once


def test_a_reclaimed_batch_is_not_written_by_the_old_holder(sqlite_url):
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare", "oracle"])
    thief = queue.register_worker(engine, name="thief", host=socket.gethostname(), pid=1, device="cpu")

    class StolenWhileScoring(FakeBackend):
        def score(self, tasks):
            with session_scope(engine) as s:  # our lease runs out and another worker takes the jobs
                s.execute(update(Job).values(lease_expires_at=clock.db_now("sqlite", -1)))
            for task in tasks:  # an expired batch is taken over one job per claim
                stolen = queue.claim_batch(engine, thief, fx.model_id, 10, 30)
                queue.complete_scores(engine, stolen[0].lease_token, FakeBackend().score(
                    [t for t in tasks if t.job_id == stolen[0].id]), worker_id=thief)
            return super().score(tasks)

    worker = _worker(engine, StolenWhileScoring())
    assert worker.run() == 0
    assert score_summary(engine) == (2, 2, {thief: 2})
    assert all(r.attempts == 2 for r in job_rows(engine).values())


def test_second_signal_gives_the_batch_back(sqlite_url):
    engine = get_engine(sqlite_url)
    make_jobs(engine, n_samples=2, conditions=["bare", "oracle"])

    class Interrupted(FakeBackend):
        def score(self, tasks):
            handler = signal.getsignal(signal.SIGTERM)
            handler(signal.SIGTERM, None)
            handler(signal.SIGTERM, None)  # raises WorkerInterrupted here, mid-call
            raise AssertionError("not reached")

    worker = _worker(engine, Interrupted(), batch_size=4)
    assert worker.run() == 0
    assert status_counts(engine) == {"pending": 4}
    assert all(r.attempts == 0 and r.lease_token is None for r in job_rows(engine).values())
    assert workers(engine)[0].status == "stopped"


def test_first_signal_finishes_the_call_in_hand_and_releases_the_rest(sqlite_url):
    """One backend call per (model, mode) of a claim: the signal lets the two_phase call finish
    and gives the full-mode jobs back."""
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare", "oracle"], modes=["two_phase", "full"])

    class Stopped(FakeBackend):
        def score(self, tasks):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            return super().score(tasks)

    assert _worker(engine, Stopped(), batch_size=4).run() == 2
    rows = job_rows(engine)
    assert [rows[i].status for i in fx.job_ids] == [JobStatus.done] * 2 + [JobStatus.pending] * 2
    assert rows[fx.job_ids[2]].attempts == 0


def test_results_in_hand_survive_a_database_outage(sqlite_url, monkeypatch):
    engine = get_engine(sqlite_url)
    make_jobs(engine, n_samples=3, conditions=["bare", "oracle"])
    real = queue.complete_scores
    failures = iter([True, True, True])

    def flaky(*args, **kwargs):
        if next(failures, False):
            raise DatabaseUnavailable("The database does not answer: server closed the connection")
        return real(*args, **kwargs)

    backend = FakeBackend()
    assert _worker(engine, backend, queue_ops=QueueWith(complete_scores=flaky)).run() == 6
    assert backend.calls == 6 and score_summary(engine)[:2] == (6, 6)


def test_max_jobs_stops_early(sqlite_url):
    engine = get_engine(sqlite_url)
    make_jobs(engine, n_samples=3, conditions=["bare", "oracle"])
    assert _worker(engine, FakeBackend(), max_jobs=3).run() == 3
    assert status_counts(engine) == {"done": 3, "pending": 3}


def test_sqlite_refuses_workers_on_a_second_host(sqlite_url):
    engine = get_engine(sqlite_url)
    make_jobs(engine, n_samples=1)
    queue.register_worker(engine, name="far", host="another-host", pid=1, device="cpu")
    with pytest.raises(ConfigError, match="SQLite is for worker processes on one host"):
        _worker(engine, FakeBackend()).run()
    assert status_counts(engine) == {"pending": 4}


def test_device_choices():
    assert resolve_device(None, None) == "cpu"
    assert resolve_device(None, "cpu") == "cpu"
    with pytest.raises(ConfigError, match="either --gpu or --device"):
        resolve_device(0, "cpu")
    with pytest.raises(ConfigError, match="Unknown device"):
        resolve_device(None, "tpu")
    import torch

    if torch.cuda.device_count() < 8:
        with pytest.raises(DeviceError, match="no GPU 7"):
            resolve_device(7, None)


def test_without_model_the_worker_generates_then_scores_loading_each_model_once(sqlite_url):
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "llm_extract"])
    gens = [make_generate_job(engine, sid, prompt="Key sentence?", model_name="gen-fake") for sid in fx.sample_ids]
    with session_scope(engine) as s:
        gen_model = s.get(Job, gens[0]).model_id
        prompt_hash = s.get(Job, gens[0]).payload["prompt_hash"]
    for sid, gen in zip(fx.sample_ids, gens):
        job_id = fx.groups[(sid, "two_phase")][1]
        add_dependency(engine, job_id, gen)
        with session_scope(engine) as s:
            s.execute(update(Job).where(Job.id == job_id).values(payload={"surrogate": {
                "kind": "extract", "prompt_hash": prompt_hash, "generator_model_id": gen_model}}))
    loads = []

    def loader(name, device, dtype, **kw):
        loads.append(name)
        return FakeBackend()

    worker = QueueWorker(engine, WorkerOptions(exit_when_empty=True, poll_seconds=0.05), backend_loader=loader)
    assert worker.run() == 6
    assert loads == ["test-fake", "gen-fake"]  # scoring, generation, then scoring again without a reload
    assert status_counts(engine) == {"done": 6}
    with session_scope(engine) as s:
        texts = dict(s.execute(select(Surrogate.sample_id, Surrogate.text)).all())
        rows = s.execute(select(Score.nll, Job.id, Job.sample_id, Sample.answer).join(Job, Job.id == Score.job_id)
                         .join(Sample, Sample.id == Job.sample_id).where(Job.condition_id == fx.condition_ids["llm_extract"])).all()
    assert set(texts) == set(fx.sample_ids)
    for nll, job_id, sample_id, answer in rows:  # the scorer saw the generated text
        task = ScoreTask(job_id, "two_phase", {"id": sample_id, "doc": "", "query": "", "answer": answer},
                         {"name": "llm_extract", "kind": "llm_extract", "params": {}}, surrogate_text=texts[sample_id])
        assert nll == pytest.approx(fake_score(task).nll_mean)


def _select_job(engine, fx, depends_on: list[int]) -> int:
    with session_scope(engine) as s:
        job = Job(job_key=f"select-{fx.run_id}", kind=JobKind.select, sample_id=None, model_id=fx.model_id,
                  mode="", payload={"run_id": fx.run_id}, status=JobStatus.pending, priority=10, max_attempts=2)
        s.add(job)
        s.flush()
        job_id = job.id
    for dep in depends_on:
        add_dependency(engine, job_id, dep)
    return job_id


def test_select_jobs_run_perform_selection_in_the_completing_transaction(sqlite_url, monkeypatch):
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare"])
    select_id = _select_job(engine, fx, fx.job_ids)
    stage2 = make_jobs(engine, n_samples=1, conditions=["oracle"]).job_ids[0]
    add_dependency(engine, stage2, select_id)
    calls = []

    def perform_selection(session, job):
        calls.append((job.id, [r.status for r in session.execute(select(Job).where(Job.id.in_(fx.job_ids))).scalars()]))
        session.execute(update(Job).where(Job.id == stage2).values(priority=99))  # a write that must commit with it

    assert _worker(engine, FakeBackend(), selection=lambda s, job_id: perform_selection(s, s.get(Job, job_id))).run() == 4
    assert calls == [(select_id, [JobStatus.done, JobStatus.done])]  # ran once, after its dependencies
    rows = job_rows(engine)
    assert rows[select_id].status == rows[stage2].status == JobStatus.done and rows[stage2].priority == 99


def test_a_failing_selection_is_retried_then_failed_with_its_traceback(sqlite_url, monkeypatch):
    engine = get_engine(sqlite_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare"])
    select_id = _select_job(engine, fx, [])

    def perform_selection(session, job):
        session.execute(update(Job).where(Job.id == fx.job_ids[0]).values(priority=77))  # rolled back
        raise ValueError("no usable selecting score")

    _worker(engine, FakeBackend(), selection=lambda s, job_id: perform_selection(s, s.get(Job, job_id))).run()
    rows = job_rows(engine)
    assert rows[select_id].status == JobStatus.failed and rows[select_id].attempts == 2
    assert rows[select_id].error_type == "ValueError" and "no usable selecting score" in rows[select_id].error_traceback
    assert rows[fx.job_ids[0]].priority == 0 and rows[fx.job_ids[0]].status == JobStatus.done
