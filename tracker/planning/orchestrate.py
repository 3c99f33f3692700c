"""Turn a spec into exactly the jobs that are missing, reusing every one that exists.

``enqueue(spec, ...)`` loads the spec's samples, makes sure the samples, conditions and
models exist (content-addressed, so nothing stale is ever matched), creates the experiment
run (spec name + spec hash + overrides) and, per stage:

- stage 1: one scoring job per (sample, condition, model, mode), plus one generation job per
  (sample, surrogate kind, prompt, generator) for LLM surrogates; a scoring job that needs a
  surrogate not yet generated is ``blocked`` on its generation job;
- later stages (exp03's hard 40%): one ``select`` job per dataset, blocked on that
  dataset's stage-1 jobs of the selecting condition. A worker runs it
  (:func:`tracker.planning.stages.perform_selection`), which stores the selection and creates the
  stage's jobs then. Until then they are counted as *planned*.

Every job is shared by all runs that need it (membership in ``run_jobs``): a job is
*created* when new, *reused* when it exists (done or pending under another run) and
*skipped* when this run already has it, so enqueueing twice creates nothing the second time.
A dry run computes the same counts and writes nothing.

Nothing here loads model weights: model identity comes from the catalogue and the cost
estimate from text length (about 4 characters per token). Tokenizers are loaded only for
token-length dataset recipes (ed02's padded docs), through the loader the caller passes; their ``tokenizer: scoring`` becomes the
scored model's name here, so such a run scores exactly one model.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tracker.datasets import (
    TOKENIZER_IS_SCORING_MODEL,
    PreparedSample,
    SampleDraw,
    TokenizerLoader,
    draw_samples,
)
from tracker.db import get_engine, run_transaction
from tracker.db.bulk import bulk_insert
from tracker.db.schema import (
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    Selection,
)
from tracker.errors import (
    ConfigError,
    SpecError,
)
from tracker.identity import (
    select_job_key,
)
from tracker.planning.jobs import (
    ScorePlan,
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
from tracker.planning.reports import (
    EnqueueReport,
    JobCounts,
    StageReport,
    scaled_cost,
    total_cost,
)
from tracker.planning.resolve import EnqueueOptions, ResolvedModel, resolve_models
from tracker.planning.rows import (
    ensure_conditions,
    ensure_models,
    ensure_run,
    ensure_samples,
)
from tracker.specs import ExperimentSpec, load_spec

TRANSACTION_ATTEMPTS = 3

SELECT_PRIORITY = 20


# --- enqueue ------------------------------------------------------------------------------

@dataclass
class _Context:
    """Everything resolved for one enqueue: ids of models, conditions and samples."""

    spec: ExperimentSpec
    run_id: int | None
    dry_run: bool
    models: list[ResolvedModel]
    model_ids: dict[tuple, int | None]
    condition_ids: dict[tuple[str, str], int | None]
    samples: dict[str, list[dict]]  # dataset key -> sample dicts
    members: set[int]

    def plans(self, samples: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[ScorePlan]:
        out = []
        for model in self.models:
            for name in names:
                rc = model.condition(name)
                cond_id = self.condition_ids[rc.key]
                gen = None
                if rc.generator is not None:
                    gen = (self.model_ids[rc.generator.key], rc.generator.name)
                for mode in self.spec.modes_for(rc.definition):
                    model_id = self.model_ids[model.for_mode(mode).key]
                    for sample in samples:
                        out.append(plan_score(sample, rc.definition, cond_id, model_id, mode,
                                              model.scorer_version, gen))
        return out


def enqueue(
    spec: ExperimentSpec | str, *, db: str | None = None, engine: Engine | None = None,
    models: Sequence[str] | None = None, limit: int | Mapping[str, int] | None = None, dry_run: bool = False,
    data_dir: str | None = None, device: str | None = None, dtype: str | None = None,
    tokenizers: TokenizerLoader | None = None,
) -> EnqueueReport:
    """Create or extend the experiment run of ``spec``; see the module docstring.

    Everything that can fail (spec, models, datasets) is checked before the first write, and
    the whole enqueue is one transaction. ``tokenizers`` loads the tokenizers that
    token-length dataset recipes count with (the CLI passes ``workers.tokenizers.load_tokenizer``).
    """
    if isinstance(spec, str):
        spec = load_spec(spec)
    caps = dataset_limits(spec, limit)
    options = EnqueueOptions(tuple(models) if models else None, _limit_override(limit), device, dtype, data_dir)
    resolved = resolve_models(spec, options)
    draws: dict[str, SampleDraw] = {
        d.key: draw_samples(d.name, n=d.n, seed=d.seed, split=d.split, recipe=sample_recipe(spec, i, resolved),
                            data_dir=data_dir, limit=caps[d.key], tokenizers=tokenizers, label=d.key)
        for i, d in enumerate(spec.datasets)
    }
    prepared = {key: draw.samples for key, draw in draws.items()}
    engine = engine or get_engine(db)

    def whole_enqueue(session: Session) -> EnqueueReport:
        report = _enqueue_in_session(session, spec, options, resolved, prepared, dry_run)
        _report_draws(report, draws)
        if dry_run:
            session.rollback()
        return report

    # a deadlock with a completing worker voids the transaction: it is run again
    return run_transaction(engine, whole_enqueue, attempts=TRANSACTION_ATTEMPTS)


ALL_DATASETS = "*"


def dataset_limits(spec: ExperimentSpec, limit: int | Mapping[str, int] | None) -> dict[str, int | None]:
    """The cap on each dataset of ``spec`` (by key): ``limit`` is one cap for all, or a mapping of
    dataset keys (or names) to caps, ``"*"`` for the rest (``--limit squad_v2=50 --limit 10``)."""
    if limit is None or isinstance(limit, int):
        caps = {ALL_DATASETS: limit}
    else:
        caps = dict(limit)
    for name, cap in caps.items():
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"--limit must be at least 1, got {cap}" + ("" if name == ALL_DATASETS else f" for {name}"))
    known = {d.key for d in spec.datasets} | {d.name for d in spec.datasets}
    unknown = sorted(set(caps) - known - {ALL_DATASETS})
    if unknown:
        raise ConfigError(f"--limit names {', '.join(unknown)}, which {spec.name} does not use.",
                          hint=f"its datasets: {', '.join(d.key for d in spec.datasets)}")
    return {d.key: caps.get(d.key, caps.get(d.name, caps.get(ALL_DATASETS))) for d in spec.datasets}


def _limit_override(limit: int | Mapping[str, int] | None) -> int | dict[str, int] | None:
    """The limit as the run's identity records it: a plain cap, or a sorted mapping."""
    if limit is None or isinstance(limit, int):
        return limit
    caps = dict(limit)
    if set(caps) == {ALL_DATASETS}:
        return caps[ALL_DATASETS]
    return dict(sorted(caps.items()))


