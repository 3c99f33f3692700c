"""The queue protocol on SQLite and PostgreSQL: claims, leases, fencing, completion, failure,
dependencies and requeue, each checked against exact rows."""
from __future__ import annotations

from datetime import timedelta

import pytest
from helpers.queue_fixtures import (
    add_dependency,
    job_rows,
    make_generate_job,
    make_jobs,
    set_status,
    status_counts,
)
from sqlalchemy import func, select, update

from tracker import queue
from tracker.db import clock, get_engine, session_scope
from tracker.db.schema import (
    AttentionShare,
    Job,
    JobStatus,
    Sample,
    Score,
    Surrogate,
    TokenNLL,
    WorkerRow,
)
from tracker.queue.tasks import build_tasks
from workers.backends.base import GenerateResult, ScoreTask
from workers.backends.fake import FakeBackend, fake_score


def _expire(engine, job_ids) -> None:
    """Move leases into the past (database-side) as if time had passed."""
    with session_scope(engine) as s:
        past = clock.db_now(s.get_bind().dialect.name, -5.0)
        s.execute(update(Job).where(Job.id.in_(list(job_ids))).values(lease_expires_at=past))


def _results(engine, claimed):
    with session_scope(engine) as s:
        built = build_tasks(s, claimed)
    assert not built.errors
    return FakeBackend().score([built.tasks[j.id] for j in claimed])


def test_claim_takes_whole_groups_in_order(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=3)  # 4 conditions per sample
    claimed = queue.claim_batch(engine, None, fx.model_id, 10, lease_seconds=30)
    first_two = fx.job_ids[:8]
    assert [j.id for j in claimed] == first_two  # two whole groups; the third would not fit in 10
    assert len({j.lease_token for j in claimed}) == 1
    rows = job_rows(engine, fx.job_ids)
    assert {i for i, r in rows.items() if r.status == JobStatus.running} == set(first_two)
    assert all(rows[i].attempts == 1 and rows[i].lease_token == claimed[0].lease_token for i in first_two)
    with session_scope(engine) as s:
        now = clock.current_db_time(s)
    expires = clock.as_utc(rows[first_two[0]].lease_expires_at)
    assert timedelta(seconds=25) < expires - now <= timedelta(seconds=30)
    rest = queue.claim_batch(engine, None, fx.model_id, 10, lease_seconds=30)
    assert [j.id for j in rest] == fx.job_ids[8:]
    assert queue.claim_batch(engine, None, fx.model_id, 10, lease_seconds=30) == []


def test_a_group_larger_than_n_is_split_only_then(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=2, conditions=[f"c{i}" for i in range(6)])
    first = queue.claim_batch(engine, None, fx.model_id, 4, 30)
    assert [j.id for j in first] == fx.job_ids[:4]
    second = queue.claim_batch(engine, None, fx.model_id, 4, 30)
    assert [j.id for j in second] == fx.job_ids[4:6]  # the rest of group 1; group 2 (6 jobs) does not fit
    third = queue.claim_batch(engine, None, fx.model_id, 100, 30)
    assert [j.id for j in third] == fx.job_ids[6:]


def test_groups_are_per_mode_and_priority_first(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "oracle"], modes=["two_phase", "full"])
    urgent = fx.groups[(fx.sample_ids[1], "full")]
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id.in_(urgent)).values(priority=5))
    claimed = queue.claim_batch(engine, None, fx.model_id, 3, 30)
    assert [j.id for j in claimed] == urgent
    assert {j.mode for j in claimed} == {"full"}


def test_claim_only_takes_its_model_and_model_less_jobs(db_url):
    engine = get_engine(db_url)
    mine = make_jobs(engine, n_samples=1, conditions=["bare"])
    other = make_jobs(engine, n_samples=1, conditions=["bare"], model_name="other-model")
    with session_scope(engine) as s:  # a model-less job (like a stage selection)
        s.execute(update(Job).where(Job.id == other.job_ids[0]).values(model_id=None))
    ids = {j.id for j in queue.claim_batch(engine, None, mine.model_id, 10, 30)}
    ids |= {j.id for j in queue.claim_batch(engine, None, mine.model_id, 10, 30)}
    assert ids == {mine.job_ids[0], other.job_ids[0]}


