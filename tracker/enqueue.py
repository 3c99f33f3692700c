"""Turn a spec into exactly the jobs that are missing, reusing every one that exists.

``enqueue(spec, ...)`` loads the spec's samples, makes sure the samples, conditions and
models exist (content-addressed, so nothing stale is ever matched), creates the experiment
run (spec name + spec hash + overrides) and, per stage:

- stage 1: one scoring job per (sample, condition, model, mode), plus one generation job per
  (sample, surrogate kind, prompt, generator) for LLM surrogates; a scoring job that needs a
  surrogate not yet generated is ``blocked`` on its generation job;
- later stages (exp03's hard 40%): one ``select`` job per dataset, blocked on that
  dataset's stage-1 jobs of the selecting condition. A worker runs it
  (:func:`tracker.stages.perform_selection`), which stores the selection and creates the
  stage's jobs then. Until then they are counted as *planned*.

Every job is shared by all runs that need it (membership in ``run_jobs``): a job is
*created* when new, *reused* when it exists (done or pending under another run) and
*skipped* when this run already has it, so enqueueing twice creates nothing the second time.
A dry run computes the same counts and writes nothing.

Nothing here loads model weights: model identity comes from the registry and the cost
estimate from text length (about 4 characters per token). Tokenizers are loaded only for
token-length dataset recipes (ed02's padded docs), whose ``tokenizer: scoring`` becomes the
scored model's name here, so such a run scores exactly one model.
"""
from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from tracker.conditions import (
    CONDITION_KINDS,
    GENERATOR_IS_SCORING_MODEL,
    ConditionDefinition,
    estimate_prefix_chars,
    surrogate_request,
)
from tracker.datasets import TOKENIZER_IS_SCORING_MODEL, PreparedSample, load_samples
from tracker.db import get_engine, session_scope
from tracker.errors import ConfigError, DatabaseError, SpecError, UnknownModelError
from tracker.identity import canonical_json, generate_job_key, score_job_key, select_job_key
from tracker.models import (
    Condition,
    Experiment,
    ExperimentRun,
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    Model,
    RunJob,
    Sample,
    Selection,
)
from tracker.specs import ExperimentSpec, load_spec

CHARS_PER_TOKEN = 4
CHUNK = 500
GENERATE_PRIORITY = 10  # generations first: they unblock scoring jobs
SELECT_PRIORITY = 20
FALLBACK_SCORER_VERSION = "dec-2pass-1"  # until workers.scoring is importable
TRANSACTION_ATTEMPTS = 3
TRANSIENT_ERRORS = ("deadlock detected", "could not serialize")


# --- model identity ----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelIdentity:
    """What makes a model row: (name, revision, dtype, attention implementation)."""

    name: str
    source: str
    family: str
    revision: str
    dtype: str
    attn_implementation: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.name, self.revision, self.dtype, self.attn_implementation)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation}


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def static_revision(spec: Any) -> str:
    """The revision a worker will record for this model, known without loading it.

    Hub models are unpinned ("") unless the spec pins a revision; local folders, the tiny
    models and the embedded model have content fingerprints.
    """
    if spec.source == "tiny":
        from workers.tiny import TINY_SEED

        return f"tiny-seed{TINY_SEED}"
    if spec.source == "embedded":
        from workers.embedded import gguf_path

        return f"gguf-sha256:{_file_sha256(str(gguf_path()))[:16]}"
    if spec.source == "local":
        from workers.registry import _folder_revision

        return _folder_revision(spec.location)
    if spec.source == "fake":
        return "fake"
    return ""


