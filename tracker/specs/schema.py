"""Typed experiment specs: what an experiment needs, declared rather than coded.

A spec names datasets (with N, seed, split and doc recipe), conditions (catalogue names or
full definitions), models, scoring modes, stages (e.g. exp03's hard-example selection) and
the analysis plan. :mod:`tracker.specs.loader` builds these from YAML and validates them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tracker.conditions import GENERATOR_IS_SCORING_MODEL, ConditionDefinition
from tracker.identity import content_hash


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a spec. ``n=None`` takes every usable row; ``label`` keys selections."""

    name: str
    n: int | None
    seed: int
    split: str | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def key(self) -> str:
        return self.label or self.name

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "seed": self.seed, "split": self.split,
                "recipe": dict(self.recipe), "label": self.key}


@dataclass(frozen=True)
class ModelEntry:
    """A scoring model by registry name; dtype/revision override the registry's defaults."""

    name: str
    dtype: str | None = None
    revision: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "revision": self.revision}


def hardest_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples are the hardest ``fraction``: ceil(fraction * n), exact for
    decimal fractions (0.4 * 15 is 6 and 0.4 * 400 is 160, where float products say 7 and 161)."""
    return min(n, math.ceil(Fraction(str(fraction)) * n))


@dataclass(frozen=True)
class SelectRule:
    """Which samples a later stage runs on: the ceil(fraction * n) highest ``by`` NLLs per dataset."""

    by: str = "bare"
    fraction: float = 0.4
    order: str = "highest_nll"  # hardest first; ties by sample id
    per: str = "dataset"

    def count(self, n: int) -> int:
        return hardest_count(n, self.fraction)

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "fraction": self.fraction, "order": self.order, "per": self.per}


@dataclass(frozen=True)
class StageSpec:
    """A stage: its conditions, and (after stage 1) the selection it runs on."""

    number: int
    name: str
    conditions: tuple[str, ...]
    select: SelectRule | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.number, "name": self.name, "conditions": list(self.conditions),
                "select": self.select.as_dict() if self.select else None}


@dataclass(frozen=True)
class StageSize:
    stage: int
    samples: int
    conditions: int
    score_jobs: int
    generate_jobs: int


@dataclass(frozen=True)
class SpecSize:
    """Planned sizes: samples x conditions x models x modes = scoring jobs (per stage)."""

    samples: int
    conditions: int
    models: int
    score_jobs: int
    generate_jobs: int
    stages: tuple[StageSize, ...]


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment spec (build it with :func:`tracker.specs.load_spec`)."""

    name: str
    title: str
    description: str
    datasets: tuple[DatasetEntry, ...]
    conditions: tuple[ConditionDefinition, ...]
    models: tuple[ModelEntry, ...]
    modes: tuple[str, ...]
    device: str
    stages: tuple[StageSpec, ...]
    analysis: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    # --- lookups ---
    def condition(self, name: str) -> ConditionDefinition:
        return next(c for c in self.conditions if c.name == name)

    def stage_conditions(self, number: int) -> tuple[ConditionDefinition, ...]:
        stage = next(s for s in self.stages if s.number == number)
        return tuple(self.condition(n) for n in stage.conditions)

    def modes_for(self, definition: ConditionDefinition) -> tuple[str, ...]:
        """A condition with its own mode (oracle_full) runs only in that mode."""
        return (definition.mode,) if definition.mode else self.modes

    @property
    def staged(self) -> bool:
        return len(self.stages) > 1

    # --- identity ---
    def to_dict(self) -> dict[str, Any]:
        """The normalized spec (defaults filled in): what the spec hash covers, plus texts."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            **self.hashed_dict(),
        }

    def hashed_dict(self) -> dict[str, Any]:
        """Everything that decides the work and its analysis (not the prose)."""
        return {
            "datasets": [d.as_dict() for d in self.datasets],
            "conditions": [c.as_dict() for c in self.conditions],
            "models": [m.as_dict() for m in self.models],
            "modes": list(self.modes),
            "device": self.device,
            "stages": [s.as_dict() for s in self.stages],
            "analysis": dict(self.analysis),
        }

    def spec_hash(self) -> str:
        return content_hash({"name": self.name, **self.hashed_dict()})

    # --- sizes ---
    def size(self, *, samples_per_dataset: Mapping[str, int] | None = None, models: int | None = None) -> SpecSize:
        """Planned job counts; stage-2 counts use ceil(fraction * n) per dataset.

        ``samples_per_dataset`` (dataset key -> n) replaces the spec's N (``--limit``, or the
        row count of a dataset whose N is "all").
        """
        n_models = models if models is not None else len(self.models)
        counts = {d.key: (samples_per_dataset or {}).get(d.key, d.n or 0) for d in self.datasets}
        stage_sizes = []
        for stage in self.stages:
            n_samples = sum(stage.select.count(n) if stage.select else n for n in counts.values())
            defs = self.stage_conditions(stage.number)
            per_sample = sum(len(self.modes_for(c)) for c in defs) * n_models
            stage_sizes.append(StageSize(stage.number, n_samples, len(defs), n_samples * per_sample,
                                         n_samples * _generation_requests(defs, n_models)))
        return SpecSize(
            samples=sum(counts.values()), conditions=len(self.conditions), models=n_models,
            score_jobs=sum(s.score_jobs for s in stage_sizes),
            generate_jobs=sum(s.generate_jobs for s in stage_sizes), stages=tuple(stage_sizes),
        )


def _generation_requests(defs: tuple[ConditionDefinition, ...], n_models: int) -> int:
    """Distinct (kind, prompt, budget, generator) requests per sample among ``defs``."""
    fixed: set[tuple] = set()
    per_model: set[tuple] = set()
    for c in defs:
        if not c.needs_surrogate:
            continue
        key = (c.params["surrogate"], c.params["prompt"], c.params.get("max_new_tokens"))
        generator = c.params.get("generator", GENERATOR_IS_SCORING_MODEL)
        if generator == GENERATOR_IS_SCORING_MODEL:
            per_model.add(key)
        else:
            fixed.add((*key, str(generator)))
    return len(fixed) + len(per_model) * n_models
