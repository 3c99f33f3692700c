"""Comparing two sides of an experiment: two runs with a known shift, scorer versions, models."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare_experiment, compare_figure, compare_sides
from analysis.report import analyze_experiment
from analysis.synthetic import make_run, write_run
from tracker.db import create_tracker_engine
from tracker.errors import ConfigError

FIRST = {"helps": 0.8, "hurts": -0.5, "null": 0.0}
SECOND = {"helps": 1.2, "hurts": 0.5, "null": 0.0}  # same noise draws: deltas shift by 0.3 * (new - old)
SCALE = 0.3


def hand_d(xs) -> float:
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m / math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def second_run(effects, *, scorer_version="1", model="test-fake", n=25, seed=70, drop=(), offset=10_000):
    """A run over the same samples as make_run(seed) with other effects (job and score ids apart)."""
    run = make_run(experiment="cmp", datasets=("alpha", "beta"), n_per_dataset=n, effects=effects, seed=seed,
                   id_offset=offset, scorer_version=scorer_version, model=model)
    run.samples["id"] -= offset
    run.jobs["sample_id"] -= offset
    if drop:
        gone = run.jobs[run.jobs["sample_id"].isin(drop)]["job_id"]
        run.jobs = run.jobs[~run.jobs["job_id"].isin(gone)]
        run.scores = run.scores[~run.scores["job_id"].isin(gone)]
        run.tokens = run.tokens[run.tokens["score_id"].isin(run.scores["score_id"])]
    return run


@pytest.fixture
def engine(sqlite_url):
    eng = create_tracker_engine(sqlite_url)
    yield eng
    eng.dispose()


def wide(run) -> pd.DataFrame:
    return run.results_frame().pivot_table(index="sample_id", columns="condition", values="nll")


def test_two_runs_with_a_known_shift(engine):
    first = make_run(experiment="cmp", datasets=("alpha", "beta"), n_per_dataset=25, effects=FIRST, seed=70)
    write_run(engine, first)
    second = second_run(SECOND, drop=(1, 2, 3))  # three alpha samples only the first run has
    write_run(engine, second)
    result = compare_experiment(engine, "cmp", by="run").set_index(["dataset", "condition"])
    assert result.attrs["a"] == "1" and result.attrs["b"] == "2"
    assert len(result) == 9  # alpha, beta, pooled x 3 conditions
    wa, wb = wide(first), wide(second)
    for (dataset, cond), r in result.iterrows():
        ids = [i for i in wb.index if dataset == "pooled" or (i <= 25) == (dataset == "alpha")]
        da, db = (wa["bare"] - wa[cond]).loc[ids], (wb["bare"] - wb[cond]).loc[ids]
        assert r["n"] == len(ids) == (22 if dataset == "alpha" else 25 if dataset == "beta" else 47)
        assert r["d_a"] == pytest.approx(hand_d(da)) and r["d_b"] == pytest.approx(hand_d(db))
        assert r["d_diff"] == pytest.approx(r["d_b"] - r["d_a"])
        shift = SCALE * (SECOND[cond] - FIRST[cond])
        assert r["mean_delta_b"] - r["mean_delta_a"] == pytest.approx(shift, abs=1e-12)
        assert r["delta_corr"] == pytest.approx(1.0)  # the same noise, shifted
    assert result["sign_flip"].to_dict() == {(ds, c): c == "hurts" for ds, c in result.index}
    hurts = result.loc[("pooled", "hurts")]
    assert hurts["d_a"] < 0 < hurts["d_b"] and hurts["mark_a"] == "***" and hurts["mark_b"] != "ns"


def test_d_equals_tracker_analyze_when_every_sample_is_shared(engine):
    first = make_run(experiment="cmp", datasets=("alpha", "beta"), n_per_dataset=25, effects=FIRST, seed=70)
    write_run(engine, first)
    write_run(engine, second_run(SECOND))
    result = compare_experiment(engine, "cmp", by="run")
    for run_id, column, mark in ((1, "d_a", "mark_a"), (2, "d_b", "mark_b")):
        eff = analyze_experiment(engine, "cmp", {}, run_id=run_id, bootstrap=0).effects
        main = eff[eff["table"] == "main"].set_index(["dataset", "condition"])
        mine = result.set_index(["dataset", "condition"])
        assert mine[column].to_dict() == pytest.approx(main["d"].to_dict())
        assert mine[mark].to_dict() == main["mark"].to_dict()


def test_scorer_versions_and_models_split_one_experiment(engine):
    write_run(engine, make_run(experiment="cmp", datasets=("alpha", "beta"), n_per_dataset=25, effects=FIRST,
                               seed=70, scorer_version="v9"))
    write_run(engine, second_run(SECOND, scorer_version="v10"))
    by_version = compare_experiment(engine, "cmp", by="scorer_version")
    assert (by_version.attrs["a"], by_version.attrs["b"]) == ("v9", "v10")  # natural order: v9 is older
    assert by_version["sign_flip"].sum() == 3  # hurts in alpha, beta, pooled
    with pytest.raises(ConfigError) as err:
        compare_experiment(engine, "cmp", by="model")
    assert "has 1: test-fake" in str(err.value)


def test_a_dtype_split_and_the_choice_of_sides(engine):
    write_run(engine, make_run(experiment="cmp", datasets=("alpha",), n_per_dataset=20, effects=FIRST, seed=71),
              dtype="bfloat16")
    fp32 = make_run(experiment="cmp", datasets=("alpha",), n_per_dataset=20, effects=SECOND, seed=71, id_offset=10_000)
    fp32.samples["id"] -= 10_000
    fp32.jobs["sample_id"] -= 10_000
    write_run(engine, fp32, dtype="float32")
    write_run(engine, second_run(FIRST, n=10, seed=71, offset=20_000), dtype="float16")
    with pytest.raises(ConfigError) as err:
        compare_experiment(engine, "cmp", by="dtype")
    assert "bfloat16, float32, float16" in str(err.value) and "--a VALUE --b VALUE" in str(err.value)
    result = compare_experiment(engine, "cmp", by="dtype", a="bfloat16", b="float32")
    assert result["n"].tolist() == [20, 20, 20]
    assert result.set_index("condition")["sign_flip"].to_dict() == {"helps": False, "hurts": True, "null": False}
    with pytest.raises(ConfigError, match="No scores with dtype 'int8'"):
        compare_experiment(engine, "cmp", by="dtype", a="bfloat16", b="int8")


def test_sides_without_shared_samples_compare_nothing():
    a = make_run(datasets=("alpha",), n_per_dataset=5, effects={"helps": 0.5}, seed=72).results_frame()
    b = a.assign(sample_id=a["sample_id"] + 100)
    assert compare_sides(a, b).empty


def test_the_figure_marks_flips_on_the_diagonal_plot():
    frame = pd.DataFrame({"dataset": ["x", "x", "x"], "condition": ["p", "q", "r"], "d_a": [0.5, -0.4, 0.2],
                          "d_b": [0.6, 0.3, None], "sign_flip": [False, True, False]})
    ax = compare_figure(frame, label_a="run 1", label_b="run 2").axes[0]
    same, flipped = ax.collections[0].get_offsets(), ax.collections[1].get_offsets()
    assert np.asarray(same).tolist() == [[0.5, 0.6]] and np.asarray(flipped).tolist() == [[-0.4, 0.3]]
    diagonal = ax.lines[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == list(ax.get_xlim())
    assert [t.get_text() for t in ax.texts] == ["q (x)"] and ax.get_xlabel() == "d (run 1)"