def test_live_leases_are_kept_and_expired_ones_reclaimed_one_per_claim(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1)
    w1, w2 = (queue.register_worker(engine, name=n, host="h", pid=1, device="cpu") for n in ("w1", "w2"))
    first = queue.claim_batch(engine, w1, fx.model_id, 10, 30)
    assert queue.claim_batch(engine, w2, fx.model_id, 10, 30) == []
    _expire(engine, fx.job_ids)
    # an expired batch comes back one job per claim (one of them may be what killed its worker)
    seconds = [queue.claim_batch(engine, w2, fx.model_id, 10, 30) for _ in fx.job_ids]
    assert [[j.id for j in claim] for claim in seconds] == [[job_id] for job_id in fx.job_ids]
    assert all(claim[0].lease_token.startswith("solo-") for claim in seconds)
    assert seconds[0][0].lease_token != first[0].lease_token
    rows = job_rows(engine, fx.job_ids)
    assert all(r.attempts == 2 and r.worker_id == w2 and r.error_type == "LeaseExpired" for r in rows.values())
    assert all(r.error_message.startswith("the worker holding it stopped heartbeating 1 time: last worker h/1")
               for r in rows.values())


def test_fencing_blocks_the_old_holder_everywhere(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1)
    old = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    results = _results(engine, old)
    _expire(engine, fx.job_ids)
    new = [queue.claim_batch(engine, None, fx.model_id, 10, 30)[0] for _ in fx.job_ids]  # one per claim
    old_token, new_tokens = old[0].lease_token, {j.id: j.lease_token for j in new}

    assert queue.extend_leases(engine, [old_token], 30) == set()
    outcome = queue.complete_scores(engine, old_token, results)
    assert outcome.lost == fx.job_ids and outcome.completed == []
    assert queue.fail_job(engine, fx.job_ids[0], old_token, "E", "boom").status == "lost"
    assert queue.release_batch(engine, old_token) == []
    rows = job_rows(engine, fx.job_ids)
    assert all(r.status == JobStatus.running and r.lease_token == new_tokens[r.id] and r.error_type == "LeaseExpired"
               for r in rows.values())
    with session_scope(engine) as s:
        assert s.execute(select(func.count()).select_from(Score)).scalar_one() == 0

    assert queue.extend_leases(engine, list(new_tokens.values()), 30) == set(fx.job_ids)
    for result in results:
        assert queue.complete_scores(engine, new_tokens[result.job_id], [result]).completed == [result.job_id]


