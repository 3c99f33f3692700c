"""What enqueue reports: job counts per stage and the estimated cost (tokens, forward passes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# --- reports -----------------------------------------------------------------------------

@dataclass
class JobCounts:
    """created = new rows; reused = existing rows new to this run; skipped = already in it."""

    created: int = 0
    reused: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.created + self.reused + self.skipped

    def add(self, other: JobCounts) -> None:
        self.created += other.created
        self.reused += other.reused
        self.skipped += other.skipped


@dataclass
class StageReport:
    stage: int
    name: str
    score: JobCounts = field(default_factory=JobCounts)
    generate: JobCounts = field(default_factory=JobCounts)
    select: JobCounts = field(default_factory=JobCounts)
    planned: int = 0            # stage jobs that the selection will create or reuse
    planned_new_max: int = 0    # of which at most this many can be new
    planned_generate_max: int = 0
    selections_done: int = 0
    blocked_on_failed: int = 0  # new jobs waiting on a generation job that failed
    by_dataset: dict[str, JobCounts] = field(default_factory=dict)     # scoring jobs per dataset key
    planned_new_by_dataset: dict[str, int] = field(default_factory=dict)


@dataclass
class CostEstimate:
    """Rough cost of the new work: tokens through the model and forward passes."""

    score_tokens: int = 0
    score_forward_passes: int = 0       # one Phase A + one Phase B per job (unbatched)
    score_batched_passes: int = 0       # two per (sample, model, mode) group (the worker batches a group)
    generate_tokens: int = 0
    generate_forward_passes: int = 0    # prefill + one per new token (upper bound)

    def add(self, other: CostEstimate) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class EnqueueReport:
    experiment: str
    spec_hash: str
    run_id: int | None
    dry_run: bool
    models: list[str]
    samples_total: int = 0
    samples_created: int = 0
    stages: list[StageReport] = field(default_factory=list)
    cost: CostEstimate = field(default_factory=CostEstimate)
    planned_cost: CostEstimate = field(default_factory=CostEstimate)
    warnings: list[str] = field(default_factory=list)
    datasets: list[dict] = field(default_factory=list)  # dataset, rows, usable, skipped, taken

    def stage(self, number: int) -> StageReport:
        return next(s for s in self.stages if s.stage == number)

    @property
    def created(self) -> int:
        return sum(s.score.created for s in self.stages)


def total_cost(costs: list[CostEstimate]) -> CostEstimate:
    total = CostEstimate()
    for c in costs:
        total.add(c)
    return total


def scaled_cost(cost: CostEstimate, num: int, den: int = 1) -> CostEstimate:
    return CostEstimate(**{k: getattr(cost, k) * num // max(den, 1) for k in cost.__dataclass_fields__})