def model_identity(name: str, *, device: str, dtype: str | None = None, revision: str | None = None,
                   attn_implementation: str | None = None) -> ModelIdentity:
    """Identity of a registered model (or local folder) on ``device``; no weights are loaded."""
    from workers.registry import resolve_dtype, resolve_model

    spec = resolve_model(name)  # UnknownModelError lists the known names
    if spec.family == "fake":
        torch_dtype = dtype or "float32"
    else:
        torch_dtype = str(resolve_dtype(device, dtype)).removeprefix("torch.")
    attn = attn_implementation or ("" if spec.family == "fake" else "sdpa")
    return ModelIdentity(spec.name, spec.source, spec.family,
                         revision if revision is not None else static_revision(spec), str(torch_dtype), attn)


def allowed_modes(name: str) -> tuple[str, ...]:
    from workers.registry import resolve_model

    return tuple(resolve_model(name).modes)


def scorer_version_for(family: str) -> str:
    """The scorer version string a worker of this model family stamps on its scores."""
    try:
        if family == "encdec":
            from workers.scoring.encdec import ENCDEC_SCORER_VERSION

            return ENCDEC_SCORER_VERSION
        if family == "fake":
            from workers.backends.fake import FAKE_SCORER_VERSION

            return FAKE_SCORER_VERSION
        from workers.scoring import SCORER_VERSION

        return SCORER_VERSION
    except ImportError:  # TODO: drop once the scoring package is always importable
        return FALLBACK_SCORER_VERSION


def _attn_for_mode(mode: str, base: ModelIdentity) -> str:
    """Probing modes read attention weights, which sdpa does not return: eager attention."""
    if base.family != "fake" and mode.endswith("_probe"):
        return "eager"
    return base.attn_implementation


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

    def stage(self, number: int) -> StageReport:
        return next(s for s in self.stages if s.stage == number)

    @property
    def created(self) -> int:
        return sum(s.score.created for s in self.stages)


# --- database helpers ------------------------------------------------------------------

def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def insert_ignore(session: Session, model: type, rows: list[dict[str, Any]], conflict: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, in chunks (concurrent enqueues cannot collide)."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    for chunk in _chunks(rows):
        session.execute(insert(model).on_conflict_do_nothing(index_elements=list(conflict)), list(chunk))


def jobs_by_key(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, JobStatus]]:
    keys = sorted(set(keys))
    found: dict[str, tuple[int, JobStatus]] = {}
    for chunk in _chunks(keys):
        for key, job_id, status in session.execute(
            select(Job.job_key, Job.id, Job.status).where(Job.job_key.in_(chunk))
        ):
            found[key] = (job_id, JobStatus(status))
    return found


def run_members(session: Session, run_id: int | None) -> set[int]:
    if run_id is None:
        return set()
    return set(session.scalars(select(RunJob.job_id).where(RunJob.run_id == run_id)))


def add_members(session: Session, run_id: int, stage: int, job_ids: Iterable[int]) -> None:
    rows = [{"run_id": run_id, "job_id": j, "stage": stage} for j in sorted(set(job_ids))]
    insert_ignore(session, RunJob, rows, ("run_id", "job_id"))


def lock_jobs(session: Session, job_ids: Iterable[int]) -> dict[int, JobStatus]:
    """Current status of ``job_ids``, rows locked until commit (PostgreSQL; SQLite has one writer).

    New dependants are added under this lock, so a dependency that completes concurrently
    cannot release its dependants before ours exist and leave them blocked for good.
    """
    ids = sorted(set(job_ids))
    found: dict[int, JobStatus] = {}
    for chunk in _chunks(ids):
        rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(chunk)).order_by(Job.id).with_for_update())
        found.update({job_id: JobStatus(status) for job_id, status in rows})
    return found


# --- job planning (shared with tracker.stages) -----------------------------------------------

@dataclass(frozen=True)
class SurrogatePlan:
    """The generation request behind a scoring job (generator id None: not created yet)."""

    kind: str
    prompt: str
    prompt_hash: str
    max_new_tokens: int
    generator_model_id: int | None
    generator_name: str


