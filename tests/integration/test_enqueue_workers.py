"""exp02 then exp03 on PostgreSQL, scored by two real `tracker worker` processes with a tiny model.

The real decoder backend builds every prefix with ``tracker.conditions.build_prefix_ids``
and generates the LLM surrogates greedily; here we recompute every stored prefix from the
stored sample, condition and surrogate rows and check exp03's reuse and selections.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.dataset_fixtures import tiny_tokenizer
from helpers.synth import write_synthetic_data_dir
from sqlalchemy import func, select

from tracker.conditions import build_prefix_ids, encode  # noqa: E402
from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import (  # noqa: E402
    Condition,
    Job,
    JobKind,
    JobStatus,
    RunJob,
    Sample,
    Score,
    Selection,
    SelectionMember,
    Surrogate,
)
from tracker.planning import enqueue  # noqa: E402
from tracker.planning.stages import condition_definition  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

MODEL = "tiny-random-llama"
N = 4  # per dataset; ceil(0.4 * 4) = 2 selected
ROOT = Path(__file__).resolve().parents[2]


def _run_workers(url: str, tmp_path: Path, count: int = 2) -> None:
    env = {**os.environ, "TRACKER_DB": url, "OMP_NUM_THREADS": "1"}  # two workers share two cores
    procs = []
    for i in range(count):
        log = open(tmp_path / f"worker{i}.log", "ab")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "worker", "--model", MODEL, "--device", "cpu",
             "--exit-when-empty", "--poll-seconds", "0.2", "--batch-size", "32"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for i, (proc, log) in enumerate(procs):
        code = proc.wait(timeout=600)
        log.close()
        assert code == 0, f"worker {i} exited with {code}:\n" + (tmp_path / f"worker{i}.log").read_text()[-4000:]


def _check_prefixes(session) -> int:
    """Every stored prefix equals a recomputation from the stored rows; returns how many."""
    tok = tiny_tokenizer()
    checked = 0
    rows = session.execute(select(Score, Job, Sample, Condition).join(Job, Job.id == Score.job_id)
                           .join(Sample, Sample.id == Job.sample_id)
                           .join(Condition, Condition.id == Job.condition_id)).all()
    for score, job, sample, condition in rows:
        text = None
        ref = job.payload.get("surrogate")
        if ref:
            text = session.scalar(select(Surrogate.text).where(
                Surrogate.sample_id == sample.id, Surrogate.kind == ref["kind"],
                Surrogate.prompt_hash == ref["prompt_hash"], Surrogate.generator_model_id == ref["generator_model_id"]))
        definition = condition_definition(condition)
        expected = build_prefix_ids(definition.as_dict(), sample.as_dict(), tok, surrogate_text=text)
        assert score.prefix_ids == expected, (condition.name, sample.id)
        assert score.query_ids == encode(tok, sample.query)
        if condition.name != "bare":
            assert len(score.prefix_ids) == len(score.query_ids)  # every exp02 condition is token-matched
        checked += 1
    return checked


@pytest.mark.postgres
@pytest.mark.slow
def test_exp02_then_exp03_with_real_workers_on_postgres(pg_url, tmp_path):
    clear_cache()
    data = str(write_synthetic_data_dir(tmp_path / "data", 20))
    kw = dict(db=pg_url, data_dir=data, models=[MODEL], limit=N, device="cpu")
    assert enqueue("exp02", **kw, tokenizers=load_tokenizer).stage(1).score.created == N * 13
    _run_workers(pg_url, tmp_path)
    engine = get_engine(pg_url)
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Score)) == N * 13
        assert s.scalar(select(func.count()).select_from(Surrogate)) == N * 5
        assert _check_prefixes(s) == N * 13
        ms_marco_jobs = s.scalar(select(func.count()).select_from(Job).join(Sample, Sample.id == Job.sample_id)
                                 .where(Sample.dataset == "ms_marco"))

    report = enqueue("exp03", **kw, tokenizers=load_tokenizer)
    assert report.stage(1).by_dataset["ms_marco"].created == 0
    _run_workers(pg_url, tmp_path)
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status != JobStatus.done)) == 0
        after = s.scalar(select(func.count()).select_from(Job).join(Sample, Sample.id == Job.sample_id)
                         .where(Sample.dataset == "ms_marco"))
        assert after == ms_marco_jobs  # exp03 made no MS MARCO job of its own
        assert s.scalar(select(func.count()).select_from(Score)) == N * 13 + 3 * (N + 2 * 12)
        assert _check_prefixes(s) == N * 13 + 3 * (N + 2 * 12)
        bare_id = s.scalar(select(Condition.id).where(Condition.name == "bare"))
        for sel in s.scalars(select(Selection).where(Selection.run_id == report.run_id)):
            bare = s.execute(select(Sample.id, Score.nll).join(Job, Job.sample_id == Sample.id)
                             .join(Score, Score.job_id == Job.id).join(RunJob, RunJob.job_id == Job.id)
                             .where(RunJob.run_id == report.run_id, Job.condition_id == bare_id,
                                    Sample.dataset == sel.dataset)).all()
            top = [sid for sid, _ in sorted(bare, key=lambda r: (-r[1], r[0]))[: math.ceil(0.4 * N)]]
            members = s.scalars(select(SelectionMember.sample_id).where(SelectionMember.selection_id == sel.id)
                                .order_by(SelectionMember.rank)).all()
            assert list(members) == top
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == JobKind.select)) == 4


@pytest.mark.postgres
def test_a_dependant_added_while_its_generation_completes_is_not_left_blocked(pg_url, tmp_path):
    """enqueue locks the generation job before adding a dependant to it (see `lock_jobs`)."""
    import threading
    import time

    from sqlalchemy import create_engine, update
    from sqlalchemy.orm import Session

    from tracker import queue
    from tracker.specs import load_spec

    clear_cache()
    data = str(write_synthetic_data_dir(tmp_path / "data", 5))
    base = {"name": "race", "models": ["test-fake"], "device": "cpu", "datasets": [{"name": "squad_v2", "n": 1}],
            "conditions": ["bare", "llm_extract"]}
    enqueue(load_spec_from(tmp_path, base), db=pg_url, data_dir=data, tokenizers=load_tokenizer)
    with session_scope(get_engine(pg_url)) as s:
        gen_id = s.scalar(select(Job.id).where(Job.kind == JobKind.generate))

    other = create_engine(pg_url)
    worker_side = Session(other)
    # A worker completing the generation: done + release, not yet committed (its row is locked).
    worker_side.execute(update(Job).where(Job.id == gen_id).values(status=JobStatus.done))
    queue.release_dependants(worker_side, [gen_id])  # releases the dependants it can see

    def finish_later() -> None:
        time.sleep(3.0)  # enqueue reads the generation job meanwhile: without the lock it sees "pending"
        worker_side.commit()

    thread = threading.Thread(target=finish_later)
    thread.start()
    # a second condition asking for the same surrogate: its job depends on the same generation job
    more = {**base, "conditions": ["bare", "llm_extract", {"name": "llm_extract_raw", "kind": "llm",
                                                            "params": {"surrogate": "extract",
                                                                       "prompt": load_spec("exp02").condition(
                                                                           "llm_extract").params["prompt"],
                                                                       "matched": False}}]}
    report = enqueue(load_spec_from(tmp_path, more), db=pg_url, data_dir=data, tokenizers=load_tokenizer)
    thread.join()
    worker_side.close()
    other.dispose()
    assert report.stage(1).score.created == 1 and report.stage(1).generate.created == 0
    with session_scope(get_engine(pg_url)) as s:
        raw = s.scalar(select(Job).join(Condition, Condition.id == Job.condition_id)
                       .where(Condition.name == "llm_extract_raw"))
        assert JobStatus(raw.status) == JobStatus.pending  # not blocked on a job that is already done


def load_spec_from(tmp_path: Path, data: dict):
    import yaml

    from tracker.specs import load_spec

    path = tmp_path / f"{data['name']}-{len(data['conditions'])}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(str(path))
