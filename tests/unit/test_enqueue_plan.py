"""Enqueue: exact job counts, reuse between experiments, idempotence, dry runs, negative reuse.

Full-size counts (N=400) use synthetic hub-shaped datasets written per test; nothing here
loads a model.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers.dataset_fixtures import table_counts, tiny_tokenizer
from helpers.synth import write_synthetic_data_dir
from sqlalchemy import func, select

from tracker.cli import cli  # noqa: E402
from tracker.conditions import build_prefix_ids  # noqa: E402
from tracker.datasets import clear_cache, load_samples  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import (  # noqa: E402
    Condition,
    ExperimentRun,
    Job,
    JobDependency,
    JobKind,
    JobStatus,
    ModelRow,
    RunJob,
    Sample,
)
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec, parse_spec  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

FAKE = ["test-fake"]
LLM = ["llm_extract", "llm_question", "llm_summarize", "paraphrase", "same_topic"]


@pytest.fixture(scope="module")
def data400(tmp_path_factory) -> str:
    """400 usable rows per dataset (plus rows the loaders must filter out)."""
    return str(write_synthetic_data_dir(tmp_path_factory.mktemp("data400"), 400))


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    clear_cache()
    yield
    clear_cache()


def _count(url: str, *where) -> int:
    with session_scope(get_engine(url)) as s:
        return s.scalar(select(func.count()).select_from(Job).where(*where))


def test_exp02_full_size_dry_run_then_enqueue_then_idempotent(db_url, data400):
    before = table_counts(db_url)
    dry = enqueue("exp02", db=db_url, data_dir=data400, dry_run=True, tokenizers=load_tokenizer)
    assert table_counts(db_url) == before  # the dry run wrote nothing
    st = dry.stage(1)
    assert (st.score.created, st.score.reused, st.score.skipped) == (5_200, 0, 0)
    assert st.generate.created == 2_000 and dry.run_id is None
    assert dry.cost.score_forward_passes == 2 * 5_200 and dry.cost.score_batched_passes == 2 * 400
    assert dry.cost.generate_forward_passes == 2_000 * (1 + 64)

    real = enqueue("exp02", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    st = real.stage(1)
    assert (st.score.created, st.generate.created) == (5_200, 2_000)
    assert real.cost == dry.cost
    assert _count(db_url, Job.kind == JobKind.score) == 5_200
    assert _count(db_url, Job.kind == JobKind.generate) == 2_000
    # LLM-surrogate jobs wait on their generation job; the others can be claimed at once
    assert _count(db_url, Job.kind == JobKind.score, Job.status == JobStatus.blocked) == 2_000
    assert _count(db_url, Job.kind == JobKind.score, Job.status == JobStatus.pending) == 3_200
    with session_scope(get_engine(db_url)) as s:
        assert s.scalar(select(func.count()).select_from(JobDependency)) == 2_000
        assert s.scalar(select(func.count()).select_from(RunJob)) == 7_200
        assert s.scalar(select(func.count()).select_from(Sample)) == 400
        assert s.scalar(select(func.count()).select_from(Condition)) == 13
        blocked = s.scalars(select(Job).where(Job.status == JobStatus.blocked).limit(5)).all()
        for job in blocked:
            dep = s.scalar(select(JobDependency.depends_on_id).where(JobDependency.job_id == job.id))
            gen = s.get(Job, dep)
            assert gen.kind == JobKind.generate and gen.sample_id == job.sample_id
            assert job.payload["surrogate"] == {"kind": gen.payload["kind"], "prompt_hash": gen.payload["prompt_hash"],
                                                "generator_model_id": gen.model_id}
        model = s.scalar(select(ModelRow))
        assert (model.name, model.dtype, model.attn_implementation) == ("google/gemma-3-12b-it", "bfloat16", "sdpa")

    counts = table_counts(db_url)
    again = enqueue("exp02", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    st = again.stage(1)
    assert (st.score.created, st.score.reused, st.score.skipped) == (0, 0, 5_200)
    assert (st.generate.created, st.generate.skipped) == (0, 2_000)
    assert again.run_id == real.run_id
    assert table_counts(db_url) == counts  # nothing new, not even a run


def test_exp03_after_exp02_full_size(db_url, data400):
    enqueue("exp02", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    jobs_before = _count(db_url, Job.kind == JobKind.score)
    dry = enqueue("exp03", db=db_url, data_dir=data400, dry_run=True, tokenizers=load_tokenizer)
    real = enqueue("exp03", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    for report in (dry, real):
        s1, s2 = report.stage(1), report.stage(2)
        assert s1.by_dataset["ms_marco"].created == 0 and s1.by_dataset["ms_marco"].reused == 400
        assert s1.score.created == 3 * 400
        assert s2.planned == 4 * 160 * 12
        assert s2.planned_new_by_dataset == {"ms_marco": 0, "squad_v2": 1_920, "trivia_qa": 1_920, "hotpot_qa": 1_920}
        assert s1.score.created + s2.planned_new_max == 6_960 == 3 * (400 + 160 * 12)
        assert s2.planned_generate_max == 3 * 160 * 5
        assert s2.select.created == 4
    assert _count(db_url, Job.kind == JobKind.score) == jobs_before + 1_200
    selects = _count(db_url, Job.kind == JobKind.select)
    assert selects == 4
    # the selections wait on unfinished stage-1 bare jobs
    assert _count(db_url, Job.kind == JobKind.select, Job.status == JobStatus.blocked) == 4
    with session_scope(get_engine(db_url)) as s:
        job = s.scalar(select(Job).where(Job.kind == JobKind.select, Job.payload["dataset"].as_string() == "squad_v2"))
        deps = s.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job.id)).all()
        assert len(deps) == 400
        assert {c["condition"] for c in job.payload["jobs"]} == set(load_spec("exp03").stages[1].conditions)
    again = enqueue("exp03", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    assert again.stage(1).score.skipped == 1_600 and again.stage(2).select.skipped == 4


def test_exp01_and_demo_exact_counts(db_url, data400):
    exp01 = enqueue("exp01", db=db_url, data_dir=data400, dry_run=True, tokenizers=load_tokenizer)
    assert exp01.stage(1).score.created == 400 * 9 and exp01.stage(1).generate.created == 0
    demo = enqueue("demo", db=db_url, tokenizers=load_tokenizer)
    assert (demo.stage(1).score.created, demo.stage(1).generate.created) == (60 * 9, 60)
    with session_scope(get_engine(db_url)) as s:
        gens = s.scalars(select(Job).where(Job.kind == JobKind.generate)).all()
        assert {g.payload["max_new_tokens"] for g in gens} == {24}
        model = s.get(ModelRow, gens[0].model_id)
        assert (model.name, model.dtype) == ("smollm2-135m", "float32")
        assert model.revision.startswith("gguf-sha256:")
    exp01_full = enqueue("exp01", db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    with session_scope(get_engine(db_url)) as s:
        full_jobs = s.scalars(select(Job.mode).where(Job.kind == JobKind.score,
                                                     Job.condition_id.in_(select(Condition.id).where(
                                                         Condition.name == "oracle_full")))).all()
        assert full_jobs and set(full_jobs) == {"full"}
    assert exp01_full.stage(1).score.created == 3_600


def _spec_file(tmp_path: Path, name: str, change=None, n: int = 6) -> str:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "tracker" / "specs" / "exp02.yaml").read_text())
    spec.update(name="negreuse", models=["test-fake"], device="cpu")
    spec["datasets"] = [{"name": "squad_v2", "n": n}]
    if change:
        change(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _llm(name: str, **params):
    def change(spec):
        spec["conditions"] = [c if c != name else {"name": name, "params": params} for c in spec["conditions"]]
    return change


@pytest.mark.parametrize("change, options, new_scores, new_gens", [
    (_llm("llm_extract", prompt="List the key facts of this passage:\n{doc}"), {}, 3, 3),
    (_llm("paraphrase", max_new_tokens=16), {}, 3, 3),
    (_llm("llm_question", generator="tiny-random-llama"), {}, 3, 3),
    (lambda s: s["conditions"].__setitem__(1, {"name": "random_tokens", "params": {"seed": 7}}), {}, 3, 0),
    (lambda s: s["conditions"].__setitem__(11, {"name": "extractor_matched",
                                                "params": {"text": "Extract every fact."}}), {}, 3, 0),
    (lambda s: s.update(models=[{"name": "test-fake", "revision": "v2"}]), {}, 39, 15),
    (None, {"dtype": "bfloat16"}, 39, 15),
    (lambda s: s["datasets"][0].update(recipe={"doc_max_words": 12}), {}, 39, 15),
])
def test_changed_definitions_make_new_jobs(change, options, new_scores, new_gens, db_url, tmp_path, data400):
    base = enqueue(_spec_file(tmp_path, "base"), db=db_url, data_dir=data400, limit=3, tokenizers=load_tokenizer)
    assert (base.stage(1).score.created, base.stage(1).generate.created) == (39, 15)
    changed = enqueue(_spec_file(tmp_path, "changed", change), db=db_url, data_dir=data400, limit=3, **options, tokenizers=load_tokenizer)
    st = changed.stage(1)
    assert (st.score.created, st.generate.created) == (new_scores, new_gens)
    assert st.score.created + st.score.reused == 39  # the unchanged rest is reused, never duplicated


def test_limit_run_and_full_run_share_jobs_with_identical_prefixes(db_url, tmp_path, data400):
    path = _spec_file(tmp_path, "share", n=8)
    small = enqueue(path, db=db_url, data_dir=data400, limit=3, tokenizers=load_tokenizer)
    full = enqueue(path, db=db_url, data_dir=data400, tokenizers=load_tokenizer)
    assert small.run_id != full.run_id
    assert (full.stage(1).score.reused, full.stage(1).score.created) == (3 * 13, 5 * 13)
    assert (full.stage(1).generate.reused, full.stage(1).generate.created) == (3 * 5, 5 * 5)
    with session_scope(get_engine(db_url)) as s:
        runs = {r.id: set(s.scalars(select(RunJob.job_id).where(RunJob.run_id == r.id)))
                for r in s.scalars(select(ExperimentRun))}
        assert runs[small.run_id] < runs[full.run_id]
        overrides = {r.id: r.overrides for r in s.scalars(select(ExperimentRun))}
        assert overrides[small.run_id] == {"limit": 3} and overrides[full.run_id] == {}
    # the prefix of a shared sample is the same whichever run made it
    spec = load_spec(path)
    limited = load_samples("squad_v2", n=8, seed=42, data_dir=data400, limit=3, tokenizers=load_tokenizer)
    clear_cache()
    whole = load_samples("squad_v2", n=8, seed=42, data_dir=data400, tokenizers=load_tokenizer)
    tok = tiny_tokenizer()
    for a, b in zip(limited, whole[:3]):
        assert a == b
        for c in spec.conditions:
            text = "generated text" if c.needs_surrogate else None
            assert build_prefix_ids(c.as_dict(), a.as_dict(1), tok, surrogate_text=text) == \
                build_prefix_ids(c.as_dict(), b.as_dict(2), tok, surrogate_text=text)


def test_cli_enqueue_prints_counts_and_dry_run_writes_nothing(sqlite_url, data400):
    runner = CliRunner()
    before = table_counts(sqlite_url)
    dry = runner.invoke(cli, ["--db", sqlite_url, "enqueue", "exp03", "--model", "test-fake", "--limit", "10",
                              "--data-dir", data400, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing written" in dry.output
    assert table_counts(sqlite_url) == before
    out = runner.invoke(cli, ["--db", sqlite_url, "enqueue", "exp03", "--model", "test-fake", "--limit", "10",
                              "--data-dir", data400])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    stage1 = next(line for line in lines if line.split()[:2] == ["1", "bare"])
    assert stage1.split()[2:5] == ["40", "0", "0"]
    stage2 = next(line for line in lines if line.split()[:2] == ["2", "hard"])
    assert stage2.split()[-3:] == ["4", "192", "192"]  # 4 datasets x 4 selected x 12
    again = runner.invoke(cli, ["--db", sqlite_url, "enqueue", "exp03", "--model", "test-fake", "--limit", "10",
                                "--data-dir", data400])
    stage1 = next(line for line in again.output.splitlines() if line.split()[:2] == ["1", "bare"])
    assert stage1.split()[2:5] == ["0", "0", "40"]
    assert _count(sqlite_url, Job.kind == JobKind.score) == 40


def test_staged_specs_need_one_model(sqlite_url, data400):
    from tracker.errors import SpecError

    with pytest.raises(SpecError, match="one scoring model"):
        enqueue("exp03", db=sqlite_url, data_dir=data400, models=["test-fake", "tiny-random-llama"], limit=2, tokenizers=load_tokenizer)
    spec = parse_spec({"name": "two", "models": ["test-fake", "tiny-random-llama"], "device": "cpu",
                       "datasets": [{"name": "squad_v2", "n": 2}], "conditions": ["bare", "oracle"]})
    report = enqueue(spec, db=sqlite_url, data_dir=data400, tokenizers=load_tokenizer)
    assert report.stage(1).score.created == 2 * 2 * 2