def _report_draws(report: EnqueueReport, draws: Mapping[str, SampleDraw]) -> None:
    """Per dataset: rows read, usable, skipped by its filters, taken; and the cap warnings."""
    report.datasets = [{"dataset": key, "rows": d.rows, "usable": d.usable, "skipped": d.skipped,
                        "taken": len(d.samples)} for key, d in draws.items()]
    report.warnings[:0] = [d.warning for d in draws.values() if d.warning]


def sample_recipe(spec: ExperimentSpec, index: int, models: Sequence[ResolvedModel]) -> dict[str, Any]:
    """The recipe of ``spec.datasets[index]`` with ``tokenizer: scoring`` resolved to the scored model."""
    recipe = dict(spec.datasets[index].recipe)
    if recipe.get("tokenizer") != TOKENIZER_IS_SCORING_MODEL:
        return recipe
    if len(models) != 1:
        raise SpecError(
            f"spec field `datasets[{index}].recipe.tokenizer`: `scoring` pads docs to token lengths under the scored "
            f"model's tokenizer, so a run scores one model, got {len(models)}",
            hint="enqueue once per model with --model NAME, or name the tokenizer's model in the recipe",
        )
    recipe["tokenizer"] = models[0].identity.name
    return recipe


def _enqueue_in_session(session: Session, spec: ExperimentSpec, options: EnqueueOptions,
                        resolved: list[ResolvedModel], prepared: dict[str, list[PreparedSample]],
                        dry_run: bool) -> EnqueueReport:
    identities = [m.for_mode(mode) for m in resolved for c in spec.conditions for mode in spec.modes_for(c)]
    identities += [rc.generator for m in resolved for rc in m.conditions if rc.generator is not None]
    model_ids = ensure_models(session, identities, dry_run)
    condition_ids = ensure_conditions(session, [rc.definition for m in resolved for rc in m.conditions], dry_run)
    samples: dict[str, list[dict]] = {}
    created_samples = 0
    for key, rows in prepared.items():
        samples[key], created = ensure_samples(session, rows, dry_run)
        created_samples += created
    run_id = ensure_run(session, spec, options.overrides(spec), dry_run)
    ctx = _Context(spec, run_id, dry_run, resolved, model_ids, condition_ids, samples, run_members(session, run_id))

    names = [f"{m.identity.name} ({m.identity.dtype})" if m.identity.dtype else m.identity.name for m in resolved]
    report = EnqueueReport(spec.name, spec.spec_hash(), run_id, dry_run, names,
                           samples_total=sum(len(v) for v in samples.values()), samples_created=created_samples)
    first = spec.stages[0]
    stage1 = StageReport(first.number, first.name)
    stage1_jobs: dict[str, dict[str, tuple[int, JobStatus]]] = {}
    for d in spec.datasets:
        result = write_score_jobs(session, run_id, first.number, ctx.plans(samples[d.key], first.conditions),
                                  dry_run=dry_run, members=ctx.members)
        _fold(stage1, result, report, d.key)
        stage1_jobs[d.key] = result.score_jobs
    report.stages.append(stage1)
    for stage in spec.stages[1:]:
        sr = StageReport(stage.number, stage.name)
        for d in spec.datasets:
            _later_stage(session, ctx, stage, d, stage1_jobs[d.key], sr, report)
        report.stages.append(sr)
    if any(s.blocked_on_failed for s in report.stages):
        report.warnings.append(
            f"{sum(s.blocked_on_failed for s in report.stages)} new jobs wait on generation jobs that failed: "
            f"run `tracker requeue {spec.name} --failed`")
    return report


