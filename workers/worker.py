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
import platform
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, select

from tracker import queue
from tracker.db import is_sqlite, session_scope
from tracker.errors import ConfigError, DatabaseError, DatabaseUnavailable, DeviceError, SelfCheckFailed
from tracker.models import JobKind, Model
from tracker.queue import ClaimedJob
from workers.backends.base import ScoringBackend

log = logging.getLogger("tracker.worker")
T = TypeVar("T")

FAKE_MODEL_NAME = "test-fake"
TRANSIENT_DB_ERRORS = ("deadlock detected", "could not serialize", "database is locked", "lock timeout")


# --------------------------------------------------------------------------- options
@dataclass
class WorkerOptions:
    """What ``tracker worker`` was asked to do."""

    device: str = "cpu"
    model: str | None = None  # a model name; None: every model with work, one after another
    batch_size: int = 16
    max_jobs: int | None = None
    exit_when_empty: bool = False
    lease_seconds: float = queue.DEFAULT_LEASE_SECONDS
    poll_seconds: float = 2.0
    max_outage_seconds: float = 900.0  # give up writing a batch after this long without a database

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3.0


def resolve_device(gpu: int | None, device: str | None) -> str:
    """``--gpu N`` / ``--device D`` to a device string, refusing GPUs this machine lacks."""
    if gpu is not None and device is not None:
        raise ConfigError("Give either --gpu or --device, not both.", hint="e.g. `tracker worker --gpu 0`")
    name = f"cuda:{gpu}" if gpu is not None else (device or "cpu")
    if name == "cpu":
        return name
    if not name.startswith("cuda"):
        raise ConfigError(f"Unknown device {name!r}.", hint="use --device cpu, --device cuda:N or --gpu N")
    import torch  # only GPU workers pay for the import

    index = int(name.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise DeviceError(
            f"This machine has no GPU {index} (torch sees {count} GPU{'s' if count != 1 else ''}).",
            hint="use --device cpu" if count == 0 else f"pick --gpu between 0 and {count - 1}",
        )
    return f"cuda:{index}"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(int(device.partition(":")[2] or 0))
    return platform.processor() or platform.machine() or "cpu"


def load_backend(model_name: str, device: str, dtype: str | None, **kw: Any) -> ScoringBackend:
    """The backend for a model name; ``test-fake`` without importing torch or the registry.

    ``kw`` goes to the backend (``revision=`` pins a hub model's weights).
    """
    if model_name == FAKE_MODEL_NAME:
        from workers.backends.fake import FakeBackend

        return FakeBackend(None, device, dtype)
    from workers.backends import get_backend

    return get_backend(model_name, device, dtype, **kw)


_FINGERPRINT_PREFIXES = ("tiny-", "gguf-sha256:", "local-")  # content fingerprints the registry makes
_COMMIT = re.compile(r"[0-9a-f]{7,40}")


def check_revision(name: str, wanted: str | None, loaded: str | None) -> None:
    """Refuse to score with weights other than the revision the jobs were enqueued for.

    Jobs carry the model row's revision in their identity; a hub model pinned to a revision
    (or an embedded/tiny/local model with a content fingerprint) must load exactly that.
    """
    if not wanted or not loaded:
        return
    if wanted.startswith(_FINGERPRINT_PREFIXES):
        same = loaded == wanted
    elif _COMMIT.fullmatch(wanted):
        same = loaded.startswith(wanted)  # a short sha pins its full sha
    else:
        same = True  # a branch or tag name: from_pretrained resolved it; the commit is recorded
    if not same:
        raise ConfigError(
            f"model {name}: the jobs want revision {wanted!r}, but this worker loaded {loaded!r}",
            hint=f"make revision {wanted} loadable here (e.g. `huggingface-cli download {name} --revision {wanted}`), "
                 "or enqueue again without the pinned revision",
        )


# --------------------------------------------------------------------------- stop control
class WorkerInterrupted(BaseException):
    """A second stop signal: give the batch back now."""


class StopControl:
    """SIGINT/SIGTERM handling: first signal = graceful stop, second = hard stop.

    A hard stop raises :class:`WorkerInterrupted` only while the main thread is inside an
    ``interruptible()`` section (a backend call or an idle wait), so a database write is
    never cut in half; elsewhere it is noticed at the next safe point.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hard = False
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            self.hard = True
            log.warning("%s again: giving the batch back now", name)
            if self._interruptible:
                raise WorkerInterrupted(name)
            return
        log.info("%s: finishing the group in hand, then giving the rest back and stopping", name)
        self.requested.set()

    def check(self) -> None:
        """Raise at a safe point if a hard stop arrived meanwhile."""
        if self.hard:
            raise WorkerInterrupted("stop")

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` so that a hard stop may interrupt it."""
        self.check()
        self._interruptible = True
        try:
            return fn()
        finally:
            self._interruptible = False

    def wait(self, seconds: float) -> None:
        """Sleep, waking early on any stop request."""
        self.call(lambda: self.requested.wait(seconds))


# --------------------------------------------------------------------------- leases
class LeaseBook:
    """The jobs this worker holds, by lease token, shared with the heartbeat thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}  # job id -> lease token
        self._finishing: set[int] = set()
        self.lost: set[int] = set()

    def hold(self, claimed: Sequence[ClaimedJob]) -> None:
        with self._lock:
            self._held.update({job.id: job.lease_token for job in claimed})

    def finishing(self, job_ids: Sequence[int]) -> None:
        """Jobs whose completion is being written: the heartbeat must not call them lost."""
        with self._lock:
            self._finishing.update(job_ids)

    def drop(self, job_ids: Sequence[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._held.pop(job_id, None)
                self._finishing.discard(job_id)

    def held(self) -> dict[int, str]:
        with self._lock:
            return dict(self._held)

    def tokens(self) -> set[str]:
        with self._lock:
            return set(self._held.values())

    def note_alive(self, before: dict[int, str], alive: set[int]) -> list[int]:
        """After a heartbeat: jobs held before it that the database no longer gives us."""
        with self._lock:
            newly = [j for j in before if j not in alive and j in self._held
                     and j not in self._finishing and j not in self.lost]
            self.lost.update(newly)
            return newly

    def is_lost(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self.lost


class HeartbeatThread:
    """Every ``interval`` seconds: stamp the worker row and extend every lease it holds."""

    def __init__(self, engine: Engine, worker_id: int, book: LeaseBook, lease_seconds: float, interval: float,
                 jobs_done: Callable[[], int] = lambda: 0) -> None:
        self.engine, self.worker_id, self.book, self.jobs_done = engine, worker_id, book, jobs_done
        self.lease_seconds, self.interval = lease_seconds, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval * 2))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        before = self.book.held()
        try:
            alive = queue.heartbeat(self.engine, self.worker_id, set(before.values()), self.lease_seconds,
                                    jobs_done=self.jobs_done())
        except DatabaseError as err:
            log.warning("heartbeat failed (%s); retrying in %.1fs", _first_line(err), self.interval)
            return
        except Exception:  # noqa: BLE001 - the thread must outlive any error; the lease is the safety net
            log.exception("heartbeat failed")
            return
        self.beats += 1
        for job_id in self.book.note_alive(before, alive):
            log.warning("lease lost on job %d: it was reclaimed by another worker; its result will be discarded",
                        job_id)


# --------------------------------------------------------------------------- the loop
FLUSH_SECONDS = 10.0  # results computed longer ago than this are written before the next group


class ComputedResults:
    """Results computed in this batch and not yet written, in the order they were computed."""

    def __init__(self) -> None:
        self._items: list[tuple[JobKind, ClaimedJob, Any]] = []
        self.seconds: dict[int, float] = {}  # scoring time per job
        self._since: float | None = None

    def add(self, kind: JobKind, job: ClaimedJob, result: Any, seconds: float) -> None:
        if self._since is None:
            self._since = time.monotonic()
        self._items.append((kind, job, result))
        self.seconds[job.id] = seconds

    def age(self) -> float:
        return 0.0 if self._since is None else time.monotonic() - self._since

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> list[tuple[JobKind, list[ClaimedJob], list]]:
        """Empty the buffer: (kind, jobs, results) per kind."""
        by_kind: dict[JobKind, tuple[list, list]] = {}
        for kind, job, result in self._items:
            jobs, results = by_kind.setdefault(kind, ([], []))
            jobs.append(job)
            results.append(result)
        self._items, self._since = [], None
        return [(kind, jobs, results) for kind, (jobs, results) in by_kind.items()]


@dataclass
class BackendFailure:
    error_type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, err: BaseException) -> BackendFailure:
        kind = type(err)
        name = kind.__name__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__name__}"
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return cls(name, str(err), text)


class QueueWorker:
    """One worker process's loop; :meth:`run` returns the number of jobs this worker finished."""

    def __init__(self, engine: Engine, options: WorkerOptions,
                 backend_loader: Callable[[str, str, str | None], ScoringBackend] = load_backend) -> None:
        self.engine = engine
        self.options = options
        self.backend_loader = backend_loader
        self.stop = StopControl()
        self.book = LeaseBook()
        self.worker_id: int | None = None
        self.model: Model | None = None
        self.backend: ScoringBackend | None = None
        self.describe: dict = {}
        self.self_checks: dict[str, dict] = {}
        self.finished = 0  # jobs done or failed by this worker
        self.completed = 0  # jobs done by this worker (the workers row's jobs_done)
        self.host = socket.gethostname()
        self._heartbeat: HeartbeatThread | None = None
        self._warned_no_model = False
        self._loaded: dict[int, tuple[ScoringBackend, dict]] = {}  # model id -> (backend, describe)

    # ---- lifecycle
    def run(self) -> int:
        self.stop.install()
        try:
            self._register()
            self._heartbeat = HeartbeatThread(self.engine, self.worker_id, self.book, self.options.lease_seconds,
                                              self.options.heartbeat_seconds, jobs_done=lambda: self.completed)
            self._heartbeat.start()
            try:
                self._loop()
            except WorkerInterrupted:
                log.info("stopped by a second signal")
            finally:
                self._heartbeat.stop()
                self._db("mark the worker stopped", lambda: queue.mark_worker_stopped(
                    self.engine, self.worker_id, jobs_done=self.completed), patient=False, default=None)
            log.info("worker %d stopped after %d jobs", self.worker_id, self.finished)
            return self.finished
        finally:
            self.stop.restore()

    def _register(self) -> None:
        if is_sqlite(self.engine):
            others = self._db("check other hosts", lambda: queue.other_live_hosts(self.engine, self.host))
            if others:
                raise ConfigError(
                    f"This SQLite database is in use by workers on other hosts ({', '.join(others)}). "
                    "SQLite is for worker processes on one host: its locking (WAL) does not work "
                    "over network filesystems.",
                    hint="share one PostgreSQL database between machines "
                         "(--db postgresql+psycopg://user@host/db), or run all workers on one host",
                )
        versions = {"python": sys.version.split()[0], "lease_seconds": self.options.lease_seconds,
                    "tracker": _tracker_version()}
        self.worker_id = self._db("register", lambda: queue.register_worker(
            self.engine, name=f"{self.host}:{os.getpid()}:{self.options.device}", host=self.host,
            pid=os.getpid(), device=self.options.device, device_name=device_name(self.options.device),
            model_name=self.options.model, versions=versions))
        log.info("worker %d registered (%s, pid %d, device %s, lease %.1fs)", self.worker_id, self.host,
                 os.getpid(), self.options.device, self.options.lease_seconds)

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
        with session_scope(self.engine) as session:
            ids = list(session.execute(select(Model.id).where(Model.name == self.options.model)
                                       .order_by(Model.id)).scalars())
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
        ready = self._db("find models", lambda: queue.models_with_claimable_jobs(self.engine, candidates))
        if not ready:
            return "idle"
        if self.model is not None and self.model.id in ready:
            return "busy"
        self._load(self._db("find models", lambda: _model_row(self.engine, ready[0])))
        return "switched"

    def _load(self, model: Model) -> None:
        """Make ``model`` current, loading (and self-checking) its backend the first time only."""
        if model.id in self._loaded:
            self.model, self.backend, self.describe = model, *self._loaded[model.id]
            self._db("record the model", lambda: queue.update_worker(self.engine, self.worker_id,
                                                                     model_name=model.name))
            return
        log.info("loading model %s (id %d) on %s", model.name, model.id, self.options.device)
        pinned = {"revision": model.revision} if model.source == "hub" and model.revision else {}
        backend = self.stop.call(lambda: self.backend_loader(model.name, self.options.device, model.dtype or None,
                                                             **pinned))
        try:
            check = dict(backend.self_check())
        except SelfCheckFailed as err:
            self.self_checks[model.name] = {"ok": False, "error": str(err)}
            self._db("record self-check", lambda: queue.update_worker(
                self.engine, self.worker_id, self_check=dict(self.self_checks)))
            raise
        self.self_checks[model.name] = check
        self.describe = dict(backend.describe())
        check_revision(model.name, model.revision, self.describe.get("revision"))
        versions = {"python": sys.version.split()[0], "lease_seconds": self.options.lease_seconds,
                    "tracker": _tracker_version(), "backend": self.describe}
        self._db("record self-check", lambda: queue.update_worker(
            self.engine, self.worker_id, model_name=model.name, self_check=dict(self.self_checks), versions=versions))
        self.model, self.backend = model, backend
        self._loaded[model.id] = (backend, self.describe)

    # ---- claim
    def _claim(self) -> tuple[list[ClaimedJob], Any]:
        n = self.options.batch_size
        if self.options.max_jobs is not None:
            n = min(n, self.options.max_jobs - self.finished)
        model_id = self.model.id if self.model is not None else None
        batch, built = self._db("claim", lambda: _claim_and_read(
            self.engine, self.worker_id, model_id, n, self.options.lease_seconds), patient=False, default=([], None))
        if batch:
            self.book.hold(batch)
            log.debug("claimed %d jobs (%s)", len(batch), ", ".join(str(j.id) for j in batch))
        return batch, built

    def _nothing_left(self) -> bool:
        ids = self._candidate_model_ids() if self.options.model is not None else None
        return self._db("count unfinished", lambda: queue.unfinished_jobs(self.engine, ids)) == 0

    # ---- batches
    def _process_batch(self, batch: list[ClaimedJob], built: Any) -> None:
        """Score a claimed batch group by group; write its results in one transaction at the end
        (or sooner when it runs long), always before giving back what was not done."""
        computed = ComputedResults()
        try:
            tasks = self._task_errors_failed(batch, built)
            for group in queue.group_jobs(batch):
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
                log.error("could not write %d computed results: %s", len(computed), _first_line(err))
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
            released = self._db("release", lambda: queue.release_batch(self.engine, token, ids),
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
            return _checked(tasks, self.stop.call(lambda: call(tasks))), {}
        except Exception as err:  # noqa: BLE001 - any backend error is the job's error
            if len(tasks) == 1:
                return [], {tasks[0].job_id: BackendFailure.from_exception(err)}
            log.warning("a group of %d jobs failed (%s: %s); retrying them one by one",
                        len(tasks), type(err).__name__, _first_line(err))
        results, failures = [], {}
        for task in tasks:
            try:
                results += _checked([task], self.stop.call(lambda t=task: call([t])))
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
                write = lambda: queue.complete_scores(  # noqa: E731
                    self.engine, token, results, worker_id=self.worker_id,
                    device=str(self.describe.get("device", "")), dtype=str(self.describe.get("dtype", "")),
                    seconds=computed.seconds)
            else:
                write = lambda: queue.complete_generations(  # noqa: E731
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
        from tracker.stages import perform_selection  # written with the experiments; imported when needed

        def work(session) -> None:
            from tracker.models import Job

            perform_selection(session, session.get(Job, job.id))

        self.book.finishing([job.id])
        try:
            outcome = self._db("selection", lambda: queue.complete_plain(
                self.engine, job.lease_token, [job.id], worker_id=self.worker_id, work=work))
        except DatabaseUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - the selection's error is the job's error
            self._fail([job], BackendFailure.from_exception(err))
            return
        self._after_completion(outcome, [job.id])

    def _fail(self, jobs: list[ClaimedJob], failure: BackendFailure) -> None:
        for job in jobs:
            outcome = self._db("record a failure", lambda j=job: queue.fail_job(
                self.engine, j.id, j.lease_token, failure.error_type, failure.message, failure.traceback))
            if outcome.status == "lost":
                log.warning("lease lost on job %d: its failure (%s) is not recorded", job.id, failure.error_type)
            else:
                self.finished += 1
                verb = "will be retried" if outcome.status == "pending" else "failed for good"
                log.warning("job %d %s: %s: %s", job.id, verb, failure.error_type, _first_line(failure.message))
                if outcome.dependants_failed:
                    log.warning("jobs failed because they depend on job %d: %s", job.id,
                                ", ".join(map(str, outcome.dependants_failed)))
            self.book.drop([job.id])

    # ---- database calls with retry
    def _db(self, what: str, op: Callable[[], T], *, patient: bool = True, default: Any = ...) -> T:
        """Run a database operation, retrying a lost connection with backoff.

        ``patient`` operations (writing results in hand) keep trying through a stop request
        for up to ``max_outage_seconds``; impatient ones (claims, releases) give up on a stop
        and return ``default``.
        """
        delay, started, transient_tries = 0.25, time.monotonic(), 0
        while True:
            try:
                return op()
            except DatabaseUnavailable as err:
                reason = _first_line(err)
            except DatabaseError as err:
                if not any(s in str(err).lower() for s in TRANSIENT_DB_ERRORS) or transient_tries >= 5:
                    raise
                transient_tries += 1
                reason = _first_line(err)
            gave_up = (not patient and self.stop.requested.is_set()) or (
                time.monotonic() - started > self.options.max_outage_seconds)
            if gave_up:
                if default is not ...:
                    log.warning("database unavailable during %s (%s); giving up", what, reason)
                    return default
                raise DatabaseUnavailable(f"The database stayed unavailable during {what}: {reason}")
            log.warning("database unavailable during %s (%s); retrying in %.2fs", what, reason, delay)
            if patient:
                time.sleep(delay)
            else:
                self.stop.wait(delay)
            delay = min(delay * 2, 10.0)


def _model_row(engine: Engine, model_id: int) -> Model:
    with session_scope(engine) as session:
        return session.get(Model, model_id)


def _claim_and_read(engine: Engine, worker_id: int, model_id: int | None, n: int, lease_seconds: float):
    """Claim a batch and read its tasks in one transaction (a failed read claims nothing)."""
    from tracker.tasks import build_tasks

    with session_scope(engine) as session:
        batch = queue.claim_batch(session, worker_id, model_id, n, lease_seconds)
        return batch, build_tasks(session, batch)


def _checked(tasks: list, results: list) -> list:
    """The backend contract: one result per task, same order."""
    got = [r.job_id for r in results]
    want = [t.job_id for t in tasks]
    if got != want:
        raise RuntimeError(f"backend returned results for jobs {got}, expected {want}")
    for r in results:
        if hasattr(r, "token_nlls") and len(r.token_nlls) != len(r.answer_ids):
            raise RuntimeError(f"job {r.job_id}: {len(r.token_nlls)} token NLLs for {len(r.answer_ids)} answer tokens")
    return results


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _tracker_version() -> str:
    from tracker import __version__

    return __version__


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr with time and pid (workers of one machine share a terminal)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s worker[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