@dataclass(frozen=True)
class ScorePlan:
    """One scoring job to make sure of; ids are None for rows a dry run would create."""

    sample: Mapping[str, Any]          # the sample dict (id may be None)
    definition: ConditionDefinition
    condition_id: int | None
    model_id: int | None
    mode: str
    scorer_version: str
    surrogate: SurrogatePlan | None = None

    @property
    def sample_id(self) -> int | None:
        return self.sample.get("id")

    @functools.cached_property
    def job_key(self) -> str | None:
        if self.sample_id is None or self.condition_id is None or self.model_id is None:
            return None
        return score_job_key(self.sample_id, self.condition_id, self.model_id, self.mode, self.scorer_version)

    @functools.cached_property
    def generate_key(self) -> str | None:
        s = self.surrogate
        if s is None or s.generator_model_id is None or self.sample_id is None:
            return None
        return generate_job_key(self.sample_id, s.kind, s.prompt_hash, s.generator_model_id)


def plan_score(sample: Mapping[str, Any], definition: ConditionDefinition, condition_id: int | None,
               model_id: int | None, mode: str, scorer_version: str,
               generator: tuple[int | None, str] | None = None) -> ScorePlan:
    """The scoring job of (sample, condition, model, mode), with its surrogate request if any.

    ``generator`` is (generator model id or None, generator name) for LLM conditions.
    """
    surrogate = None
    if CONDITION_KINDS[definition.kind].needs_surrogate:
        if generator is None:
            raise ValueError(f"condition {definition.name} needs a generator model")
        req = surrogate_request(definition.params, sample)
        surrogate = SurrogatePlan(req.kind, req.prompt, req.prompt_hash, req.max_new_tokens, generator[0], generator[1])
    return ScorePlan(sample, definition, condition_id, model_id, mode, scorer_version, surrogate)


