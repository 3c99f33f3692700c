"""Rows for `tracker sql` tests: one experiment, 2 samples x {bare, oracle}, three of the four jobs scored."""
from __future__ import annotations

from tracker.db import get_engine, session_scope
from tracker.db.schema import (
    Condition,
    Experiment,
    ExperimentRun,
    Job,
    ModelRow,
    RunJob,
    Sample,
    Score,
)


def fixture_rows(url: str) -> None:
    """NLLs: (k0, bare) 1.5, (k0, oracle) 1.25, (k1, bare) 2.0; (k1, oracle) pending."""
    engine = get_engine(url)
    with session_scope(engine) as s:
        exp = Experiment(name="expA", description="")
        s.add(exp)
        s.flush()
        run = ExperimentRun(experiment_id=exp.id, spec_hash="h", overrides_key="", overrides={}, spec={})
        model = ModelRow(name="m1", source="x", family="llama", revision="r", dtype="float32", attn_implementation="sdpa")
        samples = [Sample(dataset="ds", split="", source_key=f"k{i}", recipe_hash="r", recipe={}, doc="d", query="q",
                          answer="a", meta={}) for i in range(2)]
        conds = [Condition(name=n, kind=n, params={}, definition_hash="h") for n in ("bare", "oracle")]
        s.add_all([run, model, *samples, *conds])
        s.flush()
        nll = {("k0", "bare"): 1.5, ("k0", "oracle"): 1.25, ("k1", "bare"): 2.0}
        for sample in samples:
            for cond in conds:
                job = Job(job_key=f"{sample.source_key}-{cond.name}", sample_id=sample.id, condition_id=cond.id,
                          model_id=model.id, mode="two_phase", scorer_version="v1",
                          status="done" if (sample.source_key, cond.name) in nll else "pending")
                s.add(job)
                s.flush()
                s.add(RunJob(run_id=run.id, job_id=job.id, stage=1))
                if (sample.source_key, cond.name) in nll:
                    s.add(Score(job_id=job.id, nll=nll[(sample.source_key, cond.name)], n_tokens=4))
