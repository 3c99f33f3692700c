"""Reports on synthetic results frames with known effects (no database)."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis.report import build_report
from analysis.synthetic import drop_scores, make_run
from tracker.errors import SpecError

EFFECTS = {"helps": 0.8, "hurts": -0.5, "null": 0.0}


def hand_d(xs) -> float:
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m / math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """NLL by (dataset, sample) x condition, built independently of the analysis code."""
    return frame.pivot_table(index=["dataset", "sample_id"], columns="condition", values="nll")


def row(frame: pd.DataFrame, /, **where) -> pd.Series:
    sel = frame
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"{len(sel)} rows for {where}"
    return sel.iloc[0]


@pytest.fixture(scope="module")
def big_run():
    return make_run(datasets=("alpha", "beta"), n_per_dataset=300, effects=EFFECTS, seed=1)


@pytest.fixture(scope="module")
def big_report(big_run):
    return build_report(big_run.results_frame(), {}, experiment="syn", run_id=1, bootstrap=200, seed=0)


def test_known_effects_are_recovered(big_report):
    eff = big_report.effects
    main = eff[(eff["table"] == "main") & (eff["dataset"] == "pooled")].set_index("condition")
    assert main.loc["helps", "d"] == pytest.approx(0.79, abs=0.1)
    assert main.loc["hurts", "d"] == pytest.approx(-0.49, abs=0.1)
    assert abs(main.loc["null", "d"]) < 0.12
    assert main.loc["helps", "mark"] == "***" and main.loc["hurts", "mark"] == "***"
    assert main.loc["helps", "ci_low"] < main.loc["helps", "d"] < main.loc["helps", "ci_high"]
    assert main.loc["helps", "win_rate"] > 0.7 and main.loc["hurts", "win_rate"] < 0.35
    assert set(main["reference"]) == {"bare"}


def test_pooled_is_the_concatenation_of_per_sample_deltas(big_run, big_report):
    w = wide(big_run.results_frame())
    deltas = (w["bare"] - w["helps"]).to_numpy()
    eff = big_report.effects
    pooled = row(eff, table="main", dataset="pooled", condition="helps")
    assert pooled["n"] == 600
    assert pooled["mean_delta"] == pytest.approx(deltas.mean())
    assert pooled["d"] == pytest.approx(hand_d(deltas))
    alpha = row(eff, table="main", dataset="alpha", condition="helps")
    a_deltas = (w.loc["alpha", "bare"] - w.loc["alpha", "helps"]).to_numpy()
    assert alpha["n"] == 300 and alpha["d"] == pytest.approx(hand_d(a_deltas))
    assert alpha["win_rate"] == pytest.approx(np.mean(w.loc["alpha", "helps"] < w.loc["alpha", "bare"]))


def test_holm_is_applied_per_table_and_dataset(big_report):
    eff = big_report.effects
    fam = eff[(eff["table"] == "main") & (eff["dataset"] == "beta")]
    ps = fam["p_ttest"].tolist()
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    expected, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, ps[i] * (len(ps) - rank)))
        expected[i] = running
    assert fam["p_holm"].tolist() == pytest.approx(expected)


def test_incomplete_pairs_are_excluded_and_reported():
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=40, effects=EFFECTS, seed=2)
    jobs = run.jobs.merge(run.samples.rename(columns={"id": "sample_id"}), on="sample_id")
    alpha = jobs[jobs["dataset"] == "alpha"]
    helps_gone = alpha[alpha["condition"] == "helps"]["job_id"].iloc[:3].tolist()  # samples 1-3
    bare_gone = alpha[alpha["condition"] == "bare"]["job_id"].iloc[10:12].tolist()  # samples 11-12
    partial = drop_scores(drop_scores(run, helps_gone, "pending"), bare_gone, "failed")
    report = build_report(partial.results_frame(), {}, experiment="syn", bootstrap=0)
    eff = report.effects
    assert row(eff, table="main", dataset="alpha", condition="helps")["n"] == 35
    assert row(eff, table="main", dataset="alpha", condition="null")["n"] == 38
    assert row(eff, table="main", dataset="beta", condition="helps")["n"] == 40
    assert row(eff, table="main", dataset="pooled", condition="helps")["n"] == 75
    miss = report.missing
    helps = row(miss, dataset="alpha", condition="helps")
    assert (helps["jobs"], helps["scored"], helps["unscored_pending"]) == (40, 37, 3)
    assert (helps["paired_with_reference"], helps["lacking_reference"], helps["dropped"]) == (35, 2, 5)
    bare = row(miss, dataset="alpha", condition="bare")
    assert (bare["unscored_failed"], bare["dropped"]) == (2, 2)
    assert row(miss, dataset="beta", condition="helps")["dropped"] == 0
    assert any(n.startswith("Incomplete") and "helps (two_phase) 5/80" in n for n in report.notes)


def test_older_scorer_versions_never_mix():
    run = make_run(datasets=("alpha",), n_per_dataset=30, effects=EFFECTS, scorer_version="v10", seed=3)
    new = run.results_frame()
    old = new.copy()
    old["scorer_version"] = "v9"
    old["nll"] = old["nll"] + np.where(old["condition"] == "helps", 50.0, 0.0)  # a wildly different old scorer
    old["job_id"] += 10_000
    old["score_id"] += 10_000
    extra = old[old["sample_id"] <= 5].copy()
    extra["sample_id"] += 1000  # samples only the old version scored
    extra["job_id"] += 10_000
    extra["score_id"] += 10_000
    mixed = pd.concat([old, extra, new], ignore_index=True)
    clean = build_report(new, {}, experiment="syn", bootstrap=0)
    report = build_report(mixed, {}, experiment="syn", bootstrap=0)
    cols = ["dataset", "condition", "n", "mean_delta", "d", "p_ttest"]
    pd.testing.assert_frame_equal(report.effects[cols], clean.effects[cols])
    versions = row(report.tables["scorer_versions"], model="test-fake")
    assert versions["scorer_version"] == "v10" and versions["older_versions"] == "v9"
    assert versions["rows_dropped"] == len(old) + len(extra)
    assert report.info["scorer_versions"] == {"test-fake/two_phase": "v10"}
    assert any("'v10'" in n and "v9" in n for n in report.notes)


def test_hardness_quintiles_selection_based_and_independent():
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=40, effects=EFFECTS, seed=4)
    report = build_report(run.results_frame(), {}, experiment="syn", token_parity=run.parity_frame(), bootstrap=0)
    hard = report.tables["hardness"]
    assert set(hard["measure"]) == {"bare", "odd_even"}
    per_ds = hard[(hard["dataset"] == "alpha") & (hard["condition"] == "helps")]
    assert per_ds.groupby("measure")["n"].apply(list).to_dict() == {"bare": [8] * 5, "odd_even": [8] * 5}
    assert hard[(hard["dataset"] == "pooled") & (hard["measure"] == "bare")]["n"].unique().tolist() == [16]

    # one cell by hand: odd/even, alpha, hardest quintile, helps
    frame = run.results_frame()
    tok = run.tokens.merge(frame[["score_id", "dataset", "sample_id", "condition"]], on="score_id")
    tok = tok[tok["dataset"] == "alpha"]
    odd = tok[tok["position"] % 2 == 1].groupby(["condition", "sample_id"])["nll"].mean()
    even = tok[tok["position"] % 2 == 0].groupby(["condition", "sample_id"])["nll"].mean()
    hardness = odd.loc["bare"].reset_index().sort_values(["nll", "sample_id"])
    q5 = hardness["sample_id"].iloc[32:40].tolist()
    deltas = [even.loc[("bare", s)] - even.loc[("helps", s)] for s in q5]
    cell = row(hard, measure="odd_even", dataset="alpha", quintile=5, condition="helps")
    assert cell["d"] == pytest.approx(hand_d(deltas))
    assert cell["n"] == 8


def test_hardness_independent_uses_bare_nl_when_scored():
    run = make_run(datasets=("alpha",), n_per_dataset=25, effects={**EFFECTS, "bare_nl": 0.0}, seed=5)
    report = build_report(run.results_frame(), {}, experiment="syn", token_parity=run.parity_frame(), bootstrap=0)
    hard = report.tables["hardness"]
    assert set(hard["measure"]) == {"bare", "bare_nl"}
    assert "bare_nl" not in set(hard[hard["measure"] == "bare_nl"]["condition"])
    frame = run.results_frame()
    w = wide(frame).loc["alpha"]
    order = w["bare_nl"].reset_index().sort_values(["bare_nl", "sample_id"])["sample_id"].tolist()
    q1 = order[:5]
    cell = row(hard, measure="bare_nl", dataset="alpha", quintile=1, condition="hurts")
    assert cell["d"] == pytest.approx(hand_d((w.loc[q1, "bare"] - w.loc[q1, "hurts"]).tolist()))


def test_ranking_shares_sum_to_one(big_report):
    ranking = big_report.tables["ranking"]
    for _, group in ranking.groupby("dataset"):
        assert group["share_best"].sum() == pytest.approx(1.0)
        k = len(group)
        assert group["mean_rank"].sum() == pytest.approx(k * (k + 1) / 2)
    pooled = ranking[ranking["dataset"] == "pooled"].set_index("condition")
    assert pooled["mean_rank"].idxmin() == "helps" and pooled["mean_rank"].idxmax() == "hurts"


def test_semantic_gradient_rho():
    effects = {"g1": -0.6, "g2": 0.0, "g3": 0.6, "g4": 1.2}
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=200, effects=effects, seed=6)
    frame = run.results_frame()
    up = build_report(frame, {"gradient": ["g1", "g2", "g3", "g4"]}, experiment="syn", bootstrap=0)
    grad = up.tables["gradient"].set_index("dataset")
    assert grad.loc["alpha", "rho"] == pytest.approx(1.0) and bool(grad.loc["alpha", "monotonic"])
    assert grad.loc["mean", "rho"] == pytest.approx(1.0)
    down = build_report(frame, {"gradient": ["g4", "g3", "g2", "g1", "absent"]}, experiment="syn", bootstrap=0)
    grad = down.tables["gradient"].set_index("dataset")
    assert grad.loc["beta", "rho"] == pytest.approx(-1.0) and grad.loc["beta", "k"] == 4
    assert any("absent" in n for n in down.notes)
    values = down.tables["gradient_values"]
    w = wide(frame).loc["alpha"]
    assert row(values, dataset="alpha", condition="g3")["mean_delta"] == pytest.approx((w["bare"] - w["g3"]).mean())


def test_hard_selection_computed_then_stored():
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=40, effects={"random_tokens": 0.3, **EFFECTS}, seed=7)
    frame = run.results_frame()
    plan = {"hard_selection": {"stage": 2, "fraction": 0.4, "by": "bare"}, "semantic_reference": "random_tokens"}
    report = build_report(frame, plan, experiment="syn", bootstrap=0)
    sel = report.tables["hard_selection"].set_index("dataset")
    assert sel.loc["alpha", "n_selected"] == 16 and sel.loc["alpha", "source"] == "computed"
    eff = report.effects
    assert row(eff, table="hard", dataset="alpha", condition="helps")["n"] == 16
    w = wide(frame).loc["alpha"]
    top = w["bare"].reset_index().sort_values(["bare", "sample_id"], ascending=[False, True])["sample_id"].iloc[:16]
    hard_deltas = (w.loc[top, "bare"] - w.loc[top, "helps"]).tolist()
    assert row(eff, table="hard", dataset="alpha", condition="helps")["d"] == pytest.approx(hand_d(hard_deltas))
    # semantic delta = NLL(random_tokens) - NLL(C) on the hard samples
    sem = row(eff, table="semantic", dataset="alpha", condition="helps")
    assert sem["population"] == "hard" and sem["reference"] == "random_tokens"
    assert sem["mean_delta"] == pytest.approx((w.loc[top, "random_tokens"] - w.loc[top, "helps"]).mean())
    assert "random_tokens" not in set(eff[eff["table"] == "semantic"]["condition"])

    ids = run.samples[run.samples["dataset"] == "alpha"]["id"].iloc[:10]
    stored = pd.DataFrame(
        {"selection_id": 7, "stage": 2, "dataset": "alpha", "rule": [{}] * 10, "sample_id": ids.to_numpy(),
         "score_id": 0, "rank": range(1, 11), "value": 0.0}
    )
    report = build_report(frame, plan, experiment="syn", selections=stored, bootstrap=0)
    sel = report.tables["hard_selection"].set_index("dataset")
    assert sel.loc["alpha", "source"] == "stored selection 7" and sel.loc["alpha", "n_selected"] == 10
    assert not sel.loc["alpha", "agrees_with_recomputed"]
    assert sel.loc["beta", "source"] == "computed"
    assert row(report.effects, table="hard", dataset="alpha", condition="helps")["n"] == 10


def test_paired_comparison(big_run, big_report):
    report = build_report(big_run.results_frame(), {"contrasts": [["helps", "null"]]}, experiment="syn", bootstrap=0)
    cmp_row = row(report.effects, table="comparison", dataset="alpha")
    assert (cmp_row["condition"], cmp_row["reference"]) == ("helps", "null")
    w = wide(big_run.results_frame()).loc["alpha"]
    assert cmp_row["mean_delta"] == pytest.approx((w["null"] - w["helps"]).mean())
    assert cmp_row["d"] == pytest.approx(hand_d(w["null"] - w["helps"]))


def test_factorial_2x3_interaction_and_shares():
    effects = {"b_rq": 0.5, "b_q": 0.9, "o_nq": 0.2, "o_rq": 0.4, "o_q": 0.5}
    run = make_run(datasets=("alpha",), n_per_dataset=60, effects=effects, seed=8)
    plan = {"factorial": {"name": "enc_x_dec", "rows": ["bare", "oracle"], "cols": ["nq", "rq", "q"],
                          "cells": [["bare", "b_rq", "b_q"], ["o_nq", "o_rq", "o_q"]]}}
    report = build_report(run.results_frame(), plan, experiment="syn", bootstrap=100)
    fac = report.tables["factorial"]
    assert len(fac) == 9  # 3 steps (nq->rq, rq->q, nq->q) x (interaction + 2 simple)
    w = wide(run.results_frame()).loc["alpha"]
    by_hand = (w["bare"] - w["b_q"]) - (w["o_nq"] - w["o_q"])
    total = row(fac, contrast="interaction", step="nq->q")
    assert total["mean_delta"] == pytest.approx(by_hand.mean())
    assert total["d"] == pytest.approx(hand_d(by_hand))
    assert total["share_of_total"] == pytest.approx(1.0)
    for kind in ("interaction", "simple: bare", "simple: oracle"):
        shares = [row(fac, contrast=kind, step=s)["share_of_total"] for s in ("nq->rq", "rq->q")]
        assert sum(shares) == pytest.approx(1.0)
    simple = row(fac, contrast="simple: bare", step="nq->rq")
    assert simple["mean_delta"] == pytest.approx((w["bare"] - w["b_rq"]).mean())


def test_factorial_rows_conditions_cols_modes():
    run = make_run(datasets=("alpha",), n_per_dataset=30, effects={"oracle": 0.5}, modes=("encdec_nq", "encdec_q"), seed=9)
    frame = run.results_frame()
    plan = {"factorial": {"name": "f22", "rows": {"bare": "bare", "oracle": "oracle"}, "cols": {"nq": "encdec_nq", "q": "encdec_q"}}}
    report = build_report(frame, plan, experiment="syn", bootstrap=0)
    fac = report.tables["factorial"]
    assert len(fac) == 3 and set(fac["mode"]) == {"*"}
    w = frame.pivot_table(index="sample_id", columns=["condition", "mode"], values="nll")
    inter = (w[("bare", "encdec_nq")] - w[("bare", "encdec_q")]) - (w[("oracle", "encdec_nq")] - w[("oracle", "encdec_q")])
    assert row(fac, contrast="interaction")["mean_delta"] == pytest.approx(inter.mean())
    assert fac["share_of_total"].isna().all()  # 2 x 2: no first-to-last total to share


def test_answer_length_bins(big_run):
    report = build_report(big_run.results_frame(), {"group_by_answer_length": True}, experiment="syn", bootstrap=0)
    table = report.tables["answer_length"]
    words = big_run.samples.assign(words=big_run.samples["answer"].str.split().str.len())
    alpha = words[words["dataset"] == "alpha"]
    expected = {
        "1-2": int(alpha["words"].between(1, 2).sum()), "3-5": int(alpha["words"].between(3, 5).sum()),
        "6-20": int(alpha["words"].between(6, 20).sum()), "21+": int((alpha["words"] >= 21).sum()),
    }
    got = table[(table["dataset"] == "alpha") & (table["condition"] == "helps")].set_index("answer_words")["n"].to_dict()
    assert got == expected
    pooled = table[(table["dataset"] == "pooled") & (table["condition"] == "helps")].set_index("answer_words")["n"]
    assert pooled.sum() == 600


def test_structural_fraction_table():
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=100, effects={"random_tokens": 0.6, "oracle": 0.3}, seed=10)
    report = build_report(run.results_frame(), {"structural": {"random": "random_tokens", "oracle": "oracle"}}, experiment="syn", bootstrap=200)
    table = report.tables["structural"].set_index("dataset")
    w = wide(run.results_frame())
    d_r = hand_d(w["bare"] - w["random_tokens"])
    d_o = hand_d(w["bare"] - w["oracle"])
    assert table.loc["pooled", "fraction"] == pytest.approx(d_r / d_o)
    assert table.loc["pooled", "ci_low"] < table.loc["pooled", "fraction"] < table.loc["pooled", "ci_high"]
    assert table.loc["pooled", "fraction"] > 1  # random helps more than oracle here, as in the seed's exp03


def test_degenerate_inputs_give_notes_not_nan():
    run = make_run(datasets=("alpha", "tiny"), n_per_dataset=20, effects=EFFECTS, seed=11)
    frame = run.results_frame()
    tiny_ids = frame.loc[frame["dataset"] == "tiny", "sample_id"].unique()[2:]
    frame = frame[~frame["sample_id"].isin(tiny_ids)]  # 'tiny' keeps two samples
    shift = frame[frame["condition"] == "bare"].copy()
    shift["condition"] = "shift"
    shift["nll"] = shift["nll"] - 0.25  # every delta is exactly 0.25 up to rounding: sd = 0
    shift["job_id"] += 100_000
    shift["score_id"] += 100_000
    same = frame[frame["condition"] == "bare"].copy()
    same["condition"] = "same"  # identical to bare: all deltas zero
    same["job_id"] += 200_000
    same["score_id"] += 200_000
    report = build_report(pd.concat([frame, shift, same]), {"gradient": ["hurts", "null"]}, experiment="syn", bootstrap=100)
    eff = report.effects
    s = row(eff, table="main", dataset="alpha", condition="shift")
    assert s["d"] is None or pd.isna(s["d"])
    assert "sd=0" in s["note"] and s["mean_delta"] == pytest.approx(0.25) and s["win_rate"] == 1.0
    z = row(eff, table="main", dataset="alpha", condition="same")
    assert "all deltas zero" in z["note"] and z["win_rate"] == 0.0
    t = row(eff, table="main", dataset="tiny", condition="helps")
    assert t["n"] == 2 and "n<3" in t["note"] and t["mark"] == "n/a"
    payload = json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    tiny = [e for e in payload["effects"] if e["dataset"] == "tiny" and e["condition"] == "helps"][0]
    assert tiny["d"] is None and tiny["p_ttest"] is None and tiny["ci_low"] is None
    text = report.render_text()
    assert "sd=0" in text and "nan" not in text.lower()


def test_json_effects_have_the_contract_keys(big_report):
    payload = json.loads(big_report.to_json())
    required = {"dataset", "condition", "reference", "n", "mean_delta", "d", "p_ttest", "p_wilcoxon", "win_rate",
                "p_holm", "ci_low", "ci_high", "mark"}
    assert payload["effects"] and all(required <= set(e) for e in payload["effects"])
    assert {e["dataset"] for e in payload["effects"]} == {"alpha", "beta", "pooled"}
    assert payload["experiment"] == "syn" and payload["run_id"] == 1
    assert "hardness" in payload["tables"] and "missing" in payload


def test_frames_are_every_table_as_an_independent_dataframe(big_report):
    frames = big_report.frames()
    assert list(frames)[0] == "effects"
    assert set(frames) == set(big_report.tables) | {"effects"}
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, big_report.tables[name])
    frames["effects"].loc[:, "d"] = 0.0  # a notebook editing its copy leaves the report alone
    assert big_report.effects["d"].abs().max() > 0.5


def test_render_text_reads_like_the_seed(big_report):
    text = big_report.render_text()
    assert re.search(r"helps\s+d=\+0\.\d{3} \[\+0\.\d{3}, \+0\.\d{3}\]\s+\(\*\*\*\), win=\d+\.\d%", text)
    assert "== Effects vs bare (all complete pairs) ==" in text
    assert "-- pooled --" in text


def test_plan_errors_name_the_field():
    frame = make_run(datasets=("alpha",), n_per_dataset=5, seed=12).results_frame()
    with pytest.raises(SpecError, match="contrasts"):
        build_report(frame, {"contrasts": [["helps"]]}, experiment="syn")
    with pytest.raises(SpecError, match="contrasts"):
        build_report(frame, {"contrasts": "helps"}, experiment="syn")
    with pytest.raises(SpecError, match="factorial"):
        build_report(frame, {"factorial": {"rows": ["a", "b"]}}, experiment="syn")
    with pytest.raises(SpecError, match="hardness_independent"):
        build_report(frame, {"hardness_independent": "magic"}, experiment="syn")


def test_nothing_scored_yet():
    run = make_run(datasets=("alpha",), n_per_dataset=5, seed=13)
    pending = drop_scores(run, run.jobs["job_id"].tolist())
    report = build_report(pending.results_frame(), {}, experiment="syn")
    assert report.effects.empty
    assert "No scores yet: nothing to analyse." in report.notes
    assert report.missing["unscored_pending"].sum() == len(run.jobs)
    assert json.loads(report.to_json())["effects"] == []
    assert "syn run None" in report.render_text()


def test_mode_without_reference_borrows_it():
    run = make_run(datasets=("alpha",), n_per_dataset=20, effects={"oracle": 0.5}, modes=("two_phase", "prefix_lm_bidir"), seed=14)
    frame = run.results_frame()
    frame = frame[~((frame["mode"] == "prefix_lm_bidir") & (frame["condition"] == "bare"))]
    report = build_report(frame, {}, experiment="syn", bootstrap=0)
    bidir = row(report.effects, table="main", mode="prefix_lm_bidir", condition="oracle")
    assert bidir["reference"] == "bare@two_phase"
    w = frame.pivot_table(index="sample_id", columns=["mode", "condition"], values="nll")
    assert bidir["mean_delta"] == pytest.approx((w[("two_phase", "bare")] - w[("prefix_lm_bidir", "oracle")]).mean())
    assert row(report.effects, table="main", mode="two_phase", condition="oracle")["reference"] == "bare"


def test_spec_file_vocabulary_is_understood():
    """The shipped specs' analysis sections (baseline, selection, semantic_delta, llm_vs_generic...)."""
    from tracker.specs.plan import normalize_plan

    plan = normalize_plan({
        "baseline": "bare",
        "selection": {"stage": 2},
        "semantic_delta": {"reference": "random_tokens"},
        "contrasts": ["random_tokens", "llm_extract", "extractor_matched"],
        "gradient": ["random_tokens", "oracle"],
        "llm_vs_generic": {"llm": ["llm_extract", "llm_question"], "generic": "extractor_matched"},
        "hardness_quintiles": 4,
        "ranking": False,
        "cross_dataset_consistency": True,
        "pooled": True,
        "mystery": 1,
    })
    assert plan.reference == "bare"
    assert plan.hard_selection is not None and (plan.hard_selection.stage, plan.hard_selection.fraction) == (2, 0.4)
    assert plan.hard_selection.by == "bare"
    assert plan.semantic_reference == "random_tokens"
    assert plan.conditions == ("random_tokens", "llm_extract", "extractor_matched")
    assert plan.contrasts == (("llm_extract", "extractor_matched"), ("llm_question", "extractor_matched"))
    assert plan.hardness_bins == 4 and not plan.ranking
    assert plan.unknown_keys == ("mystery",)

    run = make_run(datasets=("alpha",), n_per_dataset=20, effects={"random_tokens": 0.2, "llm_extract": 0.1,
                                                                  "extractor_matched": 0.5}, seed=15)
    report = build_report(run.results_frame(), plan, experiment="syn", bootstrap=0)
    assert "ranking" not in report.tables
    assert set(report.tables["hardness"]["quintile"]) == {1, 2, 3, 4}
    cmp_rows = report.effects[report.effects["table"] == "comparison"]
    assert cmp_rows[["condition", "reference"]].values.tolist() == [["llm_extract", "extractor_matched"]]
    assert "Analysis plan keys not used: mystery." in report.notes
    main = report.effects[(report.effects["table"] == "main")]
    assert main["condition"].tolist() == ["random_tokens", "llm_extract", "extractor_matched"]


