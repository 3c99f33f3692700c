r"""The job queue protocol: claim, lease, heartbeat, complete, fail, retry, requeue.

Lifecycle (one enum, :class:`tracker.db.schema.JobStatus`; every transition below is an
UPDATE that checks the current status, so a job can only move along these edges)::

    blocked --unblock--> pending --claim--> running --complete--> done
       |                    ^                  |  \--fail (attempts left)--> pending
       |                    |                  |   \-fail (no attempts left)-> failed
       |                    +---release--------+    (shutdown; lease token checked)
       +--dependency_failed--> failed --requeue--> pending | blocked

- A ``running`` job whose lease expired is claimable again; stale leases are recovered by
  the claim statement itself (pgqueuer's "picked + heartbeat older than retry_after"), not by
  a separate reaper.
- Claims take whole groups: every claimable job of one (kind, sample, model, mode), so the
  scorer sees all conditions of a sample in one call and batches are reproducible.
- Fencing: each claim writes a fresh lease token; heartbeat, complete, fail and release only
  touch rows that still carry the caller's token, so a worker whose jobs were reclaimed can
  no longer extend, complete or fail them (``lost`` outcomes, never an exception that loses
  the batch).
- Every time in a lease is database time (``now()`` on PostgreSQL, ``strftime('now')`` on
  SQLite), never a worker's clock.

Public operations take a :class:`~sqlalchemy.orm.Session` (the caller owns the transaction)
or an :class:`~sqlalchemy.Engine` (one transaction per call, see :func:`tracker.db.session_scope`).

Modules: ``transitions`` (the lifecycle as data), ``claim``, ``leases`` (heartbeats),
``complete``, ``dependencies``, ``failures`` (fail / release), ``requeue``, ``worker_rows``,
``status``, ``tasks`` (claimed rows -> job contracts). Import from the package.
"""
from __future__ import annotations

from tracker.queue.claim import (
    ClaimedJob,
    claim_batch,
    claim_window,
    group_jobs,
    is_takeover,
    take_over_expired_job,
)
from tracker.queue.complete import (
    Completion,
    complete_generations,
    complete_plain,
    complete_scores,
    mark_done,
)
from tracker.queue.dependencies import (
    fail_dependants,
    release_dependants,
)
from tracker.queue.failures import (
    FailOutcome,
    fail_job,
    fail_model_jobs,
    release_batch,
)
from tracker.queue.leases import (
    extend_leases,
    heartbeat,
)
from tracker.queue.requeue import (
    RequeueReport,
    check_experiment,
    experiment_job_ids,
    requeue_failed,
    requeue_stale,
)
from tracker.queue.status import (
    StatusReport,
    failed_jobs,
    model_ids_named,
    model_row,
    models_with_claimable_jobs,
    queue_status,
    unfinished_jobs,
)
from tracker.queue.tasks import BuiltTasks, TaskBuildError, build_tasks, claim_tasks
from tracker.queue.transitions import (
    CLAIM,
    COMPLETE,
    DEFAULT_LEASE_SECONDS,
    DEPENDENCY_FAIL,
    DEPENDENCY_FAILED,
    FAIL,
    REBLOCK,
    RELEASE,
    REQUEUE,
    REQUEUE_STALE,
    RETRY,
    UNBLOCK,
    UNLOADABLE,
    Transition,
    claimable,
    deps,
    for_model,
    in_transaction,
    jobs,
    same_group,
)
from tracker.queue.worker_rows import (
    list_workers,
    mark_worker_stopped,
    other_live_hosts,
    register_worker,
    update_worker,
    worker_state,
)

__all__ = [
    "is_takeover",
    "take_over_expired_job",
    "fail_model_jobs",
    "UNLOADABLE",
    "claim_tasks",
    "model_ids_named",
    "model_row",
    "build_tasks",
    "BuiltTasks",
    "TaskBuildError",
    "ClaimedJob",
    "claim_batch",
    "claim_window",
    "group_jobs",
    "Completion",
    "complete_generations",
    "complete_plain",
    "complete_scores",
    "mark_done",
    "fail_dependants",
    "release_dependants",
    "FailOutcome",
    "fail_job",
    "release_batch",
    "extend_leases",
    "heartbeat",
    "RequeueReport",
    "check_experiment",
    "experiment_job_ids",
    "requeue_failed",
    "requeue_stale",
    "StatusReport",
    "failed_jobs",
    "models_with_claimable_jobs",
    "queue_status",
    "unfinished_jobs",
    "CLAIM",
    "COMPLETE",
    "DEFAULT_LEASE_SECONDS",
    "DEPENDENCY_FAIL",
    "DEPENDENCY_FAILED",
    "FAIL",
    "REBLOCK",
    "RELEASE",
    "REQUEUE",
    "REQUEUE_STALE",
    "RETRY",
    "UNBLOCK",
    "Transition",
    "claimable",
    "deps",
    "for_model",
    "in_transaction",
    "jobs",
    "same_group",
    "list_workers",
    "mark_worker_stopped",
    "other_live_hosts",
    "register_worker",
    "update_worker",
    "worker_state",
]
