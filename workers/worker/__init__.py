"""The worker process: one per device. ``tracker worker`` builds a :class:`QueueWorker` and runs it.

Modules: ``options``, ``loading`` (backends, revision check), ``loop`` (the claim-score-write
loop), ``signals`` (stop handling), ``leases`` and ``heartbeat``, ``results`` (the buffer of
computed results), ``retry`` (database outages), ``logs``.
"""
from __future__ import annotations

from workers.worker.loading import check_revision
from workers.worker.logs import configure_logging
from workers.worker.loop import QueueWorker
from workers.worker.options import WorkerOptions
from workers.worker.signals import StopControl, WorkerInterrupted

__all__ = ["QueueWorker", "StopControl", "WorkerInterrupted", "WorkerOptions", "check_revision", "configure_logging",
]