def test_ranking_spans_modes_like_the_seeds_exp01():
    """oracle_full is scored in the full-cache mode only; it is ranked with the two-phase conditions."""
    two = make_run(datasets=("alpha",), n_per_dataset=30, effects={"oracle": -0.2, "surr": 0.3}, seed=16)
    full = make_run(datasets=("alpha",), n_per_dataset=30, effects={"oracle_full": -0.4}, modes=("full",), seed=17)
    f_full = full.results_frame()
    f_full = f_full[f_full["condition"] != "bare"].assign(job_id=lambda f: f["job_id"] + 10_000,
                                                          score_id=lambda f: f["score_id"] + 10_000)
    frame = pd.concat([two.results_frame(), f_full])
    report = build_report(frame, {}, experiment="syn", bootstrap=0)
    ranking = report.tables["ranking"]
    assert sorted(ranking["condition"]) == ["bare", "oracle", "oracle_full", "surr"]
    assert set(ranking["mode"]) == {"*"}
    w = frame.pivot_table(index="sample_id", columns="condition", values="nll")[["bare", "oracle", "oracle_full", "surr"]]
    best = w.idxmin(axis=1).value_counts(normalize=True)
    got = ranking.set_index("condition")["share_best"]
    for cond in w.columns:
        assert got[cond] == pytest.approx(best.get(cond, 0.0))
    assert got.sum() == pytest.approx(1.0)
    full_row = row(report.effects, table="main", mode="full", condition="oracle_full")
    assert full_row["reference"] == "bare@two_phase"


