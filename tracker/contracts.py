"""What the queue hands a worker and what a worker hands back: the job contracts.

The queue builds tasks from database rows (``tracker.queue.tasks``); a backend returns one
result per task, in order; the queue writes the results. Text level only: no torch here.
"""
from __future__ import annotations

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
