"""Queue test helpers: jobs built directly with the ORM, and real ``tracker worker`` processes.

Jobs are made here (not by ``tracker enqueue``) so queue tests depend on nothing but the
schema: one ``test-fake`` model, samples x conditions x modes scoring jobs keyed by
:func:`tracker.identity.score_job_key`, all members of one experiment run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, update

from tracker import queue  # noqa: E402
from tracker.db import get_engine, session_scope
from tracker.db.schema import (
    Condition,
    Experiment,
    ExperimentRun,
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    ModelRow,
    RunJob,
    Sample,
    Score,
    WorkerRow,
)
from tracker.identity import content_hash, generate_job_key, score_job_key

ROOT = Path(__file__).resolve().parents[1]
FAKE = "test-fake"
SCORER_VERSION = "fake-1"


@dataclass
class QueueFixture:
    """Ids of what :func:`make_jobs` created; ``job_ids`` in (sample, mode, condition) order."""

    model_id: int
    run_id: int
    sample_ids: list[int]
    condition_ids: dict[str, int]
    job_ids: list[int] = field(default_factory=list)
    groups: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (sample, mode) -> job ids


def engine_for(url_or_engine: str | Engine) -> Engine:
    return url_or_engine if isinstance(url_or_engine, Engine) else get_engine(url_or_engine)


def ensure_model(session, name: str = FAKE) -> int:
    model_id = session.execute(select(ModelRow.id).where(ModelRow.name == name)).scalar()
    if model_id is None:
        model = ModelRow(name=name, source="fake", family="fake", revision="", dtype="float32", attn_implementation="")
        session.add(model)
        session.flush()
        model_id = model.id
    return model_id


def make_jobs(
    url_or_engine: str | Engine,
    *,
    n_samples: int,
    conditions: Sequence[str] = ("bare", "random_tokens", "oracle", "llm_extract"),
    modes: Sequence[str] = ("two_phase",),
    model_name: str = FAKE,
    experiment: str = "qexp",
    status: JobStatus = JobStatus.pending,
    max_attempts: int = 3,
    dataset: str = "qa",
) -> QueueFixture:
    """Samples x modes x conditions scoring jobs for one model, members of one experiment run."""
    engine = engine_for(url_or_engine)
    with session_scope(engine) as s:
        model_id = ensure_model(s, model_name)
        exp = s.execute(select(Experiment).where(Experiment.name == experiment)).scalar()
        if exp is None:
            exp = Experiment(name=experiment, description="queue test")
            s.add(exp)
            s.flush()
        run = ExperimentRun(experiment_id=exp.id, spec_hash=content_hash([experiment, time.time_ns()]),
                            overrides_key="", overrides={}, spec={})
        s.add(run)
        conds = {}
        for name in conditions:
            cond = s.execute(select(Condition).where(Condition.name == name)).scalar()
            if cond is None:
                cond = Condition(name=name, kind="bare" if name == "bare" else name, params={},
                                 definition_hash=content_hash(name))
                s.add(cond)
            conds[name] = cond
        s.flush()
        first = s.execute(select(func.count()).select_from(Sample)).scalar_one()
        samples = [
            Sample(dataset=dataset, split="test", source_key=f"s{first + i}", recipe_hash="r", recipe={},
                   doc=f"document number {first + i} about topic {i % 7}", query=f"what is item {i}?",
                   answer=f"item {i} is a thing number {i % 5}", meta={})
            for i in range(n_samples)
        ]
        s.add_all(samples)
        s.flush()
        rows = [
            {"job_key": score_job_key(sample.id, conds[c].id, model_id, mode, SCORER_VERSION), "kind": JobKind.score,
             "sample_id": sample.id, "condition_id": conds[c].id, "model_id": model_id, "mode": mode,
             "scorer_version": SCORER_VERSION, "payload": {}, "status": status, "priority": 0, "attempts": 0,
             "max_attempts": max_attempts}
            for sample in samples for mode in modes for c in conditions
        ]
        inserted = s.execute(insert(Job).returning(Job.id, sort_by_parameter_order=True), rows)
        job_ids = list(inserted.scalars())
        s.execute(insert(RunJob), [{"run_id": run.id, "job_id": j, "stage": 1} for j in job_ids])
        fixture = QueueFixture(model_id=model_id, run_id=run.id, sample_ids=[x.id for x in samples],
                               condition_ids={name: c.id for name, c in conds.items()}, job_ids=job_ids)
        for row, job_id in zip(rows, job_ids):
            fixture.groups.setdefault((row["sample_id"], row["mode"]), []).append(job_id)
        return fixture


def make_generate_job(url_or_engine: str | Engine, sample_id: int, *, kind: str = "extract",
                      prompt: str = "Extract the key sentence.", model_name: str = FAKE) -> int:
    """A pending surrogate generation job for ``sample_id`` (generator = ``model_name``)."""
    with session_scope(engine_for(url_or_engine)) as s:
        model_id = ensure_model(s, model_name)
        prompt_hash = content_hash(prompt)
        job = Job(job_key=generate_job_key(sample_id, kind, prompt_hash, model_id), kind=JobKind.generate,
                  sample_id=sample_id, model_id=model_id, mode="generate", scorer_version="",
                  payload={"kind": kind, "prompt": prompt, "prompt_hash": prompt_hash, "max_new_tokens": 16},
                  status=JobStatus.pending)
        s.add(job)
        s.flush()
        return job.id


def add_dependency(url_or_engine: str | Engine, job_id: int, depends_on_id: int, *, block: bool = True) -> None:
    """``job_id`` waits on ``depends_on_id`` (and is set blocked)."""
    with session_scope(engine_for(url_or_engine)) as s:
        s.add(JobDependency(job_id=job_id, depends_on_id=depends_on_id))
        if block:
            s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.blocked))


def set_status(url_or_engine: str | Engine, job_ids: Sequence[int], status: JobStatus) -> None:
    with session_scope(engine_for(url_or_engine)) as s:
        s.execute(update(Job).where(Job.id.in_(list(job_ids))).values(status=status))


def status_counts(url_or_engine: str | Engine) -> dict[str, int]:
    with session_scope(engine_for(url_or_engine)) as s:
        rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status.value: n for status, n in rows}


def job_rows(url_or_engine: str | Engine, job_ids: Sequence[int] | None = None) -> dict[int, Job]:
    with session_scope(engine_for(url_or_engine)) as s:
        stmt = select(Job)
        if job_ids is not None:
            stmt = stmt.where(Job.id.in_(list(job_ids)))
        return {job.id: job for job in s.execute(stmt).scalars()}


def score_summary(url_or_engine: str | Engine) -> tuple[int, int, Counter]:
    """(number of scores, number of distinct job ids among them, scores per worker id)."""
    with session_scope(engine_for(url_or_engine)) as s:
        rows = s.execute(select(Score.job_id, Score.worker_id)).all()
    return len(rows), len({job for job, _ in rows}), Counter(worker for _, worker in rows)


def workers(url_or_engine: str | Engine) -> list[WorkerRow]:
    with session_scope(engine_for(url_or_engine)) as s:
        return list(s.execute(select(WorkerRow).order_by(WorkerRow.id)).scalars())


# --------------------------------------------------------------------------- processes
def worker_env(calls_file: Path | None = None, *, sleep: float | None = None, fail_condition: str | None = None,
               extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    if calls_file is not None:
        env["TRACKER_FAKE_CALLS"] = str(calls_file)
    if sleep is not None:
        env["TRACKER_FAKE_SLEEP"] = str(sleep)
    if fail_condition is not None:
        env["TRACKER_FAKE_FAIL_CONDITION"] = fail_condition
    env.update(extra or {})
    return env


def start_worker(db_url: str, *args: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A real ``tracker worker`` process (``python -m tracker.cli``) logging to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the process wrapper below
    cmd = [sys.executable, "-m", "tracker.cli", "--db", db_url, "worker", "--device", "cpu", "--model", FAKE, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(log_path.parent))
    proc.log_path = log_path  # type: ignore[attr-defined]
    log.close()
    return proc


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker {proc.pid} did not exit within {timeout:.0f}s:\n{read_log(proc)}") from None


def read_log(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def stop_all(procs: Sequence[subprocess.Popen]) -> None:
    """Kill whatever is still running (test cleanup)."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            proc.kill()
            proc.wait()


def running_worker_ids(url_or_engine: str | Engine) -> set[int]:
    with session_scope(engine_for(url_or_engine)) as s:
        return set(s.execute(select(WorkerRow.id).where(WorkerRow.status == "running")).scalars())


class QueueWith:
    """The queue layer with some operations replaced: ``QueueWorker(..., queue_ops=QueueWith(complete_scores=f))``."""

    def __init__(self, **overrides) -> None:
        self._overrides = overrides

    def __getattr__(self, name):
        return self._overrides[name] if name in self._overrides else getattr(queue, name)