def _score_cost(plan: ScorePlan) -> CostEstimate:
    s = plan.sample
    chars = len(s["doc"]) + estimate_prefix_chars(plan.definition, s) + len(s["query"]) + len(s["answer"]) + 12
    return CostEstimate(score_tokens=chars // CHARS_PER_TOKEN, score_forward_passes=2)


def _generate_cost(s: SurrogatePlan) -> CostEstimate:
    chat_overhead = 40  # system prompt and role markers of a chat template, roughly
    return CostEstimate(generate_tokens=len(s.prompt) // CHARS_PER_TOKEN + chat_overhead + s.max_new_tokens,
                        generate_forward_passes=1 + s.max_new_tokens)


@dataclass
class WriteResult:
    score: JobCounts = field(default_factory=JobCounts)
    generate: JobCounts = field(default_factory=JobCounts)
    cost: CostEstimate = field(default_factory=CostEstimate)
    score_jobs: dict[str, tuple[int, JobStatus]] = field(default_factory=dict)  # key -> (id, status)
    blocked_on_failed: int = 0


def _gen_identity(p: ScorePlan) -> tuple:
    s = p.surrogate
    return (p.sample["dataset"], p.sample["source_key"], s.kind, s.prompt_hash, s.generator_name)


def write_score_jobs(session: Session, run_id: int | None, stage: int, plans: Sequence[ScorePlan],
                     *, dry_run: bool, members: set[int] | None = None) -> WriteResult:
    """Make sure every planned scoring job (and its generation job) exists and is in the run.

    New scoring jobs that need a surrogate not yet generated are blocked on the generation
    job; all others start pending. With ``dry_run`` nothing is written and the counts say
    what would happen. Never commits.
    """
    result = WriteResult()
    members = run_members(session, run_id) if members is None else members

    # generation jobs: keyed when sample and generator rows exist, else certainly new
    gen_plans: dict[str, ScorePlan] = {}
    unknown_gens: dict[tuple, ScorePlan] = {}
    for p in plans:
        if p.surrogate is not None:
            key = p.generate_key
            if key is None:
                unknown_gens.setdefault(_gen_identity(p), p)
            else:
                gen_plans.setdefault(key, p)
    gen_existing = jobs_by_key(session, gen_plans)
    new_gens = [k for k in gen_plans if k not in gen_existing]
    for key, (job_id, _) in gen_existing.items():
        if job_id in members:
            result.generate.skipped += 1
        else:
            result.generate.reused += 1
    result.generate.created = len(new_gens) + len(unknown_gens)
    for p in [gen_plans[k] for k in new_gens] + list(unknown_gens.values()):
        result.cost.add(_generate_cost(p.surrogate))
    if not dry_run and new_gens:
        insert_ignore(session, Job, [_generate_row(key, gen_plans[key]) for key in new_gens], ("job_key",))
        gen_existing.update(jobs_by_key(session, new_gens))

    # scoring jobs
    keyed: dict[str, ScorePlan] = {}
    for p in plans:
        key = p.job_key
        if key is None:
            result.score.created += 1
            result.cost.add(_score_cost(p))
        else:
            keyed.setdefault(key, p)
    score_existing = jobs_by_key(session, keyed)
    new_scores = {k: p for k, p in keyed.items() if k not in score_existing}
    for key, (job_id, _) in score_existing.items():
        if job_id in members:
            result.score.skipped += 1
        else:
            result.score.reused += 1
    result.score.created += len(new_scores)
    new_plans = list(new_scores.values()) + [p for p in plans if p.job_key is None]
    for p in new_scores.values():
        result.cost.add(_score_cost(p))
    groups = {(p.sample["dataset"], p.sample["source_key"], p.model_id, p.mode) for p in new_plans}
    result.cost.score_batched_passes = 2 * len(groups)

    if not dry_run and new_scores:
        # Lock the generation jobs first: one finishing now either did so before (we see it
        # done) or waits for our commit and then sees, and releases, the dependants we add.
        gen_status = lock_jobs(session, [gen_existing[p.generate_key][0] for p in new_scores.values() if p.surrogate])
        rows, deps = [], []
        for key, p in new_scores.items():
            status = JobStatus.pending
            if p.surrogate is not None:
                gen_id = gen_existing[p.generate_key][0]
                if gen_status[gen_id] != JobStatus.done:
                    status = JobStatus.blocked
                    deps.append((key, gen_id))
                    result.blocked_on_failed += gen_status[gen_id] == JobStatus.failed
            rows.append(_score_row(key, p, status))
        insert_ignore(session, Job, rows, ("job_key",))
        score_existing.update(jobs_by_key(session, new_scores))
        insert_ignore(session, JobDependency,
                      [{"job_id": score_existing[key][0], "depends_on_id": gen_id} for key, gen_id in deps],
                      ("job_id", "depends_on_id"))

    result.score_jobs = dict(score_existing)
    if not dry_run and run_id is not None:
        ids = [v[0] for v in score_existing.values()] + [v[0] for v in gen_existing.values()]
        add_members(session, run_id, stage, [i for i in ids if i not in members])
        members.update(ids)
    return result


def _generate_row(key: str, p: ScorePlan) -> dict[str, Any]:
    s = p.surrogate
    return {
        "job_key": key, "kind": JobKind.generate, "sample_id": p.sample_id, "condition_id": None,
        "model_id": s.generator_model_id, "mode": "", "scorer_version": "",
        "payload": {"kind": s.kind, "prompt": s.prompt, "prompt_hash": s.prompt_hash,
                    "max_new_tokens": s.max_new_tokens},
        "status": JobStatus.pending, "priority": GENERATE_PRIORITY,
    }


def _score_row(key: str, p: ScorePlan, status: JobStatus) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if p.surrogate is not None:
        payload["surrogate"] = {"kind": p.surrogate.kind, "prompt_hash": p.surrogate.prompt_hash,
                                "generator_model_id": p.surrogate.generator_model_id}
    return {
        "job_key": key, "kind": JobKind.score, "sample_id": p.sample_id, "condition_id": p.condition_id,
        "model_id": p.model_id, "mode": p.mode, "scorer_version": p.scorer_version, "payload": payload,
        "status": status, "priority": 0,
    }


# --- resolving a spec against the registry -------------------------------------------------

@dataclass(frozen=True)
class ResolvedCondition:
    """A spec condition for one scoring model: the generator is a concrete model now."""

    definition: ConditionDefinition   # params["generator"] holds the generator's identity
    generator: ModelIdentity | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.definition.name, self.definition.definition_hash())


