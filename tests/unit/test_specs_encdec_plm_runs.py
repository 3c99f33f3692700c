"""Every encoder-decoder and prefix-LM spec, enqueued on a tiny model of its family and drained by a worker.

Each spec runs as shipped (conditions, modes, analysis plan) with ``--model`` / ``--limit``
overrides and the small loader fixtures; a run must finish with exactly ``limit`` scores
per (model, mode, condition) and nothing failed. ed02 (docs padded to 4096 tokens) runs in
``test_tracks_ed02.py``.
"""
from __future__ import annotations

import pytest
from helpers.dataset_fixtures import FIXTURES, drain
from sqlalchemy import text

from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

LIMIT = 2
# spec -> tiny models of its family (ed09 runs two families at once, as the spec runs four models)
RUNS = {
    "ed01": ["tiny-random-t5gemma"],
    "ed03": ["tiny-random-bart"],
    "ed04": ["tiny-random-t5"],
    "ed05": ["tiny-random-bart"],
    "ed06": ["tiny-random-t5"],
    "ed07": ["tiny-random-t5"],
    "ed08": ["tiny-random-bart"],
    "ed09": ["tiny-random-t5", "tiny-random-bart"],
    "ed10": ["tiny-random-t5"],
    "plm01": ["tiny-random-llama"],
    "plm02": ["tiny-random-gemma3"],
    "plm03": ["tiny-random-llama"],
}



@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    clear_cache()
    yield
    clear_cache()


def scores_per_cell(url: str, experiment: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(model, mode, condition) -> (jobs, scored) of the experiment's latest run."""
    sql = text("""
        SELECT model, mode, condition, COUNT(*), COUNT(nll) FROM results
        WHERE experiment = :e AND run_id = (SELECT max(run_id) FROM results WHERE experiment = :e)
        GROUP BY model, mode, condition
    """)
    with get_engine(url).connect() as conn:
        return {(m, mode, c): (int(n), int(k)) for m, mode, c, n, k in conn.execute(sql, {"e": experiment})}


def expected_cells(name: str, models: list[str]) -> set[tuple[str, str, str]]:
    spec = load_spec(name)
    return {(m, mode, c.name) for m in models for c in spec.conditions for mode in spec.modes_for(c)}


def run_spec(url: str, name: str, models: list[str]) -> None:
    report = enqueue(name, db=url, models=models, limit=LIMIT, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    spec = load_spec(name)
    assert report.stage(1).score.total == LIMIT * len(models) * sum(len(spec.modes_for(c)) for c in spec.conditions)
    drain(url, model=None)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_spec_runs_to_completion_on_a_tiny_model_of_its_family(sqlite_url, name):
    models = RUNS[name]
    run_spec(sqlite_url, name, models)
    cells = scores_per_cell(sqlite_url, name)
    assert set(cells) == expected_cells(name, models)
    assert all(counts == (LIMIT, LIMIT) for counts in cells.values()), cells
    with get_engine(sqlite_url).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM jobs WHERE status != 'done'")).scalar() == 0


def test_ed06_reuses_every_ed01_job_and_ed08_adds_only_the_random_query_cells(sqlite_url):
    run_spec(sqlite_url, "ed01", ["tiny-random-t5"])
    ed06 = enqueue("ed06", db=sqlite_url, models=["tiny-random-t5"], limit=LIMIT, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    assert (ed06.stage(1).score.created, ed06.stage(1).score.reused) == (0, LIMIT * 5)
    run_spec(sqlite_url, "ed07", ["tiny-random-t5"])
    ed08 = enqueue("ed08", db=sqlite_url, models=["tiny-random-t5"], limit=LIMIT, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    assert (ed08.stage(1).score.created, ed08.stage(1).score.reused) == (LIMIT * 2, LIMIT * 2 * 2)
    with get_engine(sqlite_url).connect() as conn:
        new = conn.execute(text("SELECT DISTINCT mode FROM jobs WHERE status = 'pending'")).scalars().all()
    assert new == ["encdec_rq_probe"]
