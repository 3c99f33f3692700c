"""What ``tracker worker`` was asked to do, with the defaults the CLI shows.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracker import queue


# --------------------------------------------------------------------------- options
@dataclass
class WorkerOptions:
    """What ``tracker worker`` was asked to do."""

    device: str = "cpu"
    physical_gpu: str | None = None  # with --gpu N: the GPU's physical id (the process sees it as cuda:0)
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