@dataclass(frozen=True)
class ResolvedModel:
    identity: ModelIdentity            # as used by modes without attention probing
    scorer_version: str
    conditions: tuple[ResolvedCondition, ...]

    def for_mode(self, mode: str) -> ModelIdentity:
        attn = _attn_for_mode(mode, self.identity)
        if attn == self.identity.attn_implementation:
            return self.identity
        return ModelIdentity(**{**self.identity.__dict__, "attn_implementation": attn})

    def condition(self, name: str) -> ResolvedCondition:
        return next(c for c in self.conditions if c.definition.name == name)


@dataclass(frozen=True)
class EnqueueOptions:
    models: tuple[str, ...] | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str | None = None
    data_dir: str | None = None

    def overrides(self, spec: ExperimentSpec) -> dict[str, Any]:
        """What differs from the spec itself (part of the run's identity); data_dir is not."""
        out: dict[str, Any] = {}
        if self.models and list(self.models) != [m.name for m in spec.models]:
            out["models"] = list(self.models)
        if self.limit is not None:
            out["limit"] = self.limit
        if self.device and self.device != spec.device:
            out["device"] = self.device
        if self.dtype:
            out["dtype"] = self.dtype
        return out


def _model_names(spec: ExperimentSpec, options: EnqueueOptions) -> list[tuple[str, str | None, str | None]]:
    if options.models:
        return [(name, options.dtype, None) for name in options.models]
    return [(m.name, options.dtype or m.dtype, m.revision) for m in spec.models]


def resolve_models(spec: ExperimentSpec, options: EnqueueOptions) -> list[ResolvedModel]:
    """Scoring models with their conditions' generators resolved; errors name the field."""
    device = options.device or spec.device
    out = []
    for i, (name, dtype, revision) in enumerate(_model_names(spec, options)):
        where = "--model" if options.models else f"models[{i}]"
        try:
            identity = model_identity(name, device=device, dtype=dtype, revision=revision)
            modes = allowed_modes(name)
        except UnknownModelError as err:
            raise (err if options.models else SpecError(f"spec field `{where}`: {err}")) from err
        except ConfigError as err:
            raise SpecError(f"spec field `{where}`: {err}") from err
        for c in spec.conditions:
            for mode in spec.modes_for(c):
                if mode not in modes:
                    raise SpecError(f"spec field `modes`: model {name} ({identity.family}) cannot score mode "
                                    f"{mode!r} (condition {c.name})", hint=f"its modes: {', '.join(modes)}")
        conditions = tuple(_resolve_condition(spec, c, identity, device) for c in spec.conditions)
        out.append(ResolvedModel(identity, scorer_version_for(identity.family), conditions))
    if spec.staged and len(out) != 1:
        raise SpecError("spec field `models`: a staged spec runs one scoring model per run "
                        f"(its selection is per dataset), got {len(out)}",
                        hint="enqueue it once per model with --model NAME")
    return out


def _resolve_condition(spec: ExperimentSpec, c: ConditionDefinition, scoring: ModelIdentity,
                       device: str) -> ResolvedCondition:
    if not c.needs_surrogate:
        return ResolvedCondition(c, None)
    wanted = c.params.get("generator", GENERATOR_IS_SCORING_MODEL)
    if wanted == GENERATOR_IS_SCORING_MODEL:
        generator = scoring
    else:
        index = [x.name for x in spec.conditions].index(c.name)
        try:
            generator = model_identity(wanted, device=device)
        except UnknownModelError as err:
            raise SpecError(f"spec field `conditions[{index}].params.generator`: {err}") from err
    params = {**c.params, "generator": generator.as_dict()}
    return ResolvedCondition(ConditionDefinition(c.name, c.kind, params, c.mode), generator)


