"""Content hashes that give samples, conditions, models and jobs their identity.

Two rows are the same thing exactly when their hashes agree, so a changed prompt, parameter,
generator model, model revision, dtype or doc-preparation recipe always makes new rows
(and new jobs), never a silent reuse of an old score.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any, length: int = 40) -> str:
    """SHA-256 of the canonical JSON of ``value``, hex, truncated to ``length``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def score_job_key(sample_id: int, condition_id: int, model_id: int, mode: str, scorer_version: str) -> str:
    """Identity of a scoring job: (sample, condition, model, mode, scorer version)."""
    return content_hash(["score", sample_id, condition_id, model_id, mode, scorer_version])


def generate_job_key(sample_id: int, kind: str, prompt_hash: str, generator_model_id: int) -> str:
    """Identity of a surrogate generation job: (sample, surrogate kind, prompt, generator)."""
    return content_hash(["generate", sample_id, kind, prompt_hash, generator_model_id])


def select_job_key(run_id: int, stage: int, dataset: str) -> str:
    """Identity of a stage-selection job: (experiment run, stage, dataset)."""
    return content_hash(["select", run_id, stage, dataset])
