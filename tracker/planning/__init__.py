"""Planning: specs resolved against the catalogue become jobs (``enqueue``), and stage
selections create later stages' jobs (``stages``). Modules: ``model_identity``, ``resolve``,
``rows`` (the rows jobs point at), ``jobs`` (job plans and writes), ``reports`` (counts and
costs), ``orchestrate`` (enqueue itself), ``stages``."""
from __future__ import annotations

from tracker.planning.jobs import (
    CHARS_PER_TOKEN,
    GENERATE_PRIORITY,
    ScorePlan,
    SurrogatePlan,
    WriteResult,
    add_members,
    generate_cost,
    jobs_by_key,
    lock_jobs,
    plan_score,
    run_members,
    score_cost,
    write_score_jobs,
)
from tracker.planning.model_identity import (
    ModelIdentity,
    allowed_modes,
    attn_for_mode,
    model_identity,
    scorer_version_for,
    static_revision,
)
from tracker.planning.orchestrate import (
    SELECT_PRIORITY,
    TRANSACTION_ATTEMPTS,
    enqueue,
    sample_recipe,
)
from tracker.planning.reports import (
    CostEstimate,
    EnqueueReport,
    JobCounts,
    StageReport,
    scaled_cost,
    total_cost,
)
from tracker.planning.resolve import (
    EnqueueOptions,
    ResolvedCondition,
    ResolvedModel,
    resolve_models,
)
from tracker.planning.rows import (
    ensure_conditions,
    ensure_models,
    ensure_run,
    ensure_samples,
)
from tracker.planning.stages import (
    SelectionOutcome,
    condition_definition,
    perform_selection,
    rank_hardest,
    selected_samples,
)

__all__ = [
    "ModelIdentity",
    "allowed_modes",
    "attn_for_mode",
    "model_identity",
    "scorer_version_for",
    "static_revision",
    "CostEstimate",
    "EnqueueReport",
    "JobCounts",
    "StageReport",
    "scaled_cost",
    "total_cost",
    "CHARS_PER_TOKEN",
    "GENERATE_PRIORITY",
    "ScorePlan",
    "SurrogatePlan",
    "WriteResult",
    "add_members",
    "generate_cost",
    "jobs_by_key",
    "lock_jobs",
    "plan_score",
    "run_members",
    "score_cost",
    "write_score_jobs",
    "EnqueueOptions",
    "ResolvedCondition",
    "ResolvedModel",
    "resolve_models",
    "ensure_conditions",
    "ensure_models",
    "ensure_run",
    "ensure_samples",
    "SELECT_PRIORITY",
    "TRANSACTION_ATTEMPTS",
    "enqueue",
    "sample_recipe",
    "SelectionOutcome",
    "condition_definition",
    "perform_selection",
    "rank_hardest",
    "selected_samples",
]
