"""The worker loop: register, load each model once, claim, score, complete, until stopped.

One process per device. The loop claims a batch (whole groups of one sample x model x
mode, see :func:`tracker.queue.claim_batch`), scores it group by group, and writes each
group's results in one fenced transaction. A heartbeat thread (optuna's
``_heartbeat.py`` shape: a thread that beats, then waits on a stop event) extends the
leases every ``lease / 3`` seconds on database time and stamps the ``workers`` row.

Stopping: the first SIGINT/SIGTERM finishes the group in hand, gives the rest of the
batch back and exits 0; a second one gives everything back at once (between database
writes, never in the middle of one). A lost database connection is retried with backoff;
results already computed stay in memory and are written once it is back, never
recomputed.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine

from tracker import queue
from tracker.db import is_sqlite
from tracker.db.schema import JobKind, ModelRow
from tracker.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    ModelUnusable,
    SelfCheckFailed,
)
from tracker.planning.stages import select_for_job
from tracker.queue import ClaimedJob
from workers.backends import get_backend
from workers.backends.base import ScoringBackend
from workers.devices import device_product_name
from workers.worker.heartbeat import HeartbeatThread
from workers.worker.leases import LeaseBook
from workers.worker.loading import check_revision
from workers.worker.logs import first_line, tracker_version
from workers.worker.options import WorkerOptions
from workers.worker.results import (
    FLUSH_SECONDS,
    BackendFailure,
    ComputedResults,
    check_results,
)
from workers.worker.retry import retry_database
from workers.worker.signals import StopControl, WorkerInterrupted

log = logging.getLogger("tracker.worker")
EXPIRY_CHECK_SECONDS = 1.0  # a dead worker's jobs wait at most this long past their lease
T = TypeVar("T")


class QueueWorker:
    """One worker process's loop; :meth:`run` returns the number of jobs this worker finished."""

    def __init__(self, engine: Engine, options: WorkerOptions,
                 backend_loader: Callable[..., ScoringBackend] = get_backend,
                 queue_ops: Any = queue,
                 selection: Callable[[Any, int], Any] = select_for_job) -> None:
        """``queue_ops`` is the queue layer the loop asks (the :mod:`tracker.queue` package) and
        ``selection`` runs a stage selection in the completing transaction
        (:func:`tracker.planning.stages.select_for_job`); tests pass their own to observe or fail them."""
        self.engine = engine
        self.options = options
        self.backend_loader = backend_loader
        self.queue = queue_ops
        self.selection = selection
        self.stop = StopControl()
        self.book = LeaseBook()
        self.worker_id: int | None = None
        self.model: ModelRow | None = None
        self.backend: ScoringBackend | None = None
        self.describe: dict = {}
        self.self_checks: dict[str, dict] = {}
        self.finished = 0  # jobs done or failed by this worker
        self.completed = 0  # jobs done by this worker (the workers row's jobs_done)
        self.host = socket.gethostname()
        self._heartbeat: HeartbeatThread | None = None
        self._warned_no_model = False
        self._loaded: dict[int, tuple[ScoringBackend, dict]] = {}  # model id -> (backend, describe)
        self._next_expiry_check = 0.0  # monotonic time of the next look for expired leases
        self._expect_generations = True

    # ---- lifecycle
    def run(self) -> int:
        self.stop.install()
        try:
            self._register()
            self._heartbeat = HeartbeatThread(self.engine, self.worker_id, self.book, self.options.lease_seconds,
                                              self.options.heartbeat_seconds, jobs_done=lambda: self.completed,
                                              beat=self.queue.heartbeat)
            self._heartbeat.start()
            try:
                self._loop()
            except WorkerInterrupted:
                log.info("stopped by a second signal")
            finally:
                self._heartbeat.stop()
                self._db("mark the worker stopped", lambda: self.queue.mark_worker_stopped(
                    self.engine, self.worker_id, jobs_done=self.completed), patient=False, default=None)
            log.info("worker %d stopped after %d jobs", self.worker_id, self.finished)
            return self.finished
        finally:
            self.stop.restore()

    def _register(self) -> None:
        if is_sqlite(self.engine):
            others = self._db("check other hosts", lambda: self.queue.other_live_hosts(self.engine, self.host))
            if others:
                raise ConfigError(
                    f"This SQLite database is in use by workers on other hosts ({', '.join(others)}). "
                    "SQLite is for worker processes on one host: its locking (WAL) does not work "
                    "over network filesystems.",
                    hint="share one PostgreSQL database between machines "
                         "(--db postgresql+psycopg://user@host/db), or run all workers on one host",
                )
        versions = {"python": sys.version.split()[0], "lease_seconds": self.options.lease_seconds,
                    "tracker": tracker_version()}
        product = device_product_name(self.options.device)
        where = self.options.device
        if self.options.physical_gpu is not None:  # --gpu N: the process sees only that GPU, as cuda:0
            versions["gpu"] = {"physical_id": self.options.physical_gpu, "name": product}
            where = f"gpu{self.options.physical_gpu}"
            product = f"{product} (physical GPU {self.options.physical_gpu})"
        self.worker_id = self._db("register", lambda: self.queue.register_worker(
            self.engine, name=f"{self.host}:{os.getpid()}:{where}", host=self.host,
            pid=os.getpid(), device=self.options.device, device_name=product,
            model_name=self.options.model, versions=versions))
        log.info("worker %d registered (%s, pid %d, device %s = %s, lease %.1fs)", self.worker_id, self.host,
                 os.getpid(), self.options.device, product, self.options.lease_seconds)

    def _loop(self) -> None:
        while not self.stop.requested.is_set():
            if self.options.max_jobs is not None and self.finished >= self.options.max_jobs:
                log.info("reached --max-jobs %d", self.options.max_jobs)
                return
            self.stop.check()
            if self.model is None:
                self._switch_model()
            batch, built = self._claim()
            if batch:
                self._process_batch(batch, built)
                continue
            state = self._switch_model()
            if state == "switched":
                continue
            if state == "busy":  # claimable jobs whose leaders other workers held for a moment
                self.stop.wait(random.uniform(0.005, 0.05))
                continue
            if self.options.exit_when_empty and self._nothing_left():
                log.info("no jobs left; exiting (--exit-when-empty)")
                return
            self.stop.wait(self.options.poll_seconds)

    # ---- models
    def _candidate_model_ids(self) -> list[int] | None:
        if self.options.model is None:
            return None
        ids = self.queue.model_ids_named(self.engine, self.options.model)
        if not ids and not self._warned_no_model:
            log.warning("no model named %r in the database yet; waiting for jobs", self.options.model)
            self._warned_no_model = True
        return ids

    def _switch_model(self) -> str:
        """Load the first candidate model with claimable jobs unless the current one has some.

        Returns "switched", "busy" (the current model still has claimable jobs) or "idle".
        """
        candidates = self._db("find models", self._candidate_model_ids)
        if candidates == []:
            return "idle"
        ready = self._db("find models", lambda: self.queue.models_with_claimable_jobs(self.engine, candidates))
        if not ready:
            return "idle"
        if self.model is not None and self.model.id in ready:
            return "busy"
        self._load(self._db("find models", lambda: self.queue.model_row(self.engine, ready[0])))
        return "switched"

    def _load(self, model: ModelRow) -> None:
        """Make ``model`` current, loading (and self-checking) its backend the first time only."""
        if model.id in self._loaded:
            self.model, self.backend, self.describe = model, *self._loaded[model.id]
            self._db("record the model", lambda: self.queue.update_worker(self.engine, self.worker_id,
                                                                     model_name=model.name))
            return
        log.info("loading model %s (id %d) on %s", model.name, model.id, self.options.device)
        backend_kwargs = {"revision": model.revision} if model.source == "hub" and model.revision else {}
        backend_kwargs["generation_batch_size"] = self.options.generation_claim_size
        try:
            backend = self.stop.call(lambda: self.backend_loader(model.name, self.options.device,
                                                                 model.dtype or None, **backend_kwargs))
        except ModelUnusable as err:  # the same on every machine: its jobs would wait forever
            error_type = type(err).__name__
            message = f"model {model.name} cannot be loaded: {err.args[0]}" + (f" Hint: {err.hint}" if err.hint else "")
            failed = self._db("fail the model's jobs", lambda: self.queue.fail_model_jobs(
                self.engine, model.id, error_type, message))
            log.error("%s; failed its %d pending jobs", message, len(failed))
            self.finished += len(failed)
            return
        try:
            check = dict(backend.self_check())
        except SelfCheckFailed as err:
            self.self_checks[model.name] = {"ok": False, "error": str(err)}
            self._db("record self-check", lambda: self.queue.update_worker(
                self.engine, self.worker_id, self_check=dict(self.self_checks)))
            raise
        self.self_checks[model.name] = check
        margins = {name: m.get("share") for name, m in (check.get("margins") or {}).items()}
        if margins:  # measured / tolerance per probe: how close this device and dtype come to refusing
            log.info("self-check of %s passed; margins (measured / tolerance): %s", model.name,
                     ", ".join(f"{name} {share:.0%}" for name, share in margins.items() if share is not None))
        self.describe = dict(backend.describe())
        check_revision(model.name, model.revision, self.describe.get("revision"))
        versions = {"python": sys.version.split()[0], "lease_seconds": self.options.lease_seconds,
                    "tracker": tracker_version(), "backend": self.describe}
        self._db("record self-check", lambda: self.queue.update_worker(
            self.engine, self.worker_id, model_name=model.name, self_check=dict(self.self_checks), versions=versions))
        self.model, self.backend = model, backend
        self._loaded[model.id] = (backend, self.describe)

    # ---- claim
    def _claim(self) -> tuple[list[ClaimedJob], Any]:
        n, gen_n = self.options.claim_size, self.options.generation_claim_size
        if self.options.max_jobs is not None:
            n = min(n, self.options.max_jobs - self.finished)
            gen_n = min(gen_n, n)
        model_id = self.model.id if self.model is not None else None
        # Two statements a claim saves at queue speed: expired leases are looked for at most
        # every EXPIRY_CHECK_SECONDS (at once again after a takeover), and the generation
        # budget is used while generations are around (they come first in claim order anyway).
        check_expired = time.monotonic() >= self._next_expiry_check
        batch, built = self._db("claim", lambda: self.queue.claim_tasks(
            self.engine, self.worker_id, model_id, n, self.options.lease_seconds,
            generation_n=gen_n if self._expect_generations else None, take_over_expired=check_expired),
            patient=False, default=([], None))
        if check_expired and not self.queue.is_takeover(batch):
            self._next_expiry_check = time.monotonic() + EXPIRY_CHECK_SECONDS
        self._expect_generations = not batch or any(j.kind == JobKind.generate for j in batch)
        if batch:
            self.book.hold(batch)
            log.debug("claimed %d jobs (%s)", len(batch), ", ".join(str(j.id) for j in batch))
        return batch, built

    def _nothing_left(self) -> bool:
        ids = self._candidate_model_ids() if self.options.model is not None else None
        return self._db("count unfinished", lambda: self.queue.unfinished_jobs(self.engine, ids)) == 0

    # ---- batches
    def _process_batch(self, batch: list[ClaimedJob], built: Any) -> None:
        """Score a claimed batch group by group; write its results in one transaction at the end
        (or sooner when it runs long), always before giving back what was not done."""
        computed = ComputedResults()
        try:
            tasks = self._task_errors_failed(batch, built)
            for group in self.queue.group_jobs(batch):
                self.stop.check()
                if self.stop.requested.is_set():
                    break
                self._process_group(group, tasks, computed)
                if computed.age() > FLUSH_SECONDS:
                    self._flush(computed)
        finally:
            try:
                self._flush(computed)
            except DatabaseError as err:  # the leases run out; other workers redo the jobs
                log.error("could not write %d computed results: %s", len(computed), first_line(err))
            self._release_held()

    def _task_errors_failed(self, batch: list[ClaimedJob], built: Any) -> dict[int, Any]:
        """The batch's tasks by job id; jobs whose task could not be built fail now."""
        by_id = {j.id: j for j in batch}
        for job_id, err in built.errors.items():
            self._fail([by_id[job_id]], BackendFailure.from_exception(err))
        return built.tasks

    def _release_held(self) -> None:
        held = self.book.held()
        if not held:
            return
        by_token: dict[str, list[int]] = {}
        for job_id, token in held.items():
            by_token.setdefault(token, []).append(job_id)
        for token, ids in by_token.items():
            released = self._db("release", lambda: self.queue.release_batch(self.engine, token, ids),
                                patient=False, default=[])
            if released:
                log.info("gave back %d jobs: %s", len(released), ", ".join(map(str, released)))
        self.book.drop(list(held))

    def _process_group(self, group: list[ClaimedJob], tasks: dict[int, Any], computed: ComputedResults) -> None:
        live = [job for job in group if not self.book.is_lost(job.id)]
        self.book.drop([job.id for job in group if self.book.is_lost(job.id)])
        if not live:
            return
        kind = live[0].kind
        if kind == JobKind.select:
            for job in live:
                self._run_selection(job)
        elif kind in (JobKind.score, JobKind.generate):
            self._run_model_jobs([j for j in live if j.id in tasks], kind, tasks, computed)
        else:  # pragma: no cover - the enum has three kinds
            self._fail(live, BackendFailure("UnknownJobKind", f"no handler for job kind {kind}", ""))

    def _run_model_jobs(self, jobs: list[ClaimedJob], kind: JobKind, tasks: dict[int, Any],
                        computed: ComputedResults) -> None:
        if not jobs:
            return
        if self.backend is None or jobs[0].model_id != (self.model.id if self.model else None):
            self._fail(jobs, BackendFailure("NoBackend", f"worker has no backend for model {jobs[0].model_id}", ""))
            return
        group_tasks = [tasks[j.id] for j in jobs]
        call = self.backend.score if kind == JobKind.score else self.backend.generate
        log.debug("%s %d jobs: %s", "scoring" if kind == JobKind.score else "generating", len(group_tasks),
                  " ".join(str(t.job_id) for t in group_tasks))
        started = time.perf_counter()
        results, failures = self._call_backend(call, group_tasks)
        per_job = (time.perf_counter() - started) / len(group_tasks)
        by_id = {j.id: j for j in jobs}
        for result in results:
            computed.add(kind, by_id[result.job_id], result, per_job)
        for job_id, failure in failures.items():
            self._fail([by_id[job_id]], failure)

    def _call_backend(self, call: Callable, tasks: list) -> tuple[list, dict[int, BackendFailure]]:
        """One call for the group; if it raises, each task alone, so one bad job fails alone."""
        try:
            return check_results(tasks, self.stop.call(lambda: call(tasks))), {}
        except Exception as err:  # noqa: BLE001 - any backend error is the job's error
            if len(tasks) == 1:
                return [], {tasks[0].job_id: BackendFailure.from_exception(err)}
            log.warning("a group of %d jobs failed (%s: %s); retrying them one by one",
                        len(tasks), type(err).__name__, first_line(err))
        results, failures = [], {}
        for task in tasks:
            try:
                results += check_results([task], self.stop.call(lambda t=task: call([t])))
            except Exception as err:  # noqa: BLE001
                failures[task.job_id] = BackendFailure.from_exception(err)
        return results, failures

    def _flush(self, computed: ComputedResults) -> None:
        """Write computed results (one transaction per kind), retrying a lost database."""
        for kind, jobs, results in computed.take():
            token = jobs[0].lease_token
            ids = [j.id for j in jobs]
            self.book.finishing(ids)
            if kind == JobKind.score:
                write = lambda: self.queue.complete_scores(  # noqa: E731
                    self.engine, token, results, worker_id=self.worker_id,
                    device=str(self.describe.get("device", "")), dtype=str(self.describe.get("dtype", "")),
                    seconds=computed.seconds)
            else:
                write = lambda: self.queue.complete_generations(  # noqa: E731
                    self.engine, token, list(zip(jobs, results)), worker_id=self.worker_id)
            try:
                outcome = self._db("complete", write)
            except DatabaseUnavailable:
                raise
            except DatabaseError as err:
                self._fail(jobs, BackendFailure.from_exception(err))
                continue
            self._after_completion(outcome, ids)

    def _after_completion(self, outcome: queue.Completion, ids: list[int]) -> None:
        for job_id in outcome.lost:
            log.warning("lease lost on job %d: another worker holds it now; result discarded", job_id)
        self.finished += len(outcome.completed) + len(outcome.already_done)
        self.completed += len(outcome.completed) + len(outcome.already_done)
        self.book.drop(ids)

    def _run_selection(self, job: ClaimedJob) -> None:
        self.book.finishing([job.id])
        try:
            outcome = self._db("selection", lambda: self.queue.complete_plain(
                self.engine, job.lease_token, [job.id], worker_id=self.worker_id,
                work=lambda session: self.selection(session, job.id)))
        except DatabaseUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - the selection's error is the job's error
            self._fail([job], BackendFailure.from_exception(err))
            return
        self._after_completion(outcome, [job.id])

    def _fail(self, jobs: list[ClaimedJob], failure: BackendFailure) -> None:
        for job in jobs:
            outcome = self._db("record a failure", lambda j=job: self.queue.fail_job(
                self.engine, j.id, j.lease_token, failure.error_type, failure.message, failure.traceback))
            if outcome.status == "lost":
                log.warning("lease lost on job %d: its failure (%s) is not recorded", job.id, failure.error_type)
            else:
                self.finished += 1
                verb = "will be retried" if outcome.status == "pending" else "failed for good"
                log.warning("job %d %s: %s: %s", job.id, verb, failure.error_type, first_line(failure.message))
                if outcome.dependants_failed:
                    log.warning("jobs failed because they depend on job %d: %s", job.id,
                                ", ".join(map(str, outcome.dependants_failed)))
            self.book.drop([job.id])

    # ---- database calls with retry
    def _db(self, what: str, op: Callable[[], T], *, patient: bool = True, default: Any = ...) -> T:
        return retry_database(what, op, stop=self.stop, patient=patient, default=default,
                              max_outage_seconds=self.options.max_outage_seconds)
