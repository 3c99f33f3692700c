"""Enqueue with execution: exp02 scored, then exp03 reuses it; the stored hard-40% selection.

Jobs are run by an in-process worker with the deterministic ``test-fake`` backend, N=10 per
dataset (4 selected per dataset).
"""
from __future__ import annotations

import math

import pytest
from helpers.dataset_fixtures import drain
from helpers.synth import write_synthetic_data_dir
from sqlalchemy import func, select

from tracker import queue  # noqa: E402
from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import (  # noqa: E402
    Condition,
    Job,
    JobKind,
    JobStatus,
    ModelRow,
    RunJob,
    Sample,
    Score,
    Selection,
    SelectionMember,
    Surrogate,
)
from tracker.planning import enqueue  # noqa: E402
from tracker.planning.stages import perform_selection, rank_hardest  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

N = 10
DATASETS = ("ms_marco", "squad_v2", "trivia_qa", "hotpot_qa")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(write_synthetic_data_dir(tmp_path_factory.mktemp("data"), 30))


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    clear_cache()
    yield
    clear_cache()


def _enqueue(url: str, exp: str, data_dir: str, **kw):
    return enqueue(exp, db=url, data_dir=data_dir, models=["test-fake"], limit=N, device="cpu", **kw, tokenizers=load_tokenizer)


def _score_jobs_by_dataset(session) -> dict[str, int]:
    rows = session.execute(select(Sample.dataset, func.count()).join(Job, Job.sample_id == Sample.id)
                           .where(Job.kind == JobKind.score).group_by(Sample.dataset)).all()
    return dict(rows)


def test_exp03_after_exp02_reuses_ms_marco_and_selects_the_hardest_40_percent(db_url, data_dir):
    exp02 = _enqueue(db_url, "exp02", data_dir)
    assert exp02.stage(1).score.created == N * 13 and exp02.stage(1).generate.created == N * 5
    assert drain(db_url) == N * 13 + N * 5
    engine = get_engine(db_url)
    with session_scope(engine) as s:
        before = _score_jobs_by_dataset(s)
        assert before == {"ms_marco": N * 13}
        assert s.scalar(select(func.count()).select_from(Score)) == N * 13
        assert s.scalar(select(func.count()).select_from(Surrogate)) == N * 5

    exp03 = _enqueue(db_url, "exp03", data_dir)
    s1, s2 = exp03.stage(1), exp03.stage(2)
    assert s1.by_dataset["ms_marco"].created == 0 and s1.by_dataset["ms_marco"].reused == N
    assert s2.planned_new_by_dataset == {"ms_marco": 0, "squad_v2": 48, "trivia_qa": 48, "hotpot_qa": 48}
    with session_scope(engine) as s:
        # MS MARCO's bare scores are all there, so its selection is claimable at once
        statuses = {j.payload["dataset"]: JobStatus(j.status)
                    for j in s.scalars(select(Job).where(Job.kind == JobKind.select))}
        assert statuses == {"ms_marco": JobStatus.pending, "squad_v2": JobStatus.blocked,
                            "trivia_qa": JobStatus.blocked, "hotpot_qa": JobStatus.blocked}

    drain(db_url)
    with session_scope(engine) as s:
        after = _score_jobs_by_dataset(s)
        assert after["ms_marco"] == before["ms_marco"]  # zero new MS MARCO jobs
        new = sum(after.values()) - sum(before.values())
        assert new == 3 * (N + 4 * 12) == s1.score.created + s2.planned_new_max
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status != JobStatus.done)) == 0
        run_id = exp03.run_id
        stage2 = s.scalar(select(func.count()).select_from(RunJob).join(Job, Job.id == RunJob.job_id)
                          .where(RunJob.run_id == run_id, RunJob.stage == 2, Job.kind == JobKind.score))
        assert stage2 == 4 * 4 * 12
        bare_id = s.scalar(select(Condition.id).where(Condition.name == "bare"))
        selections = s.scalars(select(Selection).where(Selection.run_id == run_id)).all()
        assert sorted(sel.dataset for sel in selections) == sorted(DATASETS)
        for sel in selections:
            # independently: the bare scores of this run's samples of the dataset
            bare = s.execute(
                select(Sample.id, Score.id, Score.nll).join(Job, Job.sample_id == Sample.id)
                .join(Score, Score.job_id == Job.id).join(RunJob, RunJob.job_id == Job.id)
                .where(RunJob.run_id == run_id, Job.condition_id == bare_id, Sample.dataset == sel.dataset)
            ).all()
            assert len(bare) == N
            expected = sorted(bare, key=lambda r: (-r[2], r[0]))[: math.ceil(0.4 * N)]
            members = s.execute(select(SelectionMember.sample_id, SelectionMember.score_id, SelectionMember.value)
                                .where(SelectionMember.selection_id == sel.id)
                                .order_by(SelectionMember.rank)).all()
            assert [tuple(m) for m in members] == [tuple(e) for e in expected]
            assert sel.rule["n"] == N and sel.rule["k"] == 4
            # stage-2 jobs exist for exactly the selected samples, 12 conditions each
            chosen = {m[0] for m in members}
            stage2_samples = s.execute(
                select(Job.sample_id, func.count()).join(RunJob, RunJob.job_id == Job.id)
                .join(Sample, Sample.id == Job.sample_id)
                .where(RunJob.run_id == run_id, RunJob.stage == 2, Job.kind == JobKind.score,
                       Sample.dataset == sel.dataset).group_by(Job.sample_id)).all()
            assert dict(stage2_samples) == dict.fromkeys(chosen, 12)

    again = _enqueue(db_url, "exp03", data_dir)
    assert again.stage(1).score.created == 0 and again.stage(2).score.created == 0
    assert again.stage(2).selections_done == 4 and again.stage(2).score.skipped == 4 * 4 * 12


