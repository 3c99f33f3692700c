"""What ``tracker worker`` was asked to do, with the defaults the CLI shows.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracker import queue
from tracker.catalogue import is_gpu

CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 96
CPU_GENERATION_BATCH_SIZE, GPU_GENERATION_BATCH_SIZE = 16, 128


# --------------------------------------------------------------------------- options
@dataclass
class WorkerOptions:
    """What ``tracker worker`` was asked to do."""

    device: str = "cpu"
    physical_gpu: str | None = None  # with --gpu N: the GPU's physical id (the process sees it as cuda:0)
    model: str | None = None  # a model name; None: every model with work, one after another
    batch_size: int | None = None  # jobs per claim; None: 16 on the CPU, 96 on a GPU
    generation_batch_size: int | None = None  # surrogates per claim and generate call; None: 16 CPU, 128 GPU
    max_jobs: int | None = None
    exit_when_empty: bool = False
    lease_seconds: float = queue.DEFAULT_LEASE_SECONDS
    poll_seconds: float = 2.0
    max_outage_seconds: float = 900.0  # give up writing a batch after this long without a database

    @property
    def claim_size(self) -> int:
        return self.batch_size or (GPU_BATCH_SIZE if is_gpu(self.device) else CPU_BATCH_SIZE)

    @property
    def generation_claim_size(self) -> int:
        return self.generation_batch_size or (GPU_GENERATION_BATCH_SIZE if is_gpu(self.device)
                                              else CPU_GENERATION_BATCH_SIZE)

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3.0