def test_complete_writes_everything_once(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare", "oracle"], modes=["two_phase_probe"])
    claimed = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    results = _results(engine, claimed)
    first = queue.complete_scores(engine, claimed[0].lease_token, results, worker_id=None, device="cpu", dtype="f32")
    again = queue.complete_scores(engine, claimed[0].lease_token, results)  # e.g. a commit whose ack was lost
    assert first.completed == fx.job_ids and again.already_done == fx.job_ids and again.completed == []
    with session_scope(engine) as s:
        scores = {sc.job_id: sc for sc in s.execute(select(Score)).scalars()}
        n_tokens = s.execute(select(func.count()).select_from(TokenNLL)).scalar_one()
        n_shares = s.execute(select(func.count()).select_from(AttentionShare)).scalar_one()
        first_tokens = s.execute(select(TokenNLL.token_id, TokenNLL.nll).join(Score, Score.id == TokenNLL.score_id)
                                 .where(Score.job_id == results[0].job_id).order_by(TokenNLL.position)).all()
    assert set(scores) == set(fx.job_ids)
    for r in results:
        assert scores[r.job_id].nll == pytest.approx(r.nll_mean)
        assert scores[r.job_id].n_tokens == len(r.answer_ids) and scores[r.job_id].batch_size == 2
        assert "attention" not in scores[r.job_id].extras
    assert n_tokens == sum(len(r.answer_ids) for r in results)
    assert n_shares == sum(len(r.extras["attention"]) for r in results) > 0
    assert [t for t, _ in first_tokens] == results[0].answer_ids
    assert [n for _, n in first_tokens] == pytest.approx(results[0].token_nlls)
    assert all(r.status == JobStatus.done and r.finished_at is not None for r in job_rows(engine).values())


def test_failure_retries_then_fails_and_fails_dependants_with_reason(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=3, conditions=["bare"], max_attempts=2)
    failing, child, grandchild = fx.job_ids
    add_dependency(engine, child, failing)
    add_dependency(engine, grandchild, child)
    for attempt, expected in ((1, "pending"), (2, "failed")):
        [job] = queue.claim_batch(engine, None, fx.model_id, 10, 30)
        assert job.id == failing and job.attempts == attempt
        outcome = queue.fail_job(engine, job.id, job.lease_token, "ValueError", f"bad input {attempt}", "Traceback: x")
        assert outcome.status == expected
    assert outcome.dependants_failed == (child, grandchild)
    rows = job_rows(engine)
    assert rows[failing].status == JobStatus.failed and rows[failing].error_message == "bad input 2"
    assert rows[failing].error_traceback == "Traceback: x" and rows[failing].lease_token is None
    assert rows[child].status == JobStatus.failed and rows[child].error_type == queue.DEPENDENCY_FAILED
    assert f"dependency job {failing}" in rows[child].error_message and "ValueError: bad input 2" in rows[child].error_message
    assert f"dependency job {child}" in rows[grandchild].error_message
    assert "ValueError: bad input 2" in rows[grandchild].error_message
    assert queue.claim_batch(engine, None, fx.model_id, 10, 30) == []

    report = queue.requeue_failed(engine, "qexp")
    assert (report.pending, report.blocked) == (1, 2)
    rows = job_rows(engine)
    assert rows[failing].status == JobStatus.pending and rows[failing].attempts == 0
    assert rows[failing].error_type is None
    assert rows[child].status == rows[grandchild].status == JobStatus.blocked


def test_dependants_wait_for_every_dependency(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=3, conditions=["bare"])
    a, b, waiting = fx.job_ids
    add_dependency(engine, waiting, a)
    add_dependency(engine, waiting, b)
    token_a = queue.claim_batch(engine, None, fx.model_id, 1, 30)
    assert [j.id for j in token_a] == [a]
    done_a = queue.complete_scores(engine, token_a[0].lease_token, _results(engine, token_a))
    assert done_a.released == [] and job_rows(engine)[waiting].status == JobStatus.blocked
    token_b = queue.claim_batch(engine, None, fx.model_id, 5, 30)
    assert [j.id for j in token_b] == [b]  # the blocked job is not claimable
    done_b = queue.complete_scores(engine, token_b[0].lease_token, _results(engine, token_b))
    assert done_b.released == [waiting] and job_rows(engine)[waiting].status == JobStatus.pending


def test_release_and_requeue_stale(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "oracle"])
    first = queue.claim_batch(engine, None, fx.model_id, 2, 30)
    second = queue.claim_batch(engine, None, fx.model_id, 2, 30)
    assert queue.release_batch(engine, first[0].lease_token) == fx.job_ids[:2]
    rows = job_rows(engine)
    assert all(rows[i].status == JobStatus.pending and rows[i].attempts == 0 and rows[i].lease_token is None
               for i in fx.job_ids[:2])
    assert queue.requeue_stale(engine, "qexp").stale == 0  # live lease: left alone
    _expire(engine, [j.id for j in second])
    assert queue.requeue_stale(engine, "qexp").stale == 2
    assert status_counts(engine) == {"pending": 4}


def test_generation_writes_a_surrogate_that_releases_and_feeds_its_scoring_job(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1, conditions=["llm_extract"])
    [score_job] = fx.job_ids
    gen = make_generate_job(engine, fx.sample_ids[0], kind="extract", prompt="Pick the key sentence.")
    add_dependency(engine, score_job, gen)
    with session_scope(engine) as s:
        ref = {"kind": "extract", "prompt_hash": s.get(Job, gen).payload["prompt_hash"],
               "generator_model_id": fx.model_id}
        s.execute(update(Job).where(Job.id == score_job).values(payload={"surrogate": ref}))
    [claimed] = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    assert claimed.id == gen
    with session_scope(engine) as s:
        task = build_tasks(s, [claimed]).tasks[gen]
    assert (task.kind, task.prompt, task.max_new_tokens) == ("extract", "Pick the key sentence.", 16)
    assert task.sample["id"] == fx.sample_ids[0] and set(task.sample) == {
        "id", "dataset", "source_key", "doc", "query", "answer", "meta"}
    done = queue.complete_generations(engine, claimed.lease_token,
                                      [(claimed, GenerateResult(job_id=gen, text="THE KEY SENTENCE", settings={}))])
    assert done.completed == [gen] and done.released == [score_job]
    with session_scope(engine) as s:
        surrogate = s.execute(select(Surrogate)).scalar_one()
    assert (surrogate.sample_id, surrogate.kind, surrogate.generator_model_id, surrogate.job_id) == (
        fx.sample_ids[0], "extract", fx.model_id, gen)
    [scoring] = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    with session_scope(engine) as s:
        task = build_tasks(s, [scoring]).tasks[score_job]
    assert isinstance(task, ScoreTask) and task.surrogate_text == "THE KEY SENTENCE"
    assert task.condition == {"name": "llm_extract", "kind": "llm_extract", "params": {}}


