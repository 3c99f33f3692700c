"""The scoring backend interface every model family implements (fixed by the team brief).

A backend is a small class with batched methods over request dataclasses that returns
one result per request, in order (lm-eval-harness style). Backends are chosen by name
from `workers.registry` and imported only when used (`workers.backends.get_backend`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreTask:
    """One scoring job, text level, as the worker hands it over."""

    job_id: int
    mode: str
    sample: dict  # {"id", "dataset", "source_key", "doc", "query", "answer", "meta"}
    condition: dict  # {"name", "kind", "params"}
    surrogate_text: str | None = None


@dataclass
class ScoreResult:
    job_id: int
    nll_mean: float
    token_nlls: list[float]  # one per answer token
    answer_ids: list[int]
    prefix_ids: list[int] | None
    doc_ids: list[int]
    query_ids: list[int]
    bos_id: int | None
    batch_size: int
    extras: dict = field(default_factory=dict)  # e.g. attention shares, batch composition


@dataclass(frozen=True)
class GenerateTask:
    """One LLM surrogate generation job."""

    job_id: int
    sample: dict
    kind: str  # extract | question | summarize | paraphrase | same_topic
    prompt: str  # fully rendered user message
    max_new_tokens: int


@dataclass
class GenerateResult:
    job_id: int
    text: str
    settings: dict


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
