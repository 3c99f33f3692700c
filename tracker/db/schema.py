"""The ORM schema of the tracker's database.

Identity is content-addressed so that reuse can never hand back a stale score:

- a sample is unique by (dataset, source key, hash of its doc-preparation recipe);
- a condition by (name, hash of its full definition);
- a model by (name, revision, dtype, attention implementation);
- a job by its ``job_key``: a hash of (kind, sample, condition, model, mode, scorer
  version) for scoring jobs, of (kind, sample, surrogate kind, prompt hash, generator) for
  generation jobs. The columns it is made of are stored beside it for queries.

The SQL view ``results`` is the stable interface for users and reports; the migrations
create it (``migrations/versions``), not ``metadata.create_all``.

Row classes are the database's nouns (``ModelRow`` is a row of ``models``; the catalogue's
``CatalogueEntry`` and a worker's ``LoadedModel`` are other things).
"""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT for big tables.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(str, enum.Enum):
    """Job lifecycle. Allowed transitions are written once, in :mod:`tracker.queue`."""

    blocked = "blocked"
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class JobKind(str, enum.Enum):
    score = "score"        # NLL of the answer under one (sample, condition, model, mode)
    generate = "generate"  # an LLM surrogate text for one (sample, kind, generator model)
    select = "select"      # a stage selection (e.g. exp03's hardest 40% by bare NLL)


def _status_enum() -> Enum:
    return Enum(JobStatus, name="job_status", native_enum=False, create_constraint=True, length=16)


def _kind_enum() -> Enum:
    return Enum(JobKind, name="job_kind", native_enum=False, create_constraint=True, length=16)


def _now() -> Any:
    return func.current_timestamp()


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("dataset", "source_key", "recipe_hash", name="uq_samples_identity"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(128))
    split: Mapped[str] = mapped_column(String(64), default="")
    source_key: Mapped[str] = mapped_column(String(256))
    recipe_hash: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)
    doc: Mapped[str] = mapped_column(Text)
    query: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    def as_dict(self) -> dict[str, Any]:
        """The sample as backends and stages see it (the ``ScoreTask.sample`` shape)."""
        return {"id": self.id, "dataset": self.dataset, "source_key": self.source_key, "doc": self.doc,
                "query": self.query, "answer": self.answer, "meta": dict(self.meta or {})}


class Condition(Base):
    __tablename__ = "conditions"
    __table_args__ = (UniqueConstraint("name", "definition_hash", name="uq_conditions_identity"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    definition_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("name", "revision", "dtype", "attn_implementation", name="uq_models_identity"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(512), default="")
    family: Mapped[str] = mapped_column(String(64), default="")
    revision: Mapped[str] = mapped_column(String(128), default="")
    dtype: Mapped[str] = mapped_column(String(32), default="")
    attn_implementation: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class WorkerRow(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64), default="cpu")
    device_name: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | stopped | lost
    model_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    self_check: Mapped[dict[str, Any]] = mapped_column(default=dict)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "model_id", "lease_expires_at"),
        Index("ix_jobs_group", "sample_id", "model_id", "mode"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[JobKind] = mapped_column(_kind_enum(), default=JobKind.score)
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"), nullable=True)
    condition_id: Mapped[int | None] = mapped_column(ForeignKey("conditions.id"), nullable=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    mode: Mapped[str] = mapped_column(String(64), default="")
    scorer_version: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(_status_enum(), default=JobStatus.pending)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"), nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# The claim's scan order over claimable jobs (without it each claim sorts the whole queue:
# ~85 ms vs ~20 ms per claim at 50k jobs on PostgreSQL).
Index(
    "ix_jobs_claim_order", Job.priority.desc(), Job.id,
    postgresql_where=text("status IN ('pending', 'running')"),
    sqlite_where=text("status IN ('pending', 'running')"),
)


class JobDependency(Base):
    """``job_id`` stays blocked until ``depends_on_id`` is done."""

    __tablename__ = "job_dependencies"
    __table_args__ = (Index("ix_job_dependencies_depends_on", "depends_on_id"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)


class Surrogate(Base):
    """An LLM-written prefix text for one sample, made by a generation job."""

    __tablename__ = "surrogates"
    __table_args__ = (
        UniqueConstraint("sample_id", "kind", "prompt_hash", "generator_model_id", name="uq_surrogates_identity"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    kind: Mapped[str] = mapped_column(String(64))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    generator_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    text: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Score(Base):
    """The result of one scoring job: exactly one per job."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    nll: Mapped[float] = mapped_column(Float)
    n_tokens: Mapped[int] = mapped_column(Integer)
    bos_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prefix_ids: Mapped[list[Any] | None] = mapped_column(nullable=True)
    doc_ids: Mapped[list[Any]] = mapped_column(default=list)
    query_ids: Mapped[list[Any]] = mapped_column(default=list)
    answer_ids: Mapped[list[Any]] = mapped_column(default=list)
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    extras: Mapped[dict[str, Any]] = mapped_column(default=dict)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"), nullable=True)
    device: Mapped[str] = mapped_column(String(128), default="")
    dtype: Mapped[str] = mapped_column(String(32), default="")
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class TokenNLL(Base):
    __tablename__ = "token_nlls"

    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer)
    nll: Mapped[float] = mapped_column(Float)


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ExperimentRun(Base):
    """One enqueue of a spec: (spec name, spec hash, overrides such as --limit)."""

    __tablename__ = "experiment_runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "spec_hash", "overrides_key", name="uq_experiment_runs_identity"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    spec_hash: Mapped[str] = mapped_column(String(64))
    overrides_key: Mapped[str] = mapped_column(String(512), default="")
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class RunJob(Base):
    """Membership: which jobs an experiment run needs (a job may serve many runs)."""

    __tablename__ = "run_jobs"
    __table_args__ = (Index("ix_run_jobs_job", "job_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("experiment_runs.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer, default=1)


class Selection(Base):
    """A stored stage selection (e.g. the hardest 40% by bare NLL of one dataset)."""

    __tablename__ = "selections"
    __table_args__ = (UniqueConstraint("run_id", "stage", "dataset", name="uq_selections_identity"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("experiment_runs.id", ondelete="CASCADE"))
    stage: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(128))
    rule: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class SelectionMember(Base):
    __tablename__ = "selection_members"

    selection_id: Mapped[int] = mapped_column(ForeignKey("selections.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id"))
    rank: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class AttentionShare(Base):
    """Attention-probing output: share of an answer token's attention mass on a target."""

    __tablename__ = "attention_shares"

    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 = mean over layers
    softmax: Mapped[str] = mapped_column(String(16), primary_key=True)  # self | cross | merged
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    share: Mapped[float] = mapped_column(Float)


# One row per experiment run x scoring job; nll is NULL until scored.