def test_a_missing_surrogate_is_a_per_job_error(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=1, conditions=["bare", "llm_extract"])
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == fx.job_ids[1]).values(
            payload={"surrogate": {"kind": "extract", "prompt_hash": "nope", "generator_model_id": fx.model_id}}))
    claimed = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    with session_scope(engine) as s:
        built = build_tasks(s, claimed)
    assert set(built.tasks) == {fx.job_ids[0]} and set(built.errors) == {fx.job_ids[1]}
    assert "has not been generated" in str(built.errors[fx.job_ids[1]])


def test_status_report_counts_rate_and_failures(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=3, conditions=["bare", "oracle"], max_attempts=1)
    claimed = queue.claim_batch(engine, None, fx.model_id, 2, 30)
    queue.complete_scores(engine, claimed[0].lease_token, _results(engine, claimed))
    [bad, other] = queue.claim_batch(engine, None, fx.model_id, 2, 30)
    queue.fail_job(engine, bad.id, bad.lease_token, "RuntimeError", "exploded", "Traceback (most recent call last):\n  boom")
    set_status(engine, [fx.job_ids[-1]], JobStatus.blocked)
    report = queue.queue_status(engine, "qexp")
    by_condition = {r["condition"]: r for r in report.counts}
    assert by_condition["bare"] == {"condition": "bare", "model": "test-fake", "mode": "two_phase", "blocked": 0,
                                    "pending": 1, "running": 0, "done": 1, "failed": 1, "total": 3}
    assert by_condition["oracle"] == {"condition": "oracle", "model": "test-fake", "mode": "two_phase", "blocked": 1,
                                      "pending": 0, "running": 1, "done": 1, "failed": 0, "total": 3}
    assert report.totals == {"blocked": 1, "pending": 1, "running": 1, "done": 2, "failed": 1}
    assert report.done_last_window == 2
    # both finished moments ago: the rate is measured over the span the work took (at least 1 s), not 5 min
    assert report.measured_seconds is not None and 1.0 <= report.measured_seconds < 60
    assert report.eta_seconds == pytest.approx(3 / (2 / report.measured_seconds))
    [failed] = report.failed
    assert (failed["job_id"], failed["error_type"], failed["error_message"]) == (bad.id, "RuntimeError", "exploded")
    assert failed["traceback"].endswith("boom")


def test_workers_registry_states(db_url):
    engine = get_engine(db_url)
    a = queue.register_worker(engine, name="a", host="h1", pid=1, device="cpu", versions={"lease_seconds": 30})
    b = queue.register_worker(engine, name="b", host="h2", pid=2, device="cpu", versions={"lease_seconds": 30})
    c = queue.register_worker(engine, name="c", host="h2", pid=3, device="cpu", versions={"lease_seconds": 30})
    queue.mark_worker_stopped(engine, c)
    with session_scope(engine) as s:
        s.execute(update(WorkerRow).where(WorkerRow.id == b).values(
            heartbeat_at=clock.db_now(s.get_bind().dialect.name, -120)))
    states = {w["id"]: w["state"] for w in queue.list_workers(engine)}
    assert states == {a: "running", b: "lost", c: "stopped"}
    assert [w["id"] for w in queue.list_workers(engine, live_only=True)] == [a]
    assert queue.heartbeat(engine, b, [], 30) == set()
    assert {w["id"] for w in queue.list_workers(engine, live_only=True)} == {a, b}
    assert queue.other_live_hosts(engine, "h1") == ["h2"]
    assert queue.other_live_hosts(engine, "h2") == ["h1"]


def test_fake_scores_match_an_independent_recomputation(db_url):
    engine = get_engine(db_url)
    fx = make_jobs(engine, n_samples=2, conditions=["bare", "oracle"])
    claimed = queue.claim_batch(engine, None, fx.model_id, 10, 30)
    queue.complete_scores(engine, claimed[0].lease_token, _results(engine, claimed))
    with session_scope(engine) as s:
        rows = s.execute(select(Score.job_id, Score.nll, Job.sample_id, Job.mode, Job.condition_id, Sample.answer)
                         .join(Job, Job.id == Score.job_id).join(Sample, Sample.id == Job.sample_id)).all()
    names = {v: k for k, v in fx.condition_ids.items()}
    assert len(rows) == 4
    for job_id, nll, sample_id, mode, condition_id, answer in rows:
        task = ScoreTask(job_id=job_id, mode=mode, condition={"name": names[condition_id], "kind": "x", "params": {}},
                         sample={"id": sample_id, "doc": "", "query": "", "answer": answer})
        assert nll == pytest.approx(fake_score(task).nll_mean)
