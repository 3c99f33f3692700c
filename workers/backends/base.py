"""The scoring backend interface every model family implements.

A backend is a small class with batched methods over the job contracts
(:mod:`tracker.contracts`) that returns one result per request, in order (lm-eval-harness
style). Backends are chosen by model family (`workers.backends.backend_class`) and
imported only when used.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from tracker.contracts import GenerateResult, GenerateTask, ScoreResult, ScoreTask

__all__ = ["GenerateResult", "GenerateTask", "ScoreResult", "ScoreTask", "ScoringBackend"]


class ScoringBackend(ABC):
    """A model that scores answer NLLs and generates surrogate texts."""

    name: str

    @abstractmethod
    def score(self, tasks: list[ScoreTask]) -> list[ScoreResult]:
        """One result per task, same order."""

    @abstractmethod
    def generate(self, tasks: list[GenerateTask]) -> list[GenerateResult]:
        """Greedy generations, one per task, same order."""

    @abstractmethod
    def describe(self) -> dict:
        """Model name, revision, dtype, attention implementation, device, versions, scorer_version."""

    @abstractmethod
    def self_check(self) -> dict:
        """Run the invariant probes; raise tracker.errors.SelfCheckFailed on failure."""