def _fold(stage: StageReport, result: WriteResult, report: EnqueueReport, dataset: str) -> None:
    stage.score.add(result.score)
    stage.by_dataset.setdefault(dataset, JobCounts()).add(result.score)
    stage.generate.add(result.generate)
    stage.blocked_on_failed += result.blocked_on_failed
    report.cost.add(result.cost)


def _later_stage(session: Session, ctx: _Context, stage: Any, d: Any,
                 first_jobs: dict[str, tuple[int, JobStatus]], sr: StageReport, report: EnqueueReport) -> None:
    """A selecting stage of one dataset: its select job, or (once selected) its jobs."""
    rule = stage.select
    model = ctx.models[0]
    samples = ctx.samples[d.key]
    k = rule.count(len(samples))
    if ctx.run_id is not None:
        selection = session.scalar(select(Selection).where(
            Selection.run_id == ctx.run_id, Selection.stage == stage.number, Selection.dataset == d.key))
        if selection is not None:
            from tracker.planning.stages import selected_samples

            chosen = selected_samples(session, selection.id)
            result = write_score_jobs(session, ctx.run_id, stage.number, ctx.plans(chosen, stage.conditions),
                                      dry_run=ctx.dry_run, members=ctx.members)
            _fold(sr, result, report, d.key)
            sr.selections_done += 1
            return

    all_plans = ctx.plans(samples, stage.conditions)
    sr.planned += k * len(all_plans) // max(len(samples), 1)
    before = sr.planned_new_max
    _planned_upper_bounds(session, all_plans, k, sr, report)
    sr.planned_new_by_dataset[d.key] = sr.planned_new_max - before

    by = model.condition(rule.by)
    by_mode = ctx.spec.modes_for(by.definition)[0]
    by_plans = [p for p in ctx.plans(samples, [rule.by]) if p.mode == by_mode]
    dep_keys = [p.job_key for p in by_plans]
    if ctx.run_id is None or any(k_ is None or k_ not in first_jobs for k_ in dep_keys):
        sr.select.created += 1  # dry run: rows it depends on do not exist yet
        return
    key = select_job_key(ctx.run_id, stage.number, d.key)
    existing = jobs_by_key(session, [key])
    if key in existing:
        sr.select.skipped += 1
        return
    sr.select.created += 1
    if ctx.dry_run:
        return
    deps = [first_jobs[k_] for k_ in dep_keys]
    statuses = lock_jobs(session, [dep_id for dep_id, _ in deps])
    all_done = all(statuses[dep_id] == JobStatus.done for dep_id, _ in deps)
    payload = {
        "run_id": ctx.run_id, "stage": stage.number, "dataset": d.key, "dataset_name": d.name,
        "fraction": rule.fraction, "by": rule.by, "order": rule.order, "per": rule.per,
        "by_condition_id": ctx.condition_ids[by.key], "by_mode": by_mode,
        "model_id": ctx.model_ids[model.identity.key],
        "jobs": _stage_job_specs(ctx, model, stage.conditions),
    }
    bulk_insert(session, Job, [{
        "job_key": key, "kind": JobKind.select, "sample_id": None, "condition_id": None,
        "model_id": ctx.model_ids[model.identity.key], "mode": "", "scorer_version": "", "payload": payload,
        "status": JobStatus.pending if all_done else JobStatus.blocked, "priority": SELECT_PRIORITY,
    }], ("job_key",))
    job_id = jobs_by_key(session, [key])[key][0]
    bulk_insert(session, JobDependency, [{"job_id": job_id, "depends_on_id": dep_id} for dep_id, _ in deps],
                  ("job_id", "depends_on_id"))
    add_members(session, ctx.run_id, stage.number, [job_id])
    ctx.members.add(job_id)


