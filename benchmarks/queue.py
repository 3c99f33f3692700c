"""Queue throughput: claim + complete with the ``test-fake`` backend (no model, no sleep).

For PostgreSQL and SQLite, 1, 2 and 4 worker processes, batch sizes 1 and 16, it prints jobs
per second and the queue's cost per job: wall milliseconds per job for one worker (claim,
task reads, completion with score + token NLL rows, heartbeats), worker-milliseconds per job
(wall x workers / jobs) and the workers' own CPU milliseconds per job, which is the least
sensitive to a busy machine. Workers are the real loop (:class:`workers.worker.QueueWorker`)
in forked processes, so interpreter start-up is not timed; jobs are created blocked and
released at once when every worker is polling.

Run:  python benchmarks/queue.py [--pg-admin URL] [--jobs N] [--repeats R] [--with-claim-index]
      [--dialects postgresql,sqlite] [--batch-sizes 1,16] [--workers 1,2,4]
Target: under 2 ms per job on PostgreSQL with batches of 16 (a GPU forward pass is >= 200 ms).
"""
from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# standard library's `queue` (which multiprocessing and psycopg import).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.queue_fixtures import make_jobs  # noqa: E402
from sqlalchemy import create_engine, func, select, text, update  # noqa: E402

from tracker.db import (  # noqa: E402
    create_tracker_engine,
    dispose_engines,
    migrate,  # noqa: E402
    session_scope,
)
from tracker.db.schema import Job, JobStatus  # noqa: E402

# The ordering index the claim wants on big queues (proposed for the schema; see the report).
CLAIM_INDEX_SQL = ("CREATE INDEX IF NOT EXISTS ix_jobs_claim_order ON jobs (priority DESC, id) "
                   "WHERE status IN ('pending', 'running')")


def _worker_process(url: str, batch: int, ready, results) -> None:
    """One worker: the real loop with the fake backend, reporting its CPU time when done."""
    dispose_engines()
    from workers.backends.fake import FakeBackend
    from workers.worker import QueueWorker, WorkerOptions

    engine = create_tracker_engine(url)
    options = WorkerOptions(model="test-fake", batch_size=batch, exit_when_empty=True, poll_seconds=0.02,
                            lease_seconds=60)
    worker = QueueWorker(engine, options, backend_loader=lambda *_, **__: FakeBackend())
    ready.put(os.getpid())
    cpu = time.process_time()
    done = worker.run()
    results.put((done, time.process_time() - cpu))
    engine.dispose()


def run_once(url: str, n_workers: int, batch: int, n_jobs: int) -> dict:
    """Release ``n_jobs`` blocked jobs to ``n_workers`` polling workers; time until all are done."""
    engine = create_tracker_engine(url)
    fx = make_jobs(engine, n_samples=n_jobs // 4, experiment=f"bench-{uuid.uuid4().hex[:8]}",
                   status=JobStatus.blocked)
    ctx = mp.get_context("fork")
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(url, batch, ready, results)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    time.sleep(0.5)  # every worker registered and polling
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id.in_(fx.job_ids)).values(status=JobStatus.pending))
    started = time.perf_counter()
    while True:
        with session_scope(engine) as s:
            done = s.execute(select(func.count()).select_from(Job).where(
                Job.id.in_(fx.job_ids), Job.status == JobStatus.done)).scalar_one()
        if done == n_jobs:
            break
        time.sleep(0.01)
    wall = time.perf_counter() - started
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    engine.dispose()
    assert sum(d for d, _ in outcomes) == n_jobs, outcomes
    cpu = sum(c for _, c in outcomes)
    return {"jobs_per_s": n_jobs / wall, "wall_ms_per_job": 1000 * wall / n_jobs,
            "worker_ms_per_job": 1000 * wall * n_workers / n_jobs, "cpu_ms_per_job": 1000 * cpu / n_jobs}


def fresh_database(kind: str, pg_admin: str, workdir: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}"
        migrate.upgrade(create_tracker_engine(url))
        return url, lambda: None
    name = f"tracker_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin.rsplit("/", 1)[0] + "/" + name
    migrate.upgrade(create_tracker_engine(url))

    def drop() -> None:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-admin", default=os.environ.get(
        "TRACKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--jobs", type=int, default=1600, help="jobs per run at batch 16 (a quarter at batch 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the median is shown")
    parser.add_argument("--with-claim-index", action="store_true", help="add the proposed ordering index first")
    parser.add_argument("--dialects", default="postgresql,sqlite")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"queue benchmark: test-fake backend, {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'database':<10} {'workers':>7} {'batch':>5} {'jobs':>5} {'jobs/s':>8} {'wall ms/job':>11} "
          f"{'worker ms/job':>13} {'cpu ms/job':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.dialects.split(","):
            url, drop = fresh_database(kind, args.pg_admin, Path(tmp))
            try:
                if args.with_claim_index and kind == "postgresql":
                    with create_tracker_engine(url).begin() as conn:
                        conn.execute(text(CLAIM_INDEX_SQL))
                for batch in map(int, args.batch_sizes.split(",")):
                    n_jobs = args.jobs if batch >= 16 else max(args.jobs // 4, 40)
                    for n_workers in map(int, args.workers.split(",")):
                        runs = [run_once(url, n_workers, batch, n_jobs) for _ in range(args.repeats)]
                        cell = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                        print(f"{kind:<10} {n_workers:>7} {batch:>5} {n_jobs:>5} {cell['jobs_per_s']:>8.0f} "
                              f"{cell['wall_ms_per_job']:>11.2f} {cell['worker_ms_per_job']:>13.2f} "
                              f"{cell['cpu_ms_per_job']:>10.2f}", flush=True)
            finally:
                drop()
    print("wall ms/job with 1 worker = the queue's cost per job; target < 2 ms on PostgreSQL at batch 16.")


if __name__ == "__main__":
    main()
