"""The rows that jobs point at: models, conditions, samples, experiments and runs (insert or find).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tracker.conditions import (
    ConditionDefinition,
)
from tracker.datasets import (
    PreparedSample,
)
from tracker.db.bulk import bulk_insert, chunks
from tracker.db.schema import (
    Condition,
    Experiment,
    ExperimentRun,
    ModelRow,
    Sample,
)
from tracker.identity import (
    canonical_json,
)
from tracker.planning.model_identity import ModelIdentity
from tracker.specs import ExperimentSpec

# --- rows that jobs point at -----------------------------------------------------------------

def ensure_models(session: Session, identities: Iterable[ModelIdentity], dry_run: bool) -> dict[tuple, int | None]:
    unique = {m.key: m for m in identities}
    if not dry_run:
        bulk_insert(session, ModelRow, [
            {"name": m.name, "source": m.source, "family": m.family, "revision": m.revision, "dtype": m.dtype,
             "attn_implementation": m.attn_implementation} for m in unique.values()
        ], ("name", "revision", "dtype", "attn_implementation"))
    ids: dict[tuple, int | None] = dict.fromkeys(unique)
    for key in unique:
        name, revision, dtype, attn = key
        ids[key] = session.scalar(select(ModelRow.id).where(
            ModelRow.name == name, ModelRow.revision == revision, ModelRow.dtype == dtype,
            ModelRow.attn_implementation == attn))
    return ids


def ensure_conditions(session: Session, defs: Iterable[ConditionDefinition],
                       dry_run: bool) -> dict[tuple[str, str], int | None]:
    unique = {(d.name, d.definition_hash()): d for d in defs}
    if not dry_run:
        bulk_insert(session, Condition, [
            {"name": d.name, "kind": d.kind, "params": d.stored_params(), "definition_hash": h}
            for (_, h), d in unique.items()
        ], ("name", "definition_hash"))
    ids: dict[tuple[str, str], int | None] = dict.fromkeys(unique)
    for name, h in unique:
        ids[(name, h)] = session.scalar(select(Condition.id).where(Condition.name == name,
                                                                   Condition.definition_hash == h))
    return ids


def ensure_samples(session: Session, prepared: Sequence[PreparedSample], dry_run: bool) -> tuple[list[dict], int]:
    """Sample dicts (with ids; None for rows a dry run would create) and how many are new."""
    by_group: dict[tuple[str, str], list[PreparedSample]] = defaultdict(list)
    for s in prepared:
        by_group[(s.dataset, s.recipe_hash)].append(s)

    def lookup() -> dict[tuple[str, str, str], int]:
        found: dict[tuple[str, str, str], int] = {}
        for (dataset, rhash), group in by_group.items():
            for chunk in chunks([s.source_key for s in group]):
                for key, sid in session.execute(select(Sample.source_key, Sample.id).where(
                        Sample.dataset == dataset, Sample.recipe_hash == rhash, Sample.source_key.in_(chunk))):
                    found[(dataset, key, rhash)] = sid
        return found

    found = lookup()
    missing = [s for s in prepared if (s.dataset, s.source_key, s.recipe_hash) not in found]
    if not dry_run:
        _backfill_meta(session, prepared, found)
    if missing and not dry_run:
        bulk_insert(session, Sample, [
            {"dataset": s.dataset, "split": s.split, "source_key": s.source_key, "recipe_hash": s.recipe_hash,
             "recipe": s.recipe, "doc": s.doc, "query": s.query, "answer": s.answer, "meta": s.meta}
            for s in missing
        ], ("dataset", "source_key", "recipe_hash"))
        found = lookup()
    return [s.as_dict(found.get((s.dataset, s.source_key, s.recipe_hash))) for s in prepared], len(missing)


def _backfill_meta(session: Session, prepared: Sequence[PreparedSample], found: dict[tuple[str, str, str], int]) -> None:
    """Add meta keys newer preparation code derives (e.g. ``unrelated_doc``) to stored samples lacking them.

    Stored values are never changed (they are what was scored); meta is not part of a
    sample's identity, so an old sample gains what newer conditions read from it.
    """
    by_id = {found[(s.dataset, s.source_key, s.recipe_hash)]: s for s in prepared
             if (s.dataset, s.source_key, s.recipe_hash) in found}
    for chunk in chunks(sorted(by_id)):
        for sample_id, meta in session.execute(select(Sample.id, Sample.meta).where(Sample.id.in_(chunk))).all():
            meta = dict(meta or {})
            lacking = {k: v for k, v in by_id[sample_id].meta.items() if k not in meta}
            if lacking:
                session.execute(update(Sample).where(Sample.id == sample_id).values(meta={**meta, **lacking}))


def ensure_run(session: Session, spec: ExperimentSpec, overrides: dict[str, Any], dry_run: bool) -> int | None:
    overrides_key = canonical_json(overrides) if overrides else ""
    spec_hash = spec.spec_hash()
    exp_id = session.scalar(select(Experiment.id).where(Experiment.name == spec.name))
    if exp_id is None:
        if dry_run:
            return None
        bulk_insert(session, Experiment, [{"name": spec.name, "description": spec.description}], ("name",))
        exp_id = session.scalar(select(Experiment.id).where(Experiment.name == spec.name))

    def find() -> int | None:
        return session.scalar(select(ExperimentRun.id).where(
            ExperimentRun.experiment_id == exp_id, ExperimentRun.spec_hash == spec_hash,
            ExperimentRun.overrides_key == overrides_key))

    run_id = find()
    if run_id is None and not dry_run:
        bulk_insert(session, ExperimentRun, [{
            "experiment_id": exp_id, "spec_hash": spec_hash, "overrides_key": overrides_key,
            "overrides": overrides, "spec": spec.to_dict(),
        }], ("experiment_id", "spec_hash", "overrides_key"))
        run_id = find()
    return run_id