def test_a_surrogate_dependent_job_is_not_claimable_before_its_surrogate_exists(db_url, data_dir):
    _enqueue(db_url, "exp02", data_dir, dry_run=False)
    engine = get_engine(db_url)
    with session_scope(engine) as s:
        model_id = s.scalar(select(ModelRow.id).where(ModelRow.name == "test-fake"))
        llm_ids = {j.id for j in s.scalars(select(Job).where(Job.kind == JobKind.score)) if "surrogate" in j.payload}
    assert len(llm_ids) == N * 5
    # claim everything claimable, completing nothing: no LLM-surrogate job comes out
    claimed = []
    while batch := queue.claim_batch(engine, None, model_id, 500):
        claimed += batch
    kinds = {j.kind for j in claimed}
    assert kinds == {JobKind.score, JobKind.generate}
    assert not llm_ids & {j.id for j in claimed}
    assert len(claimed) == N * 8 + N * 5  # 8 conditions without surrogates + the generations
    with session_scope(engine) as s:
        assert all(JobStatus(s.get(Job, i).status) == JobStatus.blocked for i in llm_ids)
    # complete the generations: now (and only now) the dependants are claimable
    from workers.backends.base import GenerateResult

    gens = [j for j in claimed if j.kind == JobKind.generate]
    results = [(j, GenerateResult(job_id=j.id, text=f"surrogate {j.id}", settings={})) for j in gens]
    queue.complete_generations(engine, gens[0].lease_token, results)
    released = queue.claim_batch(engine, None, model_id, 500)
    assert {j.id for j in released} == llm_ids


def test_perform_selection_is_idempotent_and_ranks_ties_by_sample_id(db_url, data_dir):
    assert [r[0] for r in rank_hardest([(5, 50, 2.0), (3, 30, 2.0), (9, 90, 1.0), (1, 10, 0.5), (2, 20, 3.0)],
                                       0.4)] == [2, 3]
    assert len(rank_hardest([(i, i, float(i)) for i in range(400)], 0.4)) == 160
    assert len(rank_hardest([(i, i, float(i)) for i in range(11)], 0.4)) == 5  # ceil(4.4)

    spec_kw = dict(data_dir=data_dir, models=["test-fake"], limit=N, device="cpu")
    report = enqueue("exp03", db=db_url, **spec_kw, tokenizers=load_tokenizer)
    drain(db_url)
    engine = get_engine(db_url)
    with session_scope(engine) as s:
        jobs = s.scalars(select(Job).where(Job.kind == JobKind.select)).all()
        counts = (s.scalar(select(func.count()).select_from(Job)), s.scalar(select(func.count()).select_from(RunJob)),
                  s.scalar(select(func.count()).select_from(SelectionMember)))
        outcome = perform_selection(s, jobs[0])
        assert outcome.already_done and outcome.k == 4 and outcome.score.created == 0
        assert (s.scalar(select(func.count()).select_from(Job)), s.scalar(select(func.count()).select_from(RunJob)),
                s.scalar(select(func.count()).select_from(SelectionMember))) == counts
    assert report.stage(2).planned == 4 * 4 * 12


def test_a_failed_generation_fails_its_dependants_visibly(sqlite_url, data_dir):
    from workers.backends.fake import FakeBackend
    from workers.worker import QueueWorker, WorkerOptions

    class GenerationFails(FakeBackend):
        def generate(self, tasks):
            raise RuntimeError("the generator broke")

    spec_kw = dict(data_dir=data_dir, models=["test-fake"], limit=2, device="cpu")
    enqueue("exp02", db=sqlite_url, **spec_kw, tokenizers=load_tokenizer)
    options = WorkerOptions(device="cpu", model="test-fake", batch_size=64, exit_when_empty=True, poll_seconds=0.01)
    QueueWorker(get_engine(sqlite_url), options, lambda name, device, dtype, **kw: GenerationFails()).run()
    with session_scope(get_engine(sqlite_url)) as s:
        jobs = s.scalars(select(Job).where(Job.kind != JobKind.select)).all()
        failed_gen = [j for j in jobs if j.kind == JobKind.generate]
        assert len(failed_gen) == 2 * 5 and {JobStatus(j.status) for j in failed_gen} == {JobStatus.failed}
        dependants = [j for j in jobs if j.kind == JobKind.score and "surrogate" in j.payload]
        assert len(dependants) == 2 * 5
        for job in dependants:
            assert JobStatus(job.status) == JobStatus.failed
            assert "the generator broke" in job.error_message and str(job.id) not in (job.error_type or "")
        others = [j for j in jobs if j.kind == JobKind.score and "surrogate" not in j.payload]
        assert {JobStatus(j.status) for j in others} == {JobStatus.done}