# --- rows that jobs point at -----------------------------------------------------------------

def _ensure_models(session: Session, identities: Iterable[ModelIdentity], dry_run: bool) -> dict[tuple, int | None]:
    unique = {m.key: m for m in identities}
    if not dry_run:
        insert_ignore(session, Model, [
            {"name": m.name, "source": m.source, "family": m.family, "revision": m.revision, "dtype": m.dtype,
             "attn_implementation": m.attn_implementation} for m in unique.values()
        ], ("name", "revision", "dtype", "attn_implementation"))
    ids: dict[tuple, int | None] = dict.fromkeys(unique)
    for key in unique:
        name, revision, dtype, attn = key
        ids[key] = session.scalar(select(Model.id).where(
            Model.name == name, Model.revision == revision, Model.dtype == dtype,
            Model.attn_implementation == attn))
    return ids


def _ensure_conditions(session: Session, defs: Iterable[ConditionDefinition],
                       dry_run: bool) -> dict[tuple[str, str], int | None]:
    unique = {(d.name, d.definition_hash()): d for d in defs}
    if not dry_run:
        insert_ignore(session, Condition, [
            {"name": d.name, "kind": d.kind, "params": d.stored_params(), "definition_hash": h}
            for (_, h), d in unique.items()
        ], ("name", "definition_hash"))
    ids: dict[tuple[str, str], int | None] = dict.fromkeys(unique)
    for name, h in unique:
        ids[(name, h)] = session.scalar(select(Condition.id).where(Condition.name == name,
                                                                   Condition.definition_hash == h))
    return ids