def _stage_job_specs(ctx: _Context, model: ResolvedModel, names: Sequence[str]) -> list[dict[str, Any]]:
    """What the selection needs to create a stage's jobs: ids, modes, versions, generators."""
    specs = []
    for name in names:
        rc = model.condition(name)
        for mode in ctx.spec.modes_for(rc.definition):
            specs.append({
                "condition_id": ctx.condition_ids[rc.key], "condition": name, "mode": mode,
                "model_id": ctx.model_ids[model.for_mode(mode).key], "scorer_version": model.scorer_version,
                "generator_model_id": ctx.model_ids[rc.generator.key] if rc.generator else None,
                "generator": rc.generator.name if rc.generator else None,
            })
    return specs


def _planned_upper_bounds(session: Session, plans: list[ScorePlan], k: int, sr: StageReport,
                          report: EnqueueReport) -> None:
    """At most min(k, missing) new jobs per (condition, mode): the selection picks k samples."""
    existing = jobs_by_key(session, [p.job_key for p in plans if p.job_key])
    gen_existing = jobs_by_key(session, [p.generate_key for p in plans if p.generate_key])
    groups: dict[tuple, list[ScorePlan]] = defaultdict(list)
    for p in plans:
        groups[(p.definition.name, p.mode, p.model_id)].append(p)
    gen_seen: set[tuple] = set()
    missing_samples: dict[tuple, set[str]] = defaultdict(set)
    for p in plans:
        if p.job_key is None or p.job_key not in existing:
            missing_samples[(p.model_id, p.mode)].add(p.sample["source_key"])
    report.planned_cost.score_batched_passes += sum(2 * min(k, len(v)) for v in missing_samples.values())
    for group in groups.values():
        missing = [p for p in group if p.job_key is None or p.job_key not in existing]
        new_max = min(k, len(missing))
        sr.planned_new_max += new_max
        if missing:
            report.planned_cost.add(scaled_cost(total_cost([score_cost(p) for p in missing]), new_max, len(missing)))
        with_gen = [p for p in group if p.surrogate is not None]
        if with_gen:
            ident = (with_gen[0].surrogate.kind, with_gen[0].surrogate.generator_name,
                     with_gen[0].surrogate.max_new_tokens, with_gen[0].definition.params.get("prompt"))
            if ident in gen_seen:
                continue
            gen_seen.add(ident)
            gen_missing = [p for p in with_gen if p.generate_key is None or p.generate_key not in gen_existing]
            gen_max = min(k, len(gen_missing))
            sr.planned_generate_max += gen_max
            if gen_missing:
                report.planned_cost.add(scaled_cost(total_cost([generate_cost(p.surrogate) for p in gen_missing]),
                                                gen_max, len(gen_missing)))