@pytest.mark.parametrize("n", [3, 5])
def test_small_n_report_withholds_cis_keeps_d_and_says_so(n):
    run = make_run(datasets=("alpha",), n_per_dataset=n, effects=EFFECTS, seed=40 + n)
    report = build_report(run.results_frame(), {}, experiment="syn", bootstrap=200)
    main = report.effects[report.effects["table"] == "main"]
    w = wide(run.results_frame())
    assert len(main) == 3
    for r in main.itertuples():
        assert r.ci_low is None and r.ci_high is None
        assert "n<10: CI withheld" in r.note
        assert r.d == pytest.approx(hand_d(w["bare"] - w[r.condition]))
        assert r.p_ttest is not None
    payload = json.loads(report.to_json())
    assert all(e["ci_low"] is None and e["ci_high"] is None for e in payload["effects"])
    small = [note for note in report.notes if note.startswith("Small samples")]
    assert len(small) == 1 and f"main/alpha/helps (n={n})" in small[0]
    text = report.render_text()
    assert "[CI withheld]" in text and "do not read these as findings" in text


def test_thirty_well_behaved_samples_carry_no_trust_notes():
    run = make_run(datasets=("alpha",), n_per_dataset=30, effects=EFFECTS, seed=50)
    report = build_report(run.results_frame(), {}, experiment="syn", token_parity=run.parity_frame(), bootstrap=500)
    main = report.effects[report.effects["table"] == "main"]
    assert main["note"].tolist() == ["", "", ""]
    assert all(lo < d < hi for lo, d, hi in zip(main["ci_low"], main["d"], main["ci_high"]))
    assert report.notes == ["Complete: every job is scored and paired with its reference."]
    assert "[CI withheld]" not in report.render_text() and "Small samples" not in report.render_text()