def _ensure_samples(session: Session, prepared: Sequence[PreparedSample], dry_run: bool) -> tuple[list[dict], int]:
    """Sample dicts (with ids; None for rows a dry run would create) and how many are new."""
    by_group: dict[tuple[str, str], list[PreparedSample]] = defaultdict(list)
    for s in prepared:
        by_group[(s.dataset, s.recipe_hash)].append(s)

    def lookup() -> dict[tuple[str, str, str], int]:
        found: dict[tuple[str, str, str], int] = {}
        for (dataset, rhash), group in by_group.items():
            for chunk in _chunks([s.source_key for s in group]):
                for key, sid in session.execute(select(Sample.source_key, Sample.id).where(
                        Sample.dataset == dataset, Sample.recipe_hash == rhash, Sample.source_key.in_(chunk))):
                    found[(dataset, key, rhash)] = sid
        return found

    found = lookup()
    missing = [s for s in prepared if (s.dataset, s.source_key, s.recipe_hash) not in found]
    if not dry_run:
        _backfill_meta(session, prepared, found)
    if missing and not dry_run:
        insert_ignore(session, Sample, [
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
    for chunk in _chunks(sorted(by_id)):
        for sample_id, meta in session.execute(select(Sample.id, Sample.meta).where(Sample.id.in_(chunk))).all():
            meta = dict(meta or {})
            lacking = {k: v for k, v in by_id[sample_id].meta.items() if k not in meta}
            if lacking:
                session.execute(update(Sample).where(Sample.id == sample_id).values(meta={**meta, **lacking}))


def _ensure_run(session: Session, spec: ExperimentSpec, overrides: dict[str, Any], dry_run: bool) -> int | None:
    overrides_key = canonical_json(overrides) if overrides else ""
    spec_hash = spec.spec_hash()
    exp_id = session.scalar(select(Experiment.id).where(Experiment.name == spec.name))
    if exp_id is None:
        if dry_run:
            return None
        insert_ignore(session, Experiment, [{"name": spec.name, "description": spec.description}], ("name",))
        exp_id = session.scalar(select(Experiment.id).where(Experiment.name == spec.name))

    def find() -> int | None:
        return session.scalar(select(ExperimentRun.id).where(
            ExperimentRun.experiment_id == exp_id, ExperimentRun.spec_hash == spec_hash,
            ExperimentRun.overrides_key == overrides_key))

    run_id = find()
    if run_id is None and not dry_run:
        insert_ignore(session, ExperimentRun, [{
            "experiment_id": exp_id, "spec_hash": spec_hash, "overrides_key": overrides_key,
            "overrides": overrides, "spec": spec.to_dict(),
        }], ("experiment_id", "spec_hash", "overrides_key"))
        run_id = find()
    return run_id


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
    models: Sequence[str] | None = None, limit: int | None = None, dry_run: bool = False,
    data_dir: str | None = None, device: str | None = None, dtype: str | None = None,
) -> EnqueueReport:
    """Create or extend the experiment run of ``spec``; see the module docstring.

    Everything that can fail (spec, models, datasets) is checked before the first write, and
    the whole enqueue is one transaction.
    """
    if isinstance(spec, str):
        spec = load_spec(spec)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    options = EnqueueOptions(tuple(models) if models else None, limit, device, dtype, data_dir)
    resolved = resolve_models(spec, options)
    prepared = {
        d.key: load_samples(d.name, n=d.n, seed=d.seed, split=d.split, recipe=sample_recipe(spec, i, resolved),
                            data_dir=data_dir, limit=limit)
        for i, d in enumerate(spec.datasets)
    }
    engine = engine or get_engine(db)
    for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
        try:
            with session_scope(engine) as session:
                report = _enqueue_in_session(session, spec, options, resolved, prepared, dry_run)
                if dry_run:
                    session.rollback()
            return report
        except DatabaseError as err:  # a deadlock with a completing worker: the transaction is void, redo it
            if attempt == TRANSACTION_ATTEMPTS or not any(t in str(err).lower() for t in TRANSIENT_ERRORS):
                raise
    raise AssertionError("unreachable")


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
    model_ids = _ensure_models(session, identities, dry_run)
    condition_ids = _ensure_conditions(session, [rc.definition for m in resolved for rc in m.conditions], dry_run)
    samples: dict[str, list[dict]] = {}
    created_samples = 0
    for key, rows in prepared.items():
        samples[key], created = _ensure_samples(session, rows, dry_run)
        created_samples += created
    run_id = _ensure_run(session, spec, options.overrides(spec), dry_run)
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
            from tracker.stages import selected_samples

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
    insert_ignore(session, Job, [{
        "job_key": key, "kind": JobKind.select, "sample_id": None, "condition_id": None,
        "model_id": ctx.model_ids[model.identity.key], "mode": "", "scorer_version": "", "payload": payload,
        "status": JobStatus.pending if all_done else JobStatus.blocked, "priority": SELECT_PRIORITY,
    }], ("job_key",))
    job_id = jobs_by_key(session, [key])[key][0]
    insert_ignore(session, JobDependency, [{"job_id": job_id, "depends_on_id": dep_id} for dep_id, _ in deps],
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
            report.planned_cost.add(_scaled(_total_cost([_score_cost(p) for p in missing]), new_max, len(missing)))
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
                report.planned_cost.add(_scaled(_total_cost([_generate_cost(p.surrogate) for p in gen_missing]),
                                                gen_max, len(gen_missing)))


def _total_cost(costs: list[CostEstimate]) -> CostEstimate:
    total = CostEstimate()
    for c in costs:
        total.add(c)
    return total


def _scaled(cost: CostEstimate, num: int, den: int = 1) -> CostEstimate:
    return CostEstimate(**{k: getattr(cost, k) * num // max(den, 1) for k in cost.__dataclass_fields__})
